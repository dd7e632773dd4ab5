// Package gqlcache caches the responses of GraphQL queries served by gqlgen
// (github.com/99designs/gqlgen) in Redis through routerd's tag store, and
// registers each response under what it was derived from, so that routerd
// drops exactly the responses a change touched.
//
// A response is keyed by its tenant, the normalized query (the parsed
// document formatted anew: whitespace and comments do not count), the
// operation name and the variables. It is registered:
//
//   - under an entity reference <domain>/<id> for every object in it whose
//     GraphQL type is mapped to a domain (Options.Types) and which has an id:
//     an entity-level event of that entity drops it;
//   - under the tags of the domain (from the matrix) of every field of a
//     mapped type the query selects, lists included, whether or not the
//     response holds any object of it: an event without an entity (a
//     creation, which changes lists) and every whole-tag recovery drop it;
//   - under the type-level reference of the domain of every list field of a
//     mapped type the query selects (nested ones included; for a list of an
//     unmapped type, the mapped types it leads to, as a connection's
//     edges { node }): a list's
//     membership changes with events of entities it never held (a product
//     moved into a category), so any event of the domain drops it;
//   - above the reference guard (tagstore.Options.RefGuard), or for an
//     object of a mapped type without a usable id, under the type-level
//     reference of the domain: any event of the domain drops it.
//
// To read the ids, the extension adds two fields to every selection set of
// the query it executes, `__routerd_typename: __typename` and, where the type
// has one, `__routerd_id: id`, and takes them out of the response again
// (the query the client sent is never changed: the extension works on a
// copy). See docs/graphql.md for the mapping and its limits.
package gqlcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/formatter"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// The aliases of the fields the extension adds to read types and ids.
const (
	typenameAlias = "__routerd_typename"
	idAlias       = "__routerd_id"
)

// DefaultTTL is how long a response stays cached when Options.TTL is zero.
const DefaultTTL = 10 * time.Minute

// DefaultKeyPrefix starts every cached response's key (under the tenant's
// {tenant:…}: prefix).
const DefaultKeyPrefix = "gql:"

// Options configure a Cache.
type Options struct {
	// Store caches the responses (required).
	Store *tagstore.Store
	// Matrix gives the tags of each domain (required): a response is
	// registered under the tags of every domain it selects, which is what
	// whole-tag invalidations and recoveries reach.
	Matrix *matrix.Matrix
	// Types maps GraphQL object types to matrix domains ("User" → "user").
	// Objects of other types are not tracked (required, at least one).
	Types map[string]string
	// Tenant returns the tenant of a request; a request without one (an
	// error) is served and not cached (required).
	Tenant func(ctx context.Context) (string, error)
	// Vary, when set, returns what else a response depends on besides the
	// tenant, the query and the variables — the user or role, when
	// resolvers answer differently by it — and is part of the key. A cached
	// response is served without running any resolver (nor its checks), so
	// whatever decides what a caller may see must be in Vary.
	Vary func(ctx context.Context) string
	// TTL of a cached response; DefaultTTL when zero.
	TTL time.Duration
	// KeyPrefix starts each response's key; DefaultKeyPrefix when empty.
	// It must be a valid key (names.Key) on its own.
	KeyPrefix string
	// Logger (no-op when nil) and Registerer (none when nil).
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Cache is the gqlgen extension: add it with srv.Use(cache).
type Cache struct {
	opt    Options
	schema *ast.Schema
	log    *slog.Logger

	requests *prometheus.CounterVec // result: hit, miss, skip
	guarded  prometheus.Counter
}

var (
	_ graphql.HandlerExtension        = (*Cache)(nil)
	_ graphql.OperationContextMutator = (*Cache)(nil)
	_ graphql.ResponseInterceptor     = (*Cache)(nil)
)

// New checks the options.
func New(opt Options) (*Cache, error) {
	switch {
	case opt.Store == nil:
		return nil, errors.New("gqlcache: Store is required")
	case opt.Matrix == nil:
		return nil, errors.New("gqlcache: Matrix is required")
	case opt.Tenant == nil:
		return nil, errors.New("gqlcache: Tenant is required")
	case len(opt.Types) == 0:
		return nil, errors.New("gqlcache: Types must map at least one GraphQL type to a domain")
	case opt.TTL < 0:
		return nil, fmt.Errorf("gqlcache: negative TTL %v", opt.TTL)
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for typ, domain := range opt.Types {
		d, ok := opt.Matrix.Domains[domain]
		if !ok {
			return nil, fmt.Errorf("gqlcache: type %s maps to domain %q, which the matrix does not have", typ, domain)
		}
		if !d.EntityRefs {
			// Without it the domain's key-level events carry keys only,
			// which never name a cached response: those would stay stale.
			return nil, fmt.Errorf("gqlcache: type %s maps to domain %q, which has no entity_refs in the matrix: its events that name keys would never reach a cached response; set entity_refs: true on it", typ, domain)
		}
	}
	if opt.TTL == 0 {
		opt.TTL = DefaultTTL
	}
	if opt.KeyPrefix == "" {
		opt.KeyPrefix = DefaultKeyPrefix
	}
	if err := names.Key(opt.KeyPrefix); err != nil {
		return nil, fmt.Errorf("gqlcache: KeyPrefix: %w", err)
	}
	if len(opt.KeyPrefix)+sha256.Size*2 > names.MaxKeyLen {
		return nil, fmt.Errorf("gqlcache: KeyPrefix %q is too long", opt.KeyPrefix)
	}
	reg := opt.Registerer
	c := &Cache{opt: opt, log: log}
	c.requests = promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "routerd_graphql_cache_requests_total",
		Help: "GraphQL queries by what the response cache did: hit, miss (executed and cached), skip (not cached: no tenant, errors, deferred parts, a failed cache).",
	}, []string{"result"})
	c.guarded = promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Name: "routerd_graphql_cache_type_level_total",
		Help: "Responses registered at the type level of their domains: more entities than the reference guard allows.",
	})
	return c, nil
}

