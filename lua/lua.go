// Package lua holds routerd's Redis scripts, embedded from the .lua files
// beside it. Each file starts with a KEYS/ARGV header that is its contract.
//
// What scripts share is composed in Go, once: every script starts with a
// prelude that defines MAX_UNPACK from MaxUnpack, and the two invalidation
// scripts with position.lua, the position rule (DUPLICATE, GAP, the order of
// a batch). Redis Functions would share the rule too, but need FUNCTION LOAD
// on every master, and again after a restart without persistence or on a
// node added later, while an EVALSHA script falls back to EVAL and two
// versions of routerd can run side by side (docs/architecture.md).
//
// Scripts run through go-redis's Script, which uses EVALSHA and falls back to
// EVAL when Redis answers NOSCRIPT (the script cache is empty after a restart
// or failover); pipelines of scripts run through RunPipeline, which loads
// the scripts and runs the pipeline again.
package lua

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// MaxUnpack is the most items a script passes to one Redis command (Lua's
// unpack has a stack limit). The scripts read it as MAX_UNPACK.
const MaxUnpack = 1000

// IDsPerVersion bounds a channel's recorded event ids to this many times its
// history length (a merged message records many ids). The publish script
// reads it as IDS_PER_VERSION.
const IDsPerVersion = 10

var (
	//go:embed publish.lua
	publishSrc string
	//go:embed position.lua
	positionSrc string
	//go:embed lease.lua
	leaseSrc string
	//go:embed release.lua
	releaseSrc string
	//go:embed invalidate.lua
	invalidateSrc string
	//go:embed invalidate_keys.lua
	invalidateKeysSrc string
	//go:embed chunk.lua
	chunkSrc string
	//go:embed set.lua
	setSrc string
	//go:embed compact.lua
	compactSrc string
	//go:embed srcver.lua
	srcverSrc string
	//go:embed budget.lua
	budgetSrc string
	//go:embed tenants.lua
	tenantsSrc string
	//go:embed read.lua
	readSrc string
	//go:embed claim.lua
	claimSrc string
)

// prelude starts every script: the limits and names Go and Lua share.
var prelude = "local MAX_UNPACK = " + strconv.Itoa(MaxUnpack) + "\n" +
	"local HISTORY_FIELD = " + strconv.Quote(names.HistoryField) + "\n" +
	"local IDS_PER_VERSION = " + strconv.Itoa(IDsPerVersion) + "\n"

// Sources are the scripts as they are sent to Redis, by file name.
var Sources = map[string]string{
	"publish.lua":         prelude + publishSrc,
	"invalidate.lua":      prelude + positionSrc + invalidateSrc,
	"invalidate_keys.lua": prelude + positionSrc + invalidateKeysSrc,
	"chunk.lua":           prelude + chunkSrc,
	"set.lua":             prelude + setSrc,
	"compact.lua":         prelude + compactSrc,
	"srcver.lua":          prelude + srcverSrc,
	"budget.lua":          prelude + budgetSrc,
	"tenants.lua":         prelude + tenantsSrc,
	"lease.lua":           prelude + leaseSrc,
	"release.lua":         prelude + releaseSrc,
	"read.lua":            prelude + readSrc,
	"claim.lua":           prelude + claimSrc,
}

var (
	// Publish assigns the next version of a channel and publishes a message.
	Publish = redis.NewScript(Sources["publish.lua"])
	// Invalidate deletes keys or a whole tag and records the position.
	Invalidate = redis.NewScript(Sources["invalidate.lua"])
	// InvalidateKeys applies runs of key-level invalidations in one call.
	InvalidateKeys = redis.NewScript(Sources["invalidate_keys.lua"])
	// Chunk deletes one batch of a large tag.
	Chunk = redis.NewScript(Sources["chunk.lua"])
	// Set stores a value and registers its key under tags; with a lease's
	// token, only while the lease holds it (the fill of a Fetch).
	Set = redis.NewScript(Sources["set.lua"])
	// Lease reads a value, or takes its lease when it is missing.
	Lease = redis.NewScript(Sources["lease.lua"])
	// Release gives a lease back unfilled.
	Release = redis.NewScript(Sources["release.lua"])
	// Compact drops tag set members whose keys are gone.
	Compact = redis.NewScript(Sources["compact.lua"])
	// SourceVersion suppresses events older than one already routed.
	SourceVersion = redis.NewScript(Sources["srcver.lua"])
	// Budget takes tokens from a tenant's or the global bucket.
	Budget = redis.NewScript(Sources["budget.lua"])
	// Tenants registers tenants and announces the new ones.
	Tenants = redis.NewScript(Sources["tenants.lua"])
	// Read reads a consumer group's new entries of a stream, bounded in bytes.
	Read = redis.NewScript(Sources["read.lua"])
	// Claim claims pending entries of a stream, bounded in bytes.
	Claim = redis.NewScript(Sources["claim.lua"])
)

// Load loads scripts into Redis's script cache (on a cluster client, into
// every master's).
func Load(ctx context.Context, c redis.Scripter, scripts ...*redis.Script) error {
	for _, s := range scripts {
		if err := s.Load(ctx, c).Err(); err != nil {
			return fmt.Errorf("load script: %w", err)
		}
	}
	return nil
}

// Pipeliner runs pipelines of scripts: a client, a cluster client, or one
// master of a cluster.
type Pipeliner interface {
	redis.Scripter
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// RunPipeline runs one pipeline of the EVALSHA calls build queues (and
// whatever else it queues) and returns those calls and the pipeline's error.
// When Redis answers NOSCRIPT to any of them (its script cache is empty
// after a restart or failover), it loads scripts and runs the whole pipeline
// once more, in order, so the scripts must be safe to run again. A call that
// did not answer NOSCRIPT the first time keeps its first reply (the second
// run of it would only find its work done); the others take the second.
func RunPipeline(ctx context.Context, c Pipeliner, scripts []*redis.Script, build func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	run := func() ([]*redis.Cmd, error) {
		var cmds []*redis.Cmd
		_, err := c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			cmds = build(pipe)
			return nil
		})
		return cmds, err
	}
	first, err := run()
	missing := false
	for _, cmd := range first {
		missing = missing || noScript(cmd.Err())
	}
	if !missing {
		return first, err
	}
	if err := Load(ctx, c, scripts...); err != nil {
		return first, err
	}
	second, err := run()
	if len(second) != len(first) {
		return second, err // build queued other calls: take the second run whole
	}
	var firstErr error // the pipeline's error, as Pipelined reports it, over the replies taken
	for i := range second {
		if !noScript(first[i].Err()) {
			if e := second[i].Err(); e != nil && e == err {
				err = nil // the error of a reply not taken
			}
			second[i] = first[i]
		}
		if firstErr == nil {
			firstErr = second[i].Err()
		}
	}
	if firstErr == nil {
		firstErr = err // another call of the pipeline (not a script) failed
	}
	return second, firstErr
}

func noScript(err error) bool { return redis.HasErrorPrefix(err, "NOSCRIPT") }
