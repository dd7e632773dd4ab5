package soak

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// entryKey is one cached key in one service's cache.
type entryKey struct{ svc, tenant, key string }

func (e entryKey) String() string { return e.svc + " " + e.tenant + "/" + e.key }

// A write caches the value "w<id>". start and end are ticks of the
// recorder's clock taken before the call and after it returned.
type write struct {
	id         uint64
	e          entryKey
	start, end uint64
	at         time.Time
	failed     bool // the call returned an error: whether it was applied is unknown
}

func (w *write) value() string { return "w" + strconv.FormatUint(w.id, 10) }

// An inval is one published event. start is taken before its first publish
// attempt, ack after the publish that Redis acknowledged (0: never).
type inval struct {
	id             string // event id; "" for a raw event the router names
	entries        []string
	tenant, domain string
	keys           []string // nil: the whole tags of the domain
	how            string
	start, ack     uint64
	startAt, ackAt time.Time
}

func (in *inval) String() string {
	what := "keys " + strings.Join(in.keys, ",")
	if in.keys == nil {
		what = "whole tags"
	}
	id := in.id
	if id == "" {
		id = strings.Join(in.entries, "+")
	}
	return fmt.Sprintf("%s %s (%s %s/%s %s)", in.how, id, in.tenant, in.domain, what, ackState(in))
}

func ackState(in *inval) string {
	if in.ack == 0 {
		return "not acknowledged"
	}
	return "acknowledged"
}

type deletion struct {
	tick uint64
	at   time.Time
}

type history struct {
	writes []*write
	dels   []deletion
}

// A window is the time a fault lasted, from its injection to its undoing.
type window struct {
	kind, detail string
	start, end   time.Time
}

// recorder is the checker's log: every write, invalidation, observed
// deletion and fault. Its clock orders them: a tick taken after a call
// returned is below every tick taken after that.
type recorder struct {
	clock atomic.Uint64
	t0    time.Time

	mu          sync.Mutex
	writes      map[uint64]*write
	hist        map[entryKey]*history
	byTag       map[string][]entryKey // "tenant tag" → entries registered under the tag
	invals      []*inval
	lostIDs     map[string]bool // event ids flushed from the ingress before a router read them
	lostEntries map[string]bool // "stream entry-id" likewise
	windows     []window
}

func newRecorder() *recorder {
	return &recorder{t0: time.Now(), writes: map[uint64]*write{}, hist: map[entryKey]*history{}, byTag: map[string][]entryKey{},
		lostIDs: map[string]bool{}, lostEntries: map[string]bool{}}
}

func (r *recorder) tick() uint64 { return r.clock.Add(1) }

func (r *recorder) histOf(e entryKey) *history {
	h := r.hist[e]
	if h == nil {
		h = &history{}
		r.hist[e] = h
		for _, tag := range registeredTags(e.svc, e.tenant, e.key) {
			r.byTag[e.tenant+" "+tag] = append(r.byTag[e.tenant+" "+tag], e)
		}
	}
	return h
}

func (r *recorder) beginWrite(e entryKey) *write {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := &write{id: r.tick(), e: e, at: time.Now()}
	w.start = w.id
	r.writes[w.id] = w
	h := r.histOf(e)
	h.writes = append(h.writes, w)
	return w
}

func (r *recorder) endWrite(w *write, err error) {
	end := r.tick()
	r.mu.Lock()
	defer r.mu.Unlock()
	w.end, w.failed = end, err != nil
}

func (r *recorder) beginInval(in *inval) *inval {
	r.mu.Lock()
	defer r.mu.Unlock()
	in.start, in.startAt = r.tick(), time.Now()
	r.invals = append(r.invals, in)
	return in
}

func (r *recorder) acked(in *inval, entries ...string) {
	ack := r.tick()
	r.mu.Lock()
	defer r.mu.Unlock()
	if in.ack == 0 {
		in.ack, in.ackAt = ack, time.Now()
	}
	in.entries = append(in.entries, entries...)
}

func (r *recorder) deleted(e entryKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.hist[e]; h != nil {
		h.dels = append(h.dels, deletion{r.tick(), time.Now()}) // ticked under the lock: in order
	}
}