// ExtensionName is the extension's name in gqlgen.
func (c *Cache) ExtensionName() string { return "RouterdResponseCache" }

// Validate checks the type mapping against the schema.
func (c *Cache) Validate(schema graphql.ExecutableSchema) error {
	s := schema.Schema()
	for typ := range c.opt.Types {
		def := s.Types[typ]
		if def == nil {
			return fmt.Errorf("gqlcache: mapped type %s is not in the schema", typ)
		}
		if def.Kind != ast.Object {
			return fmt.Errorf("gqlcache: mapped type %s is a %s, not an object type (responses name the concrete type of each object)", typ, def.Kind)
		}
	}
	c.schema = s
	return nil
}

// MutateOperationContext gives a query a copy of its document with the
// fields that read types and ids added.
func (c *Cache) MutateOperationContext(ctx context.Context, rc *graphql.OperationContext) *gqlerror.Error {
	if rc.Operation == nil || rc.Operation.Operation != ast.Query || c.schema == nil {
		return nil
	}
	doc := &ast.QueryDocument{Position: rc.Doc.Position, Comment: rc.Doc.Comment}
	for _, op := range rc.Doc.Operations {
		cp := *op
		if root := c.rootType(op.Operation); root != nil {
			cp.SelectionSet = c.inject(op.SelectionSet, root)
		}
		doc.Operations = append(doc.Operations, &cp)
		if op == rc.Operation {
			rc.Operation = &cp
		}
	}
	for _, f := range rc.Doc.Fragments {
		cp := *f
		if def := c.schema.Types[f.TypeCondition]; def != nil {
			cp.SelectionSet = c.inject(f.SelectionSet, def)
		}
		doc.Fragments = append(doc.Fragments, &cp)
	}
	rc.Doc = doc
	return nil
}

func (c *Cache) rootType(op ast.Operation) *ast.Definition {
	switch op {
	case ast.Query:
		return c.schema.Query
	case ast.Mutation:
		return c.schema.Mutation
	}
	return c.schema.Subscription
}

