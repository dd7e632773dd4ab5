// Package lua holds routerd's Redis scripts, embedded from the .lua files
// beside it, and one typed codec per script beside each file (publish.lua
// and publish.go, …). Each .lua file starts with a KEYS/ARGV header that is
// its contract; its codec is the only Go code that encodes that contract or
// decodes the reply, so changing a script means changing two files side by
// side.
//
// Every codec follows one convention (docs/architecture.md, "Scripts"):
//
//   - a request type, XRequest, carries the call's inputs as Go values (the
//     keys are derived from names/ where the script's contract fixes them);
//     it is a Request, which Run runs alone and Queue queues in a pipeline
//     run by RunPipeline;
//   - its Reply(cmd) decodes the command's reply into a reply type whose
//     outcome is a named status where the script has several; a Redis error
//     comes back unchanged (callers classify it), a reply of the wrong shape
//     as an error naming the script.
//
// What scripts share is composed in Go, once: every script starts with a
// prelude that defines MAX_UNPACK from MaxUnpack (after the allow-oom
// shebang of those that must run on a full cache Redis: allowOOM); the two
// invalidation scripts add position.lua, the position rule (DUPLICATE, GAP,
// the order of a batch), and the two that take tokens bucket.lua, the token
// bucket.
// Redis Functions would share the rule too, but need FUNCTION LOAD on every
// master, and again after a restart without persistence or on a node added
// later, while an EVALSHA script falls back to EVAL and two versions of
// routerd can run side by side (docs/architecture.md).
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
	"maps"
	"strconv"
	"strings"

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
	//go:embed bucket.lua
	bucketSrc string
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
	//go:embed weight.lua
	weightSrc string
	//go:embed index.lua
	indexSrc string
	//go:embed generation.lua
	generationSrc string
	//go:embed unread.lua
	unreadSrc string
	//go:embed deadletter.lua
	deadLetterSrc string
	//go:embed forget.lua
	forgetSrc string
	//go:embed delivery.lua
	deliverySrc string
)

// prelude starts every script: the limits and names Go and Lua share.
var prelude = "local MAX_UNPACK = " + strconv.Itoa(MaxUnpack) + "\n" +
	"local HISTORY_FIELD = " + strconv.Quote(names.HistoryField) + "\n" +
	"local IDS_PER_VERSION = " + strconv.Itoa(IDsPerVersion) + "\n"

// allowOOM heads the scripts that must run on a cache Redis at maxmemory
// under noeviction, where Redis refuses every command that may grow its
// memory (SET, SADD, …) with OOM: a script without a shebang fails at its
// first such command when it has written nothing before (the position SET
// of a whole tag that found its tag empty, a batch mark, the position
// index, the generation a check saw, an agent's delivery marks), one with a shebang is refused whole unless it declares allow-oom
// (Redis 7's flags; the shebang is the script's first line, before the
// prelude). An invalidation frees memory and must land when the cache is
// full; the position, mark and index it writes are a few bytes.
// allow-cross-slot-keys keeps what a script without a shebang may do on a
// cluster node: a tag set's member naming a key of another slot fails as
// before, where it is not local, and not earlier.
const allowOOM = "#!lua flags=allow-oom,allow-cross-slot-keys\n"

// sources are the scripts as they are sent to Redis, by file name.
var sources = map[string]string{
	"publish.lua":         prelude + bucketSrc + publishSrc,
	"invalidate.lua":      allowOOM + prelude + positionSrc + invalidateSrc,
	"invalidate_keys.lua": allowOOM + prelude + positionSrc + invalidateKeysSrc,
	"index.lua":           allowOOM + prelude + indexSrc,
	"generation.lua":      allowOOM + prelude + generationSrc,
	"delivery.lua":        allowOOM + prelude + deliverySrc,
	"chunk.lua":           prelude + chunkSrc,
	"set.lua":             prelude + setSrc,
	"compact.lua":         prelude + compactSrc,
	"srcver.lua":          prelude + srcverSrc,
	"budget.lua":          prelude + bucketSrc + budgetSrc,
	"tenants.lua":         prelude + tenantsSrc,
	"lease.lua":           prelude + leaseSrc,
	"release.lua":         prelude + releaseSrc,
	"read.lua":            prelude + weightSrc + readSrc,
	"claim.lua":           prelude + weightSrc + claimSrc,
	"unread.lua":          prelude + unreadSrc,
	"deadletter.lua":      prelude + deadLetterSrc,
	"forget.lua":          prelude + forgetSrc,
}

// Sources returns the scripts as they are sent to Redis, preludes
// included, by file name (publish.lua, …): a copy, for checks and tools.
func Sources() map[string]string {
	return maps.Clone(sources)
}