func (r *recorder) lost(ids, entries []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		r.lostIDs[id] = true
	}
	for _, e := range entries {
		r.lostEntries[e] = true
	}
}

func (r *recorder) addWindow(w window) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.windows = append(r.windows, w)
}

// isLost: the event was flushed from the ingress before any router read it
// (every copy of it, for a raw event appended twice). Redis acknowledged it,
// but the bus lost it: nothing can deliver it, so it is not held against
// the product.
func (r *recorder) isLost(in *inval) bool {
	if in.id != "" && in.how == "publish" {
		return r.lostIDs[in.id]
	}
	if len(in.entries) == 0 {
		return false
	}
	for _, e := range in.entries {
		if !r.lostEntries[e] {
			return false
		}
	}
	return true
}

// affected lists the cached entries an invalidation must reach: for keys,
// those keys in every service that owns a tag of the domain for the
// tenant; for whole tags, every entry registered under one of them.
func (r *recorder) affected(in *inval) []entryKey {
	var out []entryKey
	if in.keys != nil {
		for _, svc := range serviceNames {
			for _, k := range in.keys {
				e := entryKey{svc, in.tenant, k}
				if _, ok := r.hist[e]; ok {
					out = append(out, e)
				}
			}
		}
		return out
	}
	seen := map[entryKey]bool{}
	for _, tag := range domainTags[in.domain] {
		for _, e := range r.byTag[in.tenant+" "+tag] {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// checker holds, once the workload has stopped, for each entry the
// acknowledged invalidations that reach it, latest start first.
type checker struct {
	r      *recorder
	reach  map[entryKey][]*inval
	counts struct{ acked, lost, unacked int }
}

func (r *recorder) checker() *checker {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := &checker{r: r, reach: map[entryKey][]*inval{}}
	for _, in := range r.invals {
		switch {
		case in.ack == 0:
			c.counts.unacked++
			continue
		case r.isLost(in):
			c.counts.lost++
			continue
		}
		c.counts.acked++
		for _, e := range r.affected(in) {
			c.reach[e] = append(c.reach[e], in)
		}
	}
	for _, ins := range c.reach {
		sort.Slice(ins, func(i, j int) bool { return ins[i].start > ins[j].start })
	}
	return c
}

// A staleEntry is a cached value written before an invalidation that
// reaches it was published.
type staleEntry struct {
	e     entryKey
	w     *write
	after []*inval // acknowledged invalidations published after the write completed
}

// stale judges the values read from the caches (entry → value, absent
// when not cached). It returns the stale entries and values no write made.
func (c *checker) stale(values map[entryKey]string) (stale []staleEntry, unknown []string, uncertain int) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	for e, v := range values {
		id, err := strconv.ParseUint(strings.TrimPrefix(v, "w"), 10, 64)
		w := c.r.writes[id]
		if err != nil || !strings.HasPrefix(v, "w") || w == nil || w.e != e {
			unknown = append(unknown, fmt.Sprintf("%s = %q", e, v))
			continue
		}
		var after []*inval
		for _, in := range c.reach[e] {
			if in.start <= w.end {
				break
			}
			after = append(after, in)
		}
		if len(after) == 0 {
			continue
		}
		if w.failed { // the write's completion is unknown: it may have landed after the invalidation
			uncertain++
			continue
		}
		stale = append(stale, staleEntry{e, w, after})
	}
	sort.Slice(stale, func(i, j int) bool { return stale[i].e.String() < stale[j].e.String() })
	return stale, unknown, uncertain
}

// describe tells a stale entry's story for the failure message.
func (r *recorder) describe(s staleEntry) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := func(t time.Time) string { return fmt.Sprintf("%.3fs", t.Sub(r.t0).Seconds()) }
	var b strings.Builder
	fmt.Fprintf(&b, "%s holds %s, written at %s", s.e, s.w.value(), at(s.w.at))
	for i := len(s.after) - 1; i >= 0; i-- { // earliest first
		if i == len(s.after)-4 {
			fmt.Fprintf(&b, "\n      … and %d more invalidations", i+1)
			break
		}
		in := s.after[i]
		fmt.Fprintf(&b, "\n      then %s published at %s, acknowledged at %s", in, at(in.startAt), at(in.ackAt))
	}
	h := r.hist[s.e]
	for _, w := range h.writes {
		if w.id > s.w.id {
			fmt.Fprintf(&b, "\n      later write %s at %s, no longer in the cache", w.value(), at(w.at))
		}
	}
	for _, d := range h.dels {
		if d.tick > s.w.start {
			fmt.Fprintf(&b, "\n      deletion seen at %s", at(d.at))
		}
	}
	return b.String()
}

// delays measures, for each acknowledged invalidation that had something
// to delete, the time from its acknowledgement to the last deletion of a
// cached entry it reached, as seen by keyspace notifications. An
// invalidation whose span meets a fault window (stretched by grace, the
// time to recover) counts as inside it.
type delayReport struct {
	measured, unobserved, inside int
	outside                      []time.Duration
	worstOut, worstIn            time.Duration
	worstOutWhat, worstInWhat    string
}

func (r *recorder) delays(grace time.Duration) delayReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	var rep delayReport
	for _, in := range r.invals {
		if in.ack == 0 || r.isLost(in) {
			continue
		}
		var applied time.Time
		needed, missing := 0, false
		for _, e := range r.affected(in) {
			// An entry's writes come one after another (one writer per
			// key), so starts and ends both ascend; deletions are ticked in
			// order.
			h := r.hist[e]
			i := sort.Search(len(h.writes), func(i int) bool { return h.writes[i].start > in.start })
			if i == 0 {
				continue
			}
			last := h.writes[i-1]
			if last.end > in.start || last.failed {
				continue // a write raced with the publish, or its outcome is unknown
			}
			j := sort.Search(len(h.dels), func(j int) bool { return h.dels[j].tick > last.end })
			if j < len(h.dels) && h.dels[j].tick < in.start {
				continue // already deleted when the event was published
			}
			var first *deletion
			if j < len(h.dels) {
				first = &h.dels[j]
			}
			needed++
			if first == nil {
				missing = true
				break
			}
			if first.at.After(applied) {
				applied = first.at
			}
		}
		if needed == 0 {
			continue
		}
		if missing {
			rep.unobserved++
			continue
		}
		rep.measured++
		d := max(applied.Sub(in.ackAt), 0)
		kind := ""
		for _, w := range r.windows {
			if !applied.Before(w.start) && !in.startAt.After(w.end.Add(grace)) {
				kind = w.kind
				break
			}
		}
		if kind != "" {
			rep.inside++
			if d > rep.worstIn {
				rep.worstIn, rep.worstInWhat = d, in.String()+" during "+kind
			}
			continue
		}
		rep.outside = append(rep.outside, d)
		if d > rep.worstOut {
			rep.worstOut, rep.worstOutWhat = d, in.String()
		}
	}
	sort.Slice(rep.outside, func(i, j int) bool { return rep.outside[i] < rep.outside[j] })
	return rep
}

