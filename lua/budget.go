package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// BudgetRequest is one call of budget.lua: take N tokens from a shared
// bucket (a tenant's or the global budget), or give -N back.
type BudgetRequest struct {
	Key   string  // the bucket (names.GlobalBudgetKey, names.TenantBudgetKey)
	Rate  float64 // tokens per second (> 0)
	Burst int
	N     int  // tokens wanted; a negative N gives -N back (unused ones)
	Force bool // take all N even beyond the tokens there are (on credit)
}

// BudgetReply is what a bucket granted.
type BudgetReply struct {
	Granted int           // 0..N; 0 for a give-back
	Wait    time.Duration // when fewer than N were granted: until it has one more
}

func (*BudgetRequest) script() *redis.Script { return budgetScript }

func (r *BudgetRequest) encode() (keys []string, args []any) {
	return []string{r.Key}, []any{r.Rate, r.Burst, r.N, flag(r.Force)}
}

// Reply decodes the call's reply.
func (r *BudgetRequest) Reply(cmd *redis.Cmd) (BudgetReply, error) {
	res, err := cmd.Int64Slice()
	if res, err = sized("budget.lua", 2, res, err); err != nil {
		return BudgetReply{}, err
	}
	return BudgetReply{Granted: int(res[0]), Wait: time.Duration(res[1]) * time.Millisecond}, nil
}
