// Package router is the routerd daemon's core: it reads domain-change events
// from the ingress streams with one consumer group, looks each up in the
// routing matrix, and publishes one versioned message per channel it maps to
// with an atomic script (meta epoch and version, capped history, PUBLISH),
// idempotently per event id.
//
// An ingress entry is acknowledged only after every message it produced is
// published; a failed entry is tried again by its own router at once, with
// backoff, and dead-lettered when it keeps failing with an error that will
// not pass; entries a dead instance left pending are claimed; reads and
// claims are bounded in bytes (read.go); every partition stream under the
// prefix is read, old partition counts' included; consumer groups that
// vanished (a Redis that restarted empty) are created again; events that
// cannot be routed go to the dead-letter stream with the reason, and those of
// a domain a router knows are re-driven (redrive.go). The package touches no
// signals and no global state, so tests run the daemon in-process.
package router