// inject copies a selection set of the type def, adding the type and id
// reading fields to it and to every selection set below.
func (c *Cache) inject(set ast.SelectionSet, def *ast.Definition) ast.SelectionSet {
	out := make(ast.SelectionSet, 0, len(set)+2)
	for _, sel := range set {
		switch sel := sel.(type) {
		case *ast.Field:
			cp := *sel
			if sel.Definition != nil && len(sel.SelectionSet) > 0 {
				if child := c.schema.Types[sel.Definition.Type.Name()]; child != nil {
					cp.SelectionSet = c.inject(sel.SelectionSet, child)
				}
			}
			out = append(out, &cp)
		case *ast.InlineFragment:
			cp := *sel
			child := def
			if sel.TypeCondition != "" {
				child = c.schema.Types[sel.TypeCondition]
			}
			if child != nil {
				cp.SelectionSet = c.inject(sel.SelectionSet, child)
			}
			out = append(out, &cp)
		default: // fragment spreads: their definitions are copied on their own
			out = append(out, sel)
		}
	}
	if def.Kind != ast.Object && def.Kind != ast.Interface && def.Kind != ast.Union {
		return out
	}
	out = append(out, &ast.Field{Alias: typenameAlias, Name: "__typename", ObjectDefinition: def,
		Definition: &ast.FieldDefinition{Name: "__typename", Type: ast.NonNullNamedType("String", nil)}})
	if id := def.Fields.ForName("id"); id != nil && len(id.Arguments) == 0 && c.schema.Types[id.Type.Name()] != nil &&
		c.schema.Types[id.Type.Name()].Kind == ast.Scalar {
		out = append(out, &ast.Field{Alias: idAlias, Name: "id", ObjectDefinition: def, Definition: id})
	}
	return out
}

// InterceptResponse serves a query from the cache, or runs it, takes the
// added fields out of its response and caches it under its refs and tags.
// It reads through tagstore.Fetch: concurrent misses of one response run
// the query once, and a response computed while an event of a domain it
// selects was applied is returned but not cached, as it may predate the
// change.
func (c *Cache) InterceptResponse(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
	if !graphql.HasOperationContext(ctx) {
		return next(ctx)
	}
	rc := graphql.GetOperationContext(ctx)
	if rc.Operation == nil || rc.Operation.Operation != ast.Query || c.schema == nil {
		return next(ctx)
	}
	tenant, err := c.opt.Tenant(ctx)
	if err != nil {
		return c.uncached(ctx, next)
	}
	vary := ""
	if c.opt.Vary != nil {
		vary = c.opt.Vary(ctx)
	}
	key := c.key(tenant, vary, rc)
	tags, lists, selected := c.tags(rc)
	if len(tags) == 0 {
		return c.uncached(ctx, next) // selects no mapped type: no event would ever reach it
	}
	var (
		resp     *graphql.Response
		refs     []tagstore.Ref
		executed bool
	)
	data, err := c.opt.Store.Fetch(ctx, tenant, key, tagstore.FetchOptions{
		TTL: c.opt.TTL, Tags: tags, Refs: lists,
		// The entities a response holds are known once it is computed;
		// until then any event of a domain it selects voids the fill.
		LeaseRefs:  selected,
		LoadedRefs: func() []tagstore.Ref { return refs },
	}, func(ctx context.Context) ([]byte, error) {
		executed = true
		resp = next(ctx)
		var ok bool
		if refs, ok = c.strip(resp); !ok {
			return nil, errNotCacheable
		}
		for _, l := range lists {
			if !slices.Contains(refs, l) {
				refs = append(refs, l)
			}
		}
		return resp.Data, nil
	})
	switch {
	case err == nil && !executed:
		c.requests.WithLabelValues("hit").Inc()
		return &graphql.Response{Data: data}
	case err == nil:
		if distinct(refs) > c.opt.Store.RefGuard() {
			c.guarded.Inc()
		}
		c.requests.WithLabelValues("miss").Inc()
		return resp
	case executed:
		if !errors.Is(err, errNotCacheable) {
			c.log.Warn("graphql response cache: store failed", "err", err)
		}
		c.requests.WithLabelValues("skip").Inc()
		return resp
	}
	c.log.Warn("graphql response cache: read failed; executing the query", "err", err)
	return c.uncached(ctx, next)
}

// errNotCacheable: the response is served, not cached.
var errNotCacheable = errors.New("gqlcache: response not cacheable")

// uncached runs the query without the cache.
func (c *Cache) uncached(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
	resp := next(ctx)
	c.strip(resp)
	c.requests.WithLabelValues("skip").Inc()
	return resp
}

// strip takes the added fields out of a response and returns its refs, and
// whether it may be cached: no errors, no deferred parts, some data.
func (c *Cache) strip(resp *graphql.Response) ([]tagstore.Ref, bool) {
	if resp == nil {
		return nil, false
	}
	data, refs, err := strip(resp.Data, c.opt.Types)
	if err != nil {
		c.log.Error("graphql response cache: cannot read the response", "err", err)
		return nil, false
	}
	resp.Data = data
	return refs, len(resp.Errors) == 0 && resp.HasNext == nil && len(data) > 0
}

