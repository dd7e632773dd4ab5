package gqlcache

import (
	"reflect"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/tagstore"
)

const listsSchema = `
type Query {
  user(id: ID!): User
  products(category: String!): [Product!]!
  productsConnection: ProductConnection!
  search: [Result!]!
}
type User { id: ID!, name: String!, orders: [Order!]!, best: Product, nicknames: [String!]! }
type Order { id: ID! }
type Product { id: ID!, name: String!, vendor: Vendor! }
type Vendor { id: ID!, name: String! }
type ProductConnection { edges: [ProductEdge!]! }
type ProductEdge { cursor: String!, node: Product! }
union Result = User | Product
`

// A response is registered at the type level of the domain of every list
// it selects — the list's own type, or, for a list of an unmapped type (a
// connection's edges), the mapped types reached through it — and of no
// domain it only selects single objects of.
func TestListsAtTypeLevel(t *testing.T) {
	schema := gqlparser.MustLoadSchema(&ast.Source{Input: listsSchema})
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  t: {services: [s]}\ndomains:\n  user: {tags: [t], entity_refs: true}\n  product: {tags: [t], entity_refs: true}\n  order: {tags: [t], entity_refs: true}\n  vendor: {tags: [t], entity_refs: true}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Cache{schema: schema, opt: Options{Matrix: m, Types: map[string]string{"User": "user", "Product": "product", "Order": "order", "Vendor": "vendor"}}}
	for query, want := range map[string][]string{
		`{ user(id: 1) { name nicknames best { name vendor { name } } } }`:                                                               nil,
		`{ user(id: 1) { orders { id } } }`:                                                                                              {"order"},
		`{ products(category: "x") { vendor { name } } }`:                                                                                {"product"},
		`{ productsConnection { edges { cursor node { name vendor { name } } } } }`:                                                      {"product"},
		`{ search { ... on User { name } } }`:                                                                                            {"user", "product"},
		`{ products(category: "x") { ...F } } fragment F on Product { name }`:                                                            {"product"},
		`{ productsConnection { ...C } } fragment C on ProductConnection { edges { ...E } } fragment E on ProductEdge { node { name } }`: {"product"},
	} {
		doc, errs := gqlparser.LoadQueryWithRules(schema, query, nil) // nil: the default rules
		if errs != nil {
			t.Fatalf("%s: %v", query, errs)
		}
		_, lists, _ := c.tags(&graphql.OperationContext{Doc: doc, Operation: doc.Operations[0]})
		var got []string
		for _, r := range lists {
			if r != (tagstore.Ref{Domain: r.Domain}) {
				t.Errorf("%s: a list registered under %v, not a type level", query, r)
			}
			got = append(got, r.Domain)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: type levels %v, want %v", query, got, want)
		}
	}
}
