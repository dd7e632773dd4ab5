// Package library is a gqlgen server that was not written for routerd —
// books and their authors, in graph/ — and its test puts gqlcache in front
// of it by the steps of docs/graphql.md ("Adding it to an existing gqlgen
// server"), on a schema that is not the example's.
package library
