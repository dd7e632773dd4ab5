package lua

import (
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// HeadKeys is the number of keys that start an invalidation's KEYS, in
// invalidate.lua and per group in invalidate_keys.lua: the tag set, the
// position key, the channel's batch mark and the tag's ref-registered set
// (SetHead fills them); the cache keys, then the reference sets, follow.
const HeadKeys = 4

// SetHead fills keys[:HeadKeys] for a tenant's tag and, when service is not
// "", that service's position on it (else the tag set stands in for the
// position key and batch mark, which go unused).
func SetHead(keys []string, tenant, tag, service string) {
	keys[0] = names.TagSetKey(tenant, tag)
	keys[1], keys[2] = keys[0], keys[0]
	keys[3] = names.TagRefsKey(tenant, tag)
	if service != "" {
		keys[1] = names.PositionKey(tenant, service, tag)
		keys[2] = names.BatchMarkKey(tenant, service, tag)
	}
}

// VersionArg is the invalidation scripts' version argument, which they
// store after the epoch as the position: "version", or "version:chain"
// (position.lua).
func VersionArg(version int64, chain string) string {
	v := strconv.FormatInt(version, 10)
	if chain != "" {
		v += ":" + chain
	}
	return v
}

// Mode is how an invalidation's version meets the stored position
// (position.lua).
type Mode string

const (
	// MayJump may jump ahead of the position (recovery).
	MayJump Mode = "0"
	// Strict refuses a version that does not follow the position exactly
	// (callers that pipeline consecutive versions).
	Strict Mode = "1"
	// Repair (whole tag only) sets the position whatever it is.
	Repair Mode = "R"
)

// InvalidateStatus is the outcome of one invalidation, in invalidate.lua's
// words (invalidate_keys.lua's letters decode to the same).
type InvalidateStatus string

const (
	InvalidateSuccess   InvalidateStatus = "SUCCESS"
	EmptyTagSet         InvalidateStatus = "EMPTY_TAG_SET"
	CardinalityExceeded InvalidateStatus = "TAG_CARDINALITY_EXCEEDED" // nothing done; the caller chunks
	InvalidateDuplicate InvalidateStatus = "DUPLICATE"                // the position is at or past the version
	InvalidateGap       InvalidateStatus = "GAP"                      // strict, and the position is behind the previous version
	InvalidateWait      InvalidateStatus = "WAIT"                     // an earlier whole tag of the channel in the pipeline was deferred
)

var invalidateStatus = map[string]InvalidateStatus{
	string(InvalidateSuccess): InvalidateSuccess, string(EmptyTagSet): EmptyTagSet, string(CardinalityExceeded): CardinalityExceeded,
	string(InvalidateDuplicate): InvalidateDuplicate, string(InvalidateGap): InvalidateGap, string(InvalidateWait): InvalidateWait,
}

// InvalidateResult is one invalidation's outcome.
type InvalidateResult struct {
	Status  InvalidateStatus
	Deleted int64 // cache keys removed
}

// InvalidateRequest is one call of invalidate.lua: one invalidation, key
// level, entity level or of the whole tag.
type InvalidateRequest struct {
	// Keys are the call's KEYS: HeadKeys (SetHead), then the cache keys,
	// then RefSets reference sets.
	Keys    []string
	RefSets int
	Guard   int    // cardinality guard: a larger tag is refused (CardinalityExceeded)
	Epoch   string // the channel's epoch, "" when no position is kept
	Version int64
	Chain   string // the channel's chain at Version, "" for none (position.lua)
	Mode    Mode
	Token   string // the pipeline's token (docs/architecture.md), or ""
	Plain   bool   // with RefSets: the tag's plain values go too
}

func (*InvalidateRequest) script() *redis.Script { return invalidateScript }

func (r *InvalidateRequest) encode() (keys []string, args []any) {
	return r.Keys, []any{r.Guard, r.Epoch, VersionArg(r.Version, r.Chain), string(r.Mode), r.Token, r.RefSets, flag(r.Plain)}
}

// Reply decodes the call's reply; anything but a known status and a count
// is an error, never an empty status.
func (r *InvalidateRequest) Reply(cmd *redis.Cmd) (InvalidateResult, error) {
	v, err := cmd.Slice()
	if err != nil {
		return InvalidateResult{}, err
	}
	if len(v) != 2 {
		return InvalidateResult{}, badReply("invalidate.lua", "unexpected reply %v", v)
	}
	text, _ := v[0].(string)
	status, ok := invalidateStatus[text]
	n, isInt := v[1].(int64)
	if !ok || !isInt {
		return InvalidateResult{}, badReply("invalidate.lua", "unexpected reply %v", v)
	}
	return InvalidateResult{Status: status, Deleted: n}, nil
}
