// Package soak is routerd's fault-injection soak: real redis-server and
// routerd processes (two routers, several agents) under a seeded, random
// schedule of faults, while a writer caches keys under tags and a publisher
// invalidates them. A checker records every write and invalidation and
// asserts at the end, after one check interval of quiet, that no key
// invalidated after its last write is still cached; beside them, readers
// Fetch the rows of a model database that a writer changes and publishes,
// and the end asserts that every row cached equals the database's. The test is TestSoak;
// `make soak` runs it for two minutes, `make test` for twenty seconds, and
// docs/operations.md says how to run it longer and reproduce a seed.
package soak