// scripts are the scripts, by file name, as go-redis runs them (EVALSHA;
// after NOSCRIPT, SCRIPT LOAD and EVALSHA again: Run).
var scripts = func() map[string]*redis.Script {
	m := make(map[string]*redis.Script, len(sources))
	for name, src := range sources {
		m[name] = redis.NewScript(src)
	}
	return m
}()

// The scripts each codec runs.
var (
	publishScript, srcverScript, budgetScript = scripts["publish.lua"], scripts["srcver.lua"], scripts["budget.lua"]
	tenantsScript, readScript, claimScript    = scripts["tenants.lua"], scripts["read.lua"], scripts["claim.lua"]
	invalidateScript, invalidateKeysScript    = scripts["invalidate.lua"], scripts["invalidate_keys.lua"]
	chunkScript, compactScript, setScript     = scripts["chunk.lua"], scripts["compact.lua"], scripts["set.lua"]
	leaseScript, releaseScript, unreadScript  = scripts["lease.lua"], scripts["release.lua"], scripts["unread.lua"]
	indexScript, generationScript             = scripts["index.lua"], scripts["generation.lua"]
	deadLetterScript, forgetScript            = scripts["deadletter.lua"], scripts["forget.lua"]
	deliveryScript                            = scripts["delivery.lua"]
)

// Request is one script call: each codec's request type (PublishRequest,
// InvalidateRequest, …) is a Request of its reply type P. It knows its
// script and encodes its KEYS and ARGV; Reply decodes what the script
// answered.
type Request[P any] interface {
	script() *redis.Script
	encode() (keys []string, args []any)
	Reply(cmd *redis.Cmd) (P, error)
}

// Run runs one script call alone and decodes its reply. When Redis has
// lost its script cache (a restart, a failover, SCRIPT FLUSH: NOSCRIPT) it
// loads the script and calls it by its SHA again, rather than send it whole
// with EVAL as go-redis's Script.Run does: the router's role may run
// EVALSHA and SCRIPT LOAD, not EVAL (security.md). EVAL only when the load
// is refused.
func Run[P any](ctx context.Context, c redis.Scripter, r Request[P]) (P, error) {
	keys, args := r.encode()
	s := r.script()
	cmd := s.EvalSha(ctx, c, keys, args...)
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		if s.Load(ctx, c).Err() == nil {
			cmd = s.EvalSha(ctx, c, keys, args...)
		} else {
			cmd = s.Eval(ctx, c, keys, args...)
		}
	}
	return r.Reply(cmd)
}

// Queue queues one script call (EVALSHA) in a pipeline that RunPipeline
// runs; decode the command RunPipeline returns for it with r.Reply.
func Queue[P any](ctx context.Context, pipe redis.Pipeliner, r Request[P]) *redis.Cmd {
	keys, args := r.encode()
	return r.script().EvalSha(ctx, pipe, keys, args...)
}

// RouterScripts are the scripts the router runs on the bus: what
// RunPipeline loads there after a NOSCRIPT.
func RouterScripts() []*redis.Script {
	return []*redis.Script{publishScript, srcverScript, budgetScript, tenantsScript, readScript, claimScript, unreadScript, deadLetterScript, forgetScript}
}

// CacheScripts are the scripts run on a cache Redis.
func CacheScripts() []*redis.Script {
	return []*redis.Script{invalidateScript, invalidateKeysScript, chunkScript, setScript, leaseScript, releaseScript, compactScript, indexScript, generationScript, deliveryScript}
}

// ScriptName names the script whose SHA1 is sha ("publish", "invalidate",
// …), or "" when it is none of routerd's.
func ScriptName(sha string) string {
	for name, s := range scripts {
		if s.Hash() == sha {
			return strings.TrimSuffix(name, ".lua")
		}
	}
	return ""
}

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
// Decode the replies from the commands it returns (a codec's Reply), not
// from those build queued: after a second run they may differ.
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

// badReply is the error of a reply whose shape a codec does not expect.
func badReply(script, format string, a ...any) error {
	return fmt.Errorf("lua: %s: "+format, append([]any{script}, a...)...)
}

// appendStrings appends strings to a script's arguments.
func appendStrings(args []any, s []string) []any {
	for _, v := range s {
		args = append(args, v)
	}
	return args
}

// sized is v, or the error of a reply that failed or does not hold n items.
func sized[T any](script string, n int, v []T, err error) ([]T, error) {
	if err == nil && len(v) != n {
		err = badReply(script, "a reply of %d items, not %d", len(v), n)
	}
	return v, err
}

// flag is a script's boolean argument.
func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
