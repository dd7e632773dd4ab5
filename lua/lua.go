// Package lua holds routerd's Redis scripts, embedded from the .lua files
// beside it. Each file starts with a KEYS/ARGV header that is its contract.
//
// Scripts run through go-redis's Script, which uses EVALSHA and falls back to
// EVAL when Redis answers NOSCRIPT (the script cache is empty after a restart
// or failover).
package lua

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed publish.lua
	publishSrc string
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
)

var (
	// Publish assigns the next version of a channel and publishes a message.
	Publish = redis.NewScript(publishSrc)
	// Invalidate deletes keys or a whole tag and records the position.
	Invalidate = redis.NewScript(invalidateSrc)
	// InvalidateKeys applies runs of key-level invalidations in one call.
	InvalidateKeys = redis.NewScript(invalidateKeysSrc)
	// Chunk deletes one batch of a large tag.
	Chunk = redis.NewScript(chunkSrc)
	// Set stores a value and registers its key under tags.
	Set = redis.NewScript(setSrc)
	// Compact drops tag set members whose keys are gone.
	Compact = redis.NewScript(compactSrc)
	// SourceVersion suppresses events older than one already routed.
	SourceVersion = redis.NewScript(srcverSrc)
)

// MaxUnpack is the most items a script passes to one Redis command.
const MaxUnpack = 1000
