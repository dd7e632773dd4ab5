package lua

import (
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// PublishRequest is one call of publish.lua: messages on one or more
// channels (on a cluster, one channel: its keys share a slot).
type PublishRequest struct {
	Command  string // "PUBLISH" or "SPUBLISH"
	Epoch    string // the epoch to start on a channel that has none
	Channels []PublishChannel
}

// PublishChannel is one channel's part of a publish call.
type PublishChannel struct {
	Channel string
	History int // messages the history keeps
	// HistoryTTL, above 0, expires the history and the event ids that long
	// after the channel's last message (the meta never); 0: they never
	// expire. Sent in milliseconds.
	HistoryTTL time.Duration
	Rate       float64 // the channel's bucket: tokens per second, above 0
	Burst      int
	Force      bool // publish even without a token, taking one on credit
	Messages   []PublishMessage
}

// PublishMessage is one message: its event ids (the first is its event's;
// more when events were merged) and its JSON body (wire.MessageBody).
type PublishMessage struct {
	IDs  []string
	Body []byte
}

// PublishStatus is the outcome of one message of a publish call.
type PublishStatus int

const (
	// Published: sent, under its own version.
	Published PublishStatus = 0
	// PublishDuplicate: every event id of it was published before: nothing
	// was sent again; the version is the one its first id was published with.
	PublishDuplicate PublishStatus = 1
	// PublishPartial: some of its event ids were published before and
	// others not (Recorded says which): nothing was sent or recorded.
	PublishPartial PublishStatus = 2
	// PublishNoToken: the channel's bucket had no token: nothing was sent
	// or recorded; it has one after Wait.
	PublishNoToken PublishStatus = 3
	// PublishBehind: an earlier message of its channel in the call was
	// PublishPartial: nothing was sent or recorded, to keep the order.
	PublishBehind PublishStatus = 4
)

// PublishResult is one message's outcome.
type PublishResult struct {
	Status   PublishStatus
	Version  int64         // Published, PublishDuplicate (0 for PublishNoToken)
	Wait     time.Duration // PublishNoToken
	Recorded []bool        // PublishPartial: for each id, whether it was published before
}

// The ARGV items a publish call takes, by which callers bound its size:
// PublishArgs once, PublishChannelArgs per channel, MessageArgs per message.
const (
	PublishArgs        = 2
	PublishChannelArgs = 7
)

// MessageArgs is the number of ARGV items one message of ids event ids
// takes.
func MessageArgs(ids int) int { return 2 + ids }

func (*PublishRequest) script() *redis.Script { return publishScript }

func (r *PublishRequest) encode() (keys []string, args []any) {
	keys = make([]string, 0, 3*len(r.Channels))
	n := PublishArgs
	for _, ch := range r.Channels {
		n += PublishChannelArgs
		for _, m := range ch.Messages {
			n += MessageArgs(len(m.IDs))
		}
	}
	args = make([]any, 0, n)
	args = append(args, r.Command, r.Epoch)
	for _, ch := range r.Channels {
		keys = append(keys, names.MetaKey(ch.Channel), names.HistoryKey(ch.Channel), names.EventsKey(ch.Channel))
		args = append(args, ch.Channel, ch.History, ch.HistoryTTL.Milliseconds(), ch.Rate, ch.Burst, flag(ch.Force), len(ch.Messages))
		for _, m := range ch.Messages {
			args = append(args, len(m.IDs))
			for i := range m.IDs {
				// Its address: go-redis writes a *string as the string,
				// and a string made an interface is one allocation an id.
				args = append(args, &m.IDs[i])
			}
			args = append(args, m.Body)
		}
	}
	return keys, args
}

// Reply decodes the call's reply: one result per message, in the order of
// the request.
func (r *PublishRequest) Reply(cmd *redis.Cmd) ([]PublishResult, error) {
	res, err := cmd.Int64Slice()
	if err != nil {
		return nil, err
	}
	short := func() error {
		return badReply("publish.lua", "a reply of %d numbers, not one result for each of the call's messages", len(res))
	}
	got := make([]PublishResult, 0, len(res)/2)
	k := 0
	for _, ch := range r.Channels {
		for _, m := range ch.Messages {
			if k+2 > len(res) {
				return nil, short()
			}
			p := PublishResult{Version: res[k], Status: PublishStatus(res[k+1])}
			k += 2
			switch p.Status {
			case Published, PublishDuplicate:
			case PublishBehind:
			case PublishNoToken:
				p.Wait = time.Duration(max(p.Version, 1)) * time.Millisecond
				p.Version = 0
			case PublishPartial:
				n := len(m.IDs)
				if k+n > len(res) {
					return nil, short()
				}
				p.Recorded = make([]bool, n)
				for x := range n {
					p.Recorded[x] = res[k+x] == 1
				}
				k += n
			default:
				return nil, badReply("publish.lua", "status %d", p.Status)
			}
			got = append(got, p)
		}
	}
	if k != len(res) {
		return nil, short()
	}
	return got, nil
}
