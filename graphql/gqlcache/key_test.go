package gqlcache

import (
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/parser"
)

// A response's key ignores how the query is spelt and tells apart what
// changes the response: tenant, Vary, operation, document, variables.
func TestKey(t *testing.T) {
	c := &Cache{opt: Options{KeyPrefix: DefaultKeyPrefix}}
	key := func(tenant, vary, query string, vars map[string]any) string {
		t.Helper()
		doc, err := parser.ParseQuery(&ast.Source{Input: query})
		if err != nil {
			t.Fatal(err)
		}
		return c.key(tenant, vary, &graphql.OperationContext{Doc: doc, Variables: vars})
	}
	base := key("acme", "", `{ user(id: 1042) { name } }`, nil)
	if k := key("acme", "", "query {\n  user ( id : 1042 ) # who\n  { name }\n}", nil); k != base {
		t.Error("the same query spelt otherwise has another key")
	}
	for what, k := range map[string]string{
		"tenant":    key("globex", "", `{ user(id: 1042) { name } }`, nil),
		"vary":      key("acme", "admin", `{ user(id: 1042) { name } }`, nil),
		"argument":  key("acme", "", `{ user(id: 7) { name } }`, nil),
		"field":     key("acme", "", `{ user(id: 1042) { id } }`, nil),
		"variables": key("acme", "", `{ user(id: 1042) { name } }`, map[string]any{"x": 1}),
	} {
		if k == base {
			t.Errorf("another %s, the same key", what)
		}
	}
}