// distinct counts the distinct refs.
func distinct(refs []tagstore.Ref) int {
	seen := make(map[tagstore.Ref]bool, len(refs))
	for _, r := range refs {
		seen[r] = true
	}
	return len(seen)
}

// key names a response: the prefix and a SHA-256 of the tenant, what
// Vary returned, the operation name, the normalized document and the
// variables. (The tenant is in the key's {tenant:…} prefix as well.)
func (c *Cache) key(tenant, vary string, rc *graphql.OperationContext) string {
	h := sha256.New()
	_, _ = io.WriteString(h, tenant)
	h.Write([]byte{0})
	_, _ = io.WriteString(h, strconv.Quote(vary)) // quoted: no vary can end where the operation name starts
	h.Write([]byte{0})
	_, _ = io.WriteString(h, rc.OperationName)
	h.Write([]byte{0})
	var doc bytes.Buffer
	formatter.NewFormatter(&doc).FormatQueryDocument(rc.Doc)
	_, _ = io.WriteString(h, strconv.Itoa(doc.Len())) // length first: no document ends where the variables start
	h.Write([]byte{0})
	h.Write(doc.Bytes())
	vars, _ := json.Marshal(rc.Variables) // map keys sorted: the same variables, the same bytes
	h.Write(vars)
	return c.opt.KeyPrefix + hex.EncodeToString(h.Sum(nil))
}

// tags are the tags of the domains of every mapped type the query selects:
// what a whole-tag invalidation of them (a creation, a recovery) must drop,
// and selected the type-level refs of those domains;
// lists are the type-level refs of the domains of the list fields it
// selects (whatever their depth): what any event of them must drop. A list
// of an unmapped type (a connection's edges) counts for the mapped types
// reached through it by fields of unmapped types (edges { node }).
func (c *Cache) tags(rc *graphql.OperationContext) (tags []string, lists, selected []tagstore.Ref) {
	// inList: under a list whose items are of an unmapped type, not yet
	// past a mapped one.
	var walk func(set ast.SelectionSet, inList bool, spread map[string]bool)
	walk = func(set ast.SelectionSet, inList bool, spread map[string]bool) {
		for _, sel := range set {
			switch sel := sel.(type) {
			case *ast.Field:
				below := false
				if sel.Definition != nil {
					typ := sel.Definition.Type.Name()
					c.addTags(&tags, &selected, typ)
					if list := inList || isList(sel.Definition.Type); list && c.mapped(typ) {
						c.addLists(&lists, typ)
					} else {
						below = list
					}
				}
				walk(sel.SelectionSet, below, spread)
			case *ast.InlineFragment:
				c.addTags(&tags, &selected, sel.TypeCondition)
				walk(sel.SelectionSet, inList, spread)
			case *ast.FragmentSpread:
				// Walked in its place for the lists it holds (its tags
				// come with the fragments below); once per path, as
				// fragments cannot form cycles in a valid document.
				if sel.Definition != nil && inList && !spread[sel.Name] {
					spread[sel.Name] = true
					walk(sel.Definition.SelectionSet, inList, spread)
					delete(spread, sel.Name)
				}
			}
		}
	}
	walk(rc.Operation.SelectionSet, false, map[string]bool{})
	for _, f := range rc.Doc.Fragments {
		c.addTags(&tags, &selected, f.TypeCondition)
		walk(f.SelectionSet, false, map[string]bool{})
	}
	return tags, lists, selected
}

// mapped reports whether a type is mapped to a domain, or may hold an
// object of one (a union or interface).
func (c *Cache) mapped(typ string) bool {
	found := false
	c.eachDomain(typ, func(string) { found = true })
	return found
}

// isList reports whether a field's type is a list, at any depth ([[T]]).
func isList(t *ast.Type) bool { return t != nil && t.Elem != nil }

func (c *Cache) addTags(tags *[]string, selected *[]tagstore.Ref, typ string) {
	c.eachDomain(typ, func(domain string) {
		if r := (tagstore.Ref{Domain: domain}); !slices.Contains(*selected, r) {
			*selected = append(*selected, r)
		}
		if d := c.opt.Matrix.Domains[domain]; d != nil {
			for _, tag := range d.Tags {
				if !slices.Contains(*tags, tag) {
					*tags = append(*tags, tag)
				}
			}
		}
	})
}

