package lua

import (
	"github.com/redis/go-redis/v9"
)

// InvalidateKeysRequest is one call of invalidate_keys.lua: runs of
// key-level invalidations, in groups of one tag and position each, in
// order.
type InvalidateKeysRequest struct {
	Groups []InvalidateGroup
}

// InvalidateGroup is a run of key-level invalidations of one tag, under one
// epoch and mode.
type InvalidateGroup struct {
	Head  []string // HeadKeys keys (SetHead)
	Epoch string   // "" when no position is kept
	Mode  Mode     // MayJump or Strict
	Token string   // the pipeline's token, or ""
	Invs  []KeyInvalidation
}

// KeyInvalidation is one invalidation of a group: its version (and the
// channel's chain at it, "" for none) and cache keys (at least one).
type KeyInvalidation struct {
	Version int64
	Chain   string
	Keys    []string
}

// invalidateLetter are invalidate_keys.lua's status letters.
var invalidateLetter = map[byte]InvalidateStatus{'S': InvalidateSuccess, 'D': InvalidateDuplicate, 'G': InvalidateGap, 'W': InvalidateWait}

func (*InvalidateKeysRequest) script() *redis.Script { return invalidateKeysScript }

func (r *InvalidateKeysRequest) encode() (keys []string, args []any) {
	nk, na := 0, 0
	for _, g := range r.Groups {
		nk += len(g.Head)
		na += 4 + 2*len(g.Invs)
		for _, inv := range g.Invs {
			nk += len(inv.Keys)
		}
	}
	keys = make([]string, 0, nk)
	args = make([]any, 0, na)
	for _, g := range r.Groups {
		keys = append(keys, g.Head...)
		args = append(args, g.Epoch, string(g.Mode), g.Token, len(g.Invs))
		for _, inv := range g.Invs {
			keys = append(keys, inv.Keys...)
			args = append(args, VersionArg(inv.Version, inv.Chain), len(inv.Keys))
		}
	}
	return keys, args
}

// Reply decodes the call's reply: one result per invalidation, in order.
func (r *InvalidateKeysRequest) Reply(cmd *redis.Cmd) ([]InvalidateResult, error) {
	v, err := cmd.Slice()
	if err != nil {
		return nil, err
	}
	n := 0
	for _, g := range r.Groups {
		n += len(g.Invs)
	}
	var letters string
	if len(v) > 0 {
		letters, _ = v[0].(string)
	}
	if len(v) != 1+n || len(letters) != n {
		return nil, badReply("invalidate_keys.lua", "unexpected reply %v for %d invalidations", v, n)
	}
	out := make([]InvalidateResult, n)
	for i := range out {
		status, ok := invalidateLetter[letters[i]]
		if !ok {
			return nil, badReply("invalidate_keys.lua", "unexpected status %q in reply %v", letters[i], v)
		}
		deleted, ok := v[1+i].(int64)
		if !ok {
			return nil, badReply("invalidate_keys.lua", "unexpected count %v in reply %v", v[1+i], v)
		}
		out[i] = InvalidateResult{Status: status, Deleted: deleted}
	}
	return out, nil
}
