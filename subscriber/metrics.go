package subscriber

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/routerd/routerd/tagstore"
)

// metrics of a subscriber, each registered where it is made (with a nil
// Registerer, made and not registered). Labels are bounded: tag names from
// the matrix, statuses and kinds from fixed lists; never a tenant or a key.
type metrics struct {
	received       prometheus.Counter
	applied        *prometheus.CounterVec // tag
	duplicates     prometheus.Counter
	gaps           prometheus.Counter
	recoveries     *prometheus.CounterVec // kind: replay, whole_tag, repair
	invalid        prometheus.Counter
	unconfirmed    prometheus.Counter
	cacheMoved     prometheus.Counter
	cacheChanged   prometheus.Counter
	positionErrors prometheus.Counter
	checks         prometheus.Counter
	applyErrors    prometheus.Counter
	lag            prometheus.Histogram
	coalesced      prometheus.Counter
	delayed        prometheus.Counter
	queuedTags     prometheus.Gauge
	wholeTag       *prometheus.CounterVec   // tag, reason
	keys           *prometheus.CounterVec   // tag, status
	duration       *prometheus.HistogramVec // tag
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		received: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_messages_received_total", Help: "Channel messages received over pub/sub."}),
		applied: f.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_messages_applied_total", Help: "Invalidations applied, live or recovered, by tag."}, []string{"tag"}),
		duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_duplicates_total", Help: "Messages at or behind the position, ignored."}),
		gaps: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_gaps_total", Help: "Gaps found: a version skipped, a new epoch, a position behind or ahead of the channel, or a cache that went back."}),
		recoveries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_recoveries_total", Help: "Recoveries by kind: replay from history, whole-tag invalidation, or repair (whole tag and the position reset to the channel's)."}, []string{"kind"}),
		invalid: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_invalid_messages_total", Help: "Messages that failed validation and were ignored (a position check follows)."}),
		unconfirmed: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_unconfirmed_messages_total", Help: "Messages the channel's meta does not confirm (forged, or lost with the bus): ignored, the channel brought to its meta."}),
		cacheMoved: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_cache_position_moved_total", Help: "Checks that found the cache holding another position than applied (restored from a snapshot, failed over, or another instance)."}),
		cacheChanged: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_cache_changed_total", Help: "Times the cache Redis was found to be another server or restarted (its run_id changed: a failover, a restart, a flush): a position check follows at once."}),
		positionErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_unreadable_state_total", Help: "Stored positions, channel metas or history entries that could not be read or parsed."}),
		checks: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_position_checks_total", Help: "Position checks against the channels' versions."}),
		applyErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_apply_errors_total", Help: "Invalidations that failed; they are retried by the next position check."}),
		lag: f.NewHistogram(prometheus.HistogramOpts{
			Name: "subscriber_delivery_lag_seconds", Help: "From the event's timestamp to the invalidation being applied.",
			Buckets: lagBuckets}),
		coalesced: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_messages_coalesced_total", Help: "Messages merged into a channel's queued work by the local apply limit."}),
		delayed: f.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_applies_delayed_total", Help: "Invalidations held back by the local apply limit (each opens queued work for a channel)."}),
		queuedTags: f.NewGauge(prometheus.GaugeOpts{
			Name: "subscriber_queued_channels", Help: "Channels with merged work waiting for the local apply limit."}),
		wholeTag: f.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_whole_tag_invalidations_total", Help: "Whole-tag invalidations applied, by tag and reason: no_keys (the message named no keys), over_budget (the local apply limit could not carry the merged keys key-level) or recovery (a gap the history could not close, or a repair)."}, []string{"tag", "reason"}),
		keys: f.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_invalidation_keys_total", Help: "Cache keys deleted by local tag invalidation, by tag and script outcome."}, []string{"tag", "status"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cache_invalidation_duration_seconds", Help: "Time of one local tag invalidation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"tag"}),
	}
}

// lagBuckets are 0.5 ms doubling to 512 ms, then 1 s doubling to 32 s: the
// delivery SLO (deploy/prometheus/alerts.yml) counts what was applied within
// 1 s, which needs a bucket bound at exactly 1.
var lagBuckets = append(prometheus.ExponentialBuckets(0.0005, 2, 11), prometheus.ExponentialBuckets(1, 2, 6)...)

// Statuses of cache_invalidation_keys_total that a subscriber reports.
var keyStatuses = []tagstore.Status{tagstore.Success, tagstore.EmptyTagSet, tagstore.Duplicate, tagstore.Gap, tagstore.Failed}

// known makes the series of every label value the service's tags and the
// fixed lists name, at zero, so that each exists from the first scrape: a
// panel or an alert on rate() or increase() reads 0, not nothing.
func (m *metrics) known(tags []string) {
	for _, kind := range []string{"replay", "whole_tag", "repair"} {
		m.recoveries.WithLabelValues(kind)
	}
	for _, tag := range tags {
		m.applied.WithLabelValues(tag)
		m.duration.WithLabelValues(tag)
		for _, st := range keyStatuses {
			m.keys.WithLabelValues(tag, string(st))
		}
		for _, reason := range []string{wholeNoKeys, wholeOverBudget, wholeRecovery} {
			m.wholeTag.WithLabelValues(tag, reason)
		}
	}
}

// observe is the tagstore Observer that feeds the cache_invalidation_* metrics.
func (m *metrics) observe(tag string, status tagstore.Status, keys int64, took time.Duration) {
	m.keys.WithLabelValues(tag, string(status)).Add(float64(keys))
	m.duration.WithLabelValues(tag).Observe(took.Seconds())
}
