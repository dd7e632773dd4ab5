package subscriber

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/tagstore"
)

// metrics of a subscriber. Labels are bounded: tag names from the matrix,
// statuses and kinds from fixed lists; never a tenant or a key.
type metrics struct {
	received    prometheus.Counter
	applied     *prometheus.CounterVec // tag
	duplicates  prometheus.Counter
	gaps        prometheus.Counter
	recoveries  *prometheus.CounterVec // kind: replay, whole_tag
	invalid     prometheus.Counter
	checks      prometheus.Counter
	applyErrors prometheus.Counter
	lag         prometheus.Histogram
	coalesced   prometheus.Counter
	delayed     prometheus.Counter
	queuedTags  prometheus.Gauge
	keys        *prometheus.CounterVec   // tag, status
	duration    *prometheus.HistogramVec // tag
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_messages_received_total", Help: "Channel messages received over pub/sub."}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_messages_applied_total", Help: "Invalidations applied, live or recovered, by tag."}, []string{"tag"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_duplicates_total", Help: "Messages at or behind the position, ignored."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_gaps_total", Help: "Gaps found: a version skipped, a new epoch, or a position behind the channel."}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_recoveries_total", Help: "Recoveries by kind: replay from history, or whole-tag invalidation."}, []string{"kind"}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_invalid_messages_total", Help: "Messages that failed validation and were ignored (a position check follows)."}),
		checks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_position_checks_total", Help: "Position checks against the channels' versions."}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_apply_errors_total", Help: "Invalidations that failed; they are retried by the next position check."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "subscriber_delivery_lag_seconds", Help: "From the event's timestamp to the invalidation being applied.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_messages_coalesced_total", Help: "Messages merged into a channel's queued work by the local apply limit."}),
		delayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "subscriber_applies_delayed_total", Help: "Invalidations held back by the local apply limit (each opens queued work for a channel)."}),
		queuedTags: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "subscriber_queued_channels", Help: "Channels with merged work waiting for the local apply limit."}),
		keys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cache_invalidation_keys_total", Help: "Cache keys deleted by local tag invalidation, by tag and script outcome."}, []string{"tag", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cache_invalidation_duration_seconds", Help: "Time of one local tag invalidation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"tag"}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.applied, m.duplicates, m.gaps, m.recoveries, m.invalid, m.checks,
			m.applyErrors, m.lag, m.coalesced, m.delayed, m.queuedTags, m.keys, m.duration)
	}
	return m
}

// observe is the tagstore Observer that feeds the cache_invalidation_* metrics.
func (m *metrics) observe(tag string, status tagstore.Status, keys int64, took time.Duration) {
	m.keys.WithLabelValues(tag, string(status)).Add(float64(keys))
	m.duration.WithLabelValues(tag).Observe(took.Seconds())
}