func (rep delayReport) quantile(q float64) time.Duration {
	if len(rep.outside) == 0 {
		return 0
	}
	return rep.outside[min(len(rep.outside)-1, int(q*float64(len(rep.outside))))]
}

// judge is the model database's verdict on the values cached through Fetch
// (entry → value, absent when not cached): each must be its row's current
// version. An older one is stale when a change after it had its event
// acknowledged and not flushed from the bus before routing (its
// invalidation had to void the fill or drop the value); otherwise nothing
// could have announced the change, and it is excused.
func (d *database) judge(r *recorder, values map[entryKey]string) (stale []string, excused int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	for e, v := range values {
		k := dbKey{e.tenant, e.key}
		current := d.versions[k]
		n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
		if err != nil || !strings.HasPrefix(v, "v") || n > current {
			stale = append(stale, fmt.Sprintf("%s = %q, which no version of the row (now v%d) was", e, v, current))
			continue
		}
		if n == current {
			continue
		}
		var announced []string
		for _, in := range d.changes[k][n:] {
			if in.ack != 0 && !r.isLost(in) {
				announced = append(announced, in.id)
			}
		}
		if len(announced) == 0 {
			excused++
			continue
		}
		stale = append(stale, fmt.Sprintf("%s = %s, the database v%d: the invalidations of changes %s were acknowledged", e, v, current, strings.Join(announced, ", ")))
	}
	sort.Strings(stale)
	return stale, excused
}
