package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// SourceVersionRequest is one call of srcver.lua: is an event older than
// the events of its entity already routed, and if not, remember it.
type SourceVersionRequest struct {
	Key     string // names.SourceVersionKey
	Version int64  // the event's source_version
	TTL     time.Duration
	MaxKeys int      // most keys remembered per entity
	Keys    []string // the event's keys; none for a whole-tag event
}

// SourceVersionStatus is the outcome of a source_version check.
type SourceVersionStatus int

const (
	// Suppressed: newer events already invalidated everything it names.
	Suppressed SourceVersionStatus = 0
	// Recorded: the event is to be routed; it was recorded.
	Recorded SourceVersionStatus = 1
)

func (*SourceVersionRequest) script() *redis.Script { return srcverScript }

func (r *SourceVersionRequest) encode() (keys []string, args []any) {
	args = make([]any, 0, 3+len(r.Keys))
	args = append(args, r.Version, r.TTL.Milliseconds(), r.MaxKeys)
	return []string{r.Key}, appendStrings(args, r.Keys)
}

// Reply decodes the call's reply.
func (r *SourceVersionRequest) Reply(cmd *redis.Cmd) (SourceVersionStatus, error) {
	n, err := cmd.Int64()
	if err != nil {
		return 0, err
	}
	if n != int64(Suppressed) && n != int64(Recorded) {
		return 0, badReply("srcver.lua", "status %d", n)
	}
	return SourceVersionStatus(n), nil
}
