// Package router is the routerd daemon's core: it reads domain-change events
// from the ingress streams with one consumer group, looks each up in the
// routing matrix, and publishes one versioned message per channel it maps to
// with an atomic script (meta epoch and version, capped history, PUBLISH),
// idempotently per event id.
//
// An ingress entry is acknowledged only after every message it produced is
// published; entries a dead instance left pending are claimed with
// XAUTOCLAIM; consumer groups that vanished (a Redis that restarted empty) are
// created again; events that cannot be routed go to the dead-letter stream
// with the reason. The package touches no signals and no global state, so
// tests run the daemon in-process.
package router
