package router

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/routerd/routerd/matrix"
)

// metrics of the router. Labels are bounded: tag and domain names come from
// the matrix, reasons from a fixed list; never a tenant or a key.
type metrics struct {
	read          prometheus.Counter
	routed        *prometheus.CounterVec // domain
	deadLettered  *prometheus.CounterVec // reason
	suppressed    prometheus.Counter
	published     *prometheus.CounterVec // tag
	duplicates    prometheus.Counter
	claimed       prometheus.Counter
	retried       prometheus.Counter
	publishErrors prometheus.Counter
	batchSeconds  prometheus.Histogram
	pending       prometheus.Gauge
	lag           prometheus.Gauge
	groupsCreated prometheus.Counter
	lost          prometheus.Counter
	redriven      prometheus.Counter
	handedOver    prometheus.Counter
	// handedOverEvents and digests: the hand-over between matrices (handover.go).
	handedOverEvents prometheus.Counter
	digests          prometheus.Gauge

	coalesced       *prometheus.CounterVec // tag
	delayed         *prometheus.CounterVec // tag
	wholeTag        *prometheus.CounterVec // tag, reason
	pendingChannels prometheus.Gauge
	publishLag      prometheus.Histogram

	// replaced counts the router's own keys found of another type and
	// replaced, by key (KeyPartitionCount, KeyTenantRegistry).
	replaced *prometheus.CounterVec
}

// The keys of routerd_internal_keys_replaced_total.
const (
	KeyPartitionCount = "partition_count"
	KeyTenantRegistry = "tenant_registry"
	KeyLiveRouters    = "live_routers"
)

// newMetrics makes the metrics, each registered with reg as it is made
// (none is registered when reg is nil).
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		read: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_events_read_total", Help: "Ingress entries read, claimed ones included."}),
		routed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_routed_total", Help: "Events routed and acknowledged, by domain."}, []string{"domain"}),
		deadLettered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_dead_lettered_total", Help: "Events sent to the dead letters (malformed and too_large to their own stream), by reason."}, []string{"reason"}),
		suppressed: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_events_suppressed_total", Help: "Events not routed because newer ones (source_version) of the same entity already invalidated everything they name."}),
		published: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_messages_published_total", Help: "Channel messages published, by tag."}, []string{"tag"}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_publish_duplicates_total", Help: "Channel publishes skipped, or events left out of a merged message, because the event id was already published there."}),
		claimed: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_entries_claimed_total", Help: "Pending ingress entries claimed from idle consumers."}),
		retried: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_entries_retried_total", Help: "Failed tries of ingress entries, each followed by another try by the same router (or by the dead letters)."}),
		publishErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_publish_errors_total", Help: "Batches whose publishing failed; their entries stay pending and are retried."}),
		batchSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name: "routerd_batch_duration_seconds", Help: "Time to route, publish and acknowledge one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_ingress_pending_entries", Help: "Ingress entries delivered but not yet acknowledged."}),
		lag: f.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_ingress_lag_entries", Help: "Ingress entries not yet delivered to the consumer group."}),
		lost: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_ingress_entries_lost_total", Help: "Ingress entries deleted from their stream before they were routed (a client's XTRIM or XDEL, a publisher's MAXLEN): before any router read them, or while a router held them (found when claimed). Never routed."}),
		groupsCreated: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_consumer_groups_created_total", Help: "Consumer groups created, at start or after they vanished."}),
		redriven: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_dead_letters_redriven_total", Help: "unknown_domain dead letters of a domain this router knows (refused by a router on an older matrix, or before a reload) sent back to the routers."}),
		handedOver: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_redriven_handed_over_total", Help: "Re-driven entries this router does not route (a domain it does not know, or handed over for another matrix) given to the live router named in them."}),
		handedOverEvents: f.NewCounter(prometheus.CounterOpts{
			Name: "routerd_handed_over_events_total", Help: "Events read by this router and handed over (through the re-drive stream) to a live router on another matrix, once per such router; non-zero only while routers on different matrices run."}),
		digests: f.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_matrix_digests", Help: "Distinct matrices (by routing digest) among the live routers, this one's included; above 1 during a rolling deploy, when every event is routed under each."}),
		coalesced: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_coalesced_total", Help: "Events merged into a channel's pending message because the channel was over its budget, by tag."}, []string{"tag"}),
		delayed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_messages_delayed_total", Help: "Channel messages held back by a rate limit (each opens a pending message), by tag."}, []string{"tag"}),
		wholeTag: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_whole_tag_messages_total", Help: "Whole-tag channel messages published, by tag and reason: no_keys (an event named no keys) or over_budget (the channel's budget could not carry its pending keys key-level)."}, []string{"tag", "reason"}),
		publishLag: f.NewHistogram(prometheus.HistogramOpts{
			Name: "routerd_publish_lag_seconds", Help: "From an event's timestamp to its channel message being published (coalescing delay included).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		pendingChannels: f.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_pending_channels", Help: "Channels with a coalesced message waiting for its budget."}),
		replaced: f.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_internal_keys_replaced_total", Help: "Keys of the router's own (the partition count, the tenant registry, the live routers) found of another type and replaced, by which key."}, []string{"internal_key"}),
	}
}

// DeadLetterReasons are every reason an event is dead-lettered for.
var DeadLetterReasons = []string{ReasonMalformed, ReasonUnknownDomain, ReasonTooLarge, ReasonNotGranted, ReasonPoison}

// known makes the series of every label value the matrix and the fixed
// lists name, at zero, so that each exists from the first scrape: a panel or
// an alert on rate() or increase() reads 0, not nothing. A reload adds the
// new tags' and domains'; those of removed ones stay until a restart.
func (m *metrics) known(mx *matrix.Matrix) {
	for _, reason := range DeadLetterReasons {
		m.deadLettered.WithLabelValues(reason)
	}
	for _, key := range []string{KeyPartitionCount, KeyTenantRegistry, KeyLiveRouters} {
		m.replaced.WithLabelValues(key)
	}
	for d := range mx.Domains {
		m.routed.WithLabelValues(d)
	}
	for t := range mx.Tags {
		for _, v := range []*prometheus.CounterVec{m.published, m.coalesced, m.delayed} {
			v.WithLabelValues(t)
		}
		for _, reason := range []string{WholeNoKeys, WholeOverBudget} {
			m.wholeTag.WithLabelValues(t, reason)
		}
	}
}
