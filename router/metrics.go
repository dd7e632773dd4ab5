package router

import (
	"github.com/prometheus/client_golang/prometheus"
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

	coalesced       *prometheus.CounterVec // tag
	delayed         *prometheus.CounterVec // tag
	coalescedWhole  *prometheus.CounterVec // tag
	pendingChannels prometheus.Gauge
	publishLag      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_events_read_total", Help: "Ingress entries read, claimed ones included."}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_routed_total", Help: "Events routed and acknowledged, by domain."}, []string{"domain"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_dead_lettered_total", Help: "Events sent to the dead-letter stream, by reason."}, []string{"reason"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_events_suppressed_total", Help: "Events older (source_version) than one already routed for the same entity."}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_messages_published_total", Help: "Channel messages published, by tag."}, []string{"tag"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_publish_duplicates_total", Help: "Channel publishes skipped because the event id was already published there."}),
		claimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_entries_claimed_total", Help: "Pending ingress entries claimed from idle consumers."}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_entries_retried_total", Help: "Failed tries of ingress entries, each followed by another try by the same router (or by the dead letters)."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_publish_errors_total", Help: "Batches whose publishing failed; their entries stay pending and are retried."}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "routerd_batch_duration_seconds", Help: "Time to route, publish and acknowledge one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_ingress_pending_entries", Help: "Ingress entries delivered but not yet acknowledged."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_ingress_lag_entries", Help: "Ingress entries not yet delivered to the consumer group."}),
		groupsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "routerd_consumer_groups_created_total", Help: "Consumer groups created, at start or after they vanished."}),
		coalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_events_coalesced_total", Help: "Events merged into a channel's pending message because the channel was over its budget, by tag."}, []string{"tag"}),
		delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_messages_delayed_total", Help: "Channel messages held back by a rate limit (each opens a pending message), by tag."}, []string{"tag"}),
		coalescedWhole: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "routerd_coalesced_whole_tag_total", Help: "Pending messages that became whole-tag invalidations because their keys exceeded max_keys, by tag."}, []string{"tag"}),
		publishLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "routerd_publish_lag_seconds", Help: "From an event's timestamp to its channel message being published (coalescing delay included).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		pendingChannels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "routerd_pending_channels", Help: "Channels with a coalesced message waiting for its budget."}),
	}
	if reg != nil {
		reg.MustRegister(m.read, m.routed, m.deadLettered, m.suppressed, m.published, m.duplicates,
			m.claimed, m.retried, m.publishErrors, m.batchSeconds, m.pending, m.lag, m.groupsCreated,
			m.coalesced, m.delayed, m.coalescedWhole, m.pendingChannels, m.publishLag)
	}
	return m
}