func (c *Cache) addLists(lists *[]tagstore.Ref, typ string) {
	c.eachDomain(typ, func(domain string) {
		if r := (tagstore.Ref{Domain: domain}); !slices.Contains(*lists, r) {
			*lists = append(*lists, r)
		}
	})
}

// eachDomain calls f with the domain of a mapped type, or of each mapped
// type a union or interface may hold.
func (c *Cache) eachDomain(typ string, f func(domain string)) {
	if domain, ok := c.opt.Types[typ]; ok {
		f(domain)
	}
	if def := c.schema.Types[typ]; def != nil && (def.Kind == ast.Interface || def.Kind == ast.Union) {
		for _, p := range c.schema.GetPossibleTypes(def) {
			if domain, ok := c.opt.Types[p.Name]; ok {
				f(domain)
			}
		}
	}
}

// strip copies a response's JSON without the added fields, in the same
// order, and returns the refs of the objects of mapped types in it: by id,
// or the type-level ref of the domain for one without a usable id.
func strip(data []byte, types map[string]string) ([]byte, []tagstore.Ref, error) {
	if len(data) == 0 {
		return data, nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	s := &stripper{dec: dec, types: types, seen: map[tagstore.Ref]bool{}}
	s.out.Grow(len(data))
	if err := s.value(); err != nil {
		return nil, nil, err
	}
	return s.out.Bytes(), s.refs, nil
}

type stripper struct {
	dec   *json.Decoder
	out   bytes.Buffer
	types map[string]string
	refs  []tagstore.Ref
	seen  map[tagstore.Ref]bool

	enc     *json.Encoder
	scratch bytes.Buffer
}

func (s *stripper) value() error {
	tok, err := s.dec.Token()
	if err != nil {
		return err
	}
	return s.write(tok)
}

func (s *stripper) write(tok json.Token) error {
	switch t := tok.(type) {
	case json.Delim:
		if t == '{' {
			return s.object()
		}
		s.out.WriteByte('[')
		for i := 0; s.dec.More(); i++ {
			if i > 0 {
				s.out.WriteByte(',')
			}
			if err := s.value(); err != nil {
				return err
			}
		}
		_, err := s.dec.Token() // ]
		s.out.WriteByte(']')
		return err
	case string:
		s.str(t)
	case json.Number:
		s.out.WriteString(t.String())
	case bool:
		s.out.WriteString(strconv.FormatBool(t))
	case nil:
		s.out.WriteString("null")
	}
	return nil
}

// str writes a JSON string as gqlgen does: <, > and & as they are.
func (s *stripper) str(v string) {
	s.scratch.Reset()
	if s.enc == nil {
		s.enc = json.NewEncoder(&s.scratch)
		s.enc.SetEscapeHTML(false)
	}
	_ = s.enc.Encode(v) // a string always encodes
	s.out.Write(bytes.TrimSuffix(s.scratch.Bytes(), []byte{'\n'}))
}

func (s *stripper) object() error {
	s.out.WriteByte('{')
	var typename, id string
	hasID := false
	first := true
	for s.dec.More() {
		tok, err := s.dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		switch k {
		case typenameAlias, idAlias:
			v, err := s.dec.Token()
			if err != nil {
				return err
			}
			if k == typenameAlias {
				typename, _ = v.(string)
			} else {
				switch v := v.(type) {
				case string:
					id, hasID = v, true
				case json.Number:
					id, hasID = v.String(), true
				}
			}
			continue
		}
		if !first {
			s.out.WriteByte(',')
		}
		first = false
		s.str(k)
		s.out.WriteByte(':')
		if err := s.value(); err != nil {
			return err
		}
	}
	if _, err := s.dec.Token(); err != nil { // }
		return err
	}
	s.out.WriteByte('}')
	if domain, ok := s.types[typename]; ok {
		ref := tagstore.Ref{Domain: domain, Entity: id}
		if _, _, err := names.ParseRef(ref.String()); !hasID || err != nil {
			ref = tagstore.Ref{Domain: domain} // no usable id: the type level of the domain
		}
		if !s.seen[ref] {
			s.seen[ref] = true
			s.refs = append(s.refs, ref)
		}
	}
	return nil
}
