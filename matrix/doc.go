// Package matrix loads, validates and queries the routing matrix: which tags a
// domain maps to, which services own caches under a tag, which tenants a
// service serves, and the limits of each channel.
//
// Decoding is strict — unknown fields, duplicate keys and wrong types are
// errors — and a second pass checks every name and every reference. All
// problems are reported at once, each as "file:line:col: message".
package matrix
