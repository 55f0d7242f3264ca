package route

import (
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Route is a compiled model.Route.
type Route struct {
	Model   *model.Route
	Headers *Ops
	// Weighted holds the operations of each weighted cluster, in the
	// order of Model.Forward.Weighted.Clusters.
	Weighted []*Ops

	pathKind pathKind
	pattern  string // prefix, path or path-separated prefix
	fold     bool   // case-insensitive pattern
	re       *regexp.Regexp
	headers  []headerMatcher
	query    []queryMatcher
	grpc     bool
}

type pathKind uint8

const (
	pathAny pathKind = iota
	pathPrefix
	pathExact
	pathRegex
	pathSeparated
)

type headerMatcher struct {
	m *model.HeaderMatch
	// key is the canonical http.Header key, or a pseudo-header name.
	key   string
	value stringMatcher
}

type queryMatcher struct {
	m     *model.QueryMatch
	value stringMatcher
}

// stringMatcher is a model.StringMatch with its regex anchored.
type stringMatcher struct {
	m  *model.StringMatch
	re *regexp.Regexp
}

func compileRoute(mr *model.Route, res regexCache) *Route {
	r := &Route{Model: mr, Headers: compileOps(&mr.Headers), grpc: mr.Match.GRPC, fold: mr.Match.CaseInsensitive}
	m := &mr.Match
	switch {
	case m.Regex != nil:
		r.pathKind, r.re = pathRegex, res.full(m.Regex)
	case m.Path != "":
		r.pathKind, r.pattern = pathExact, m.Path
	case m.PathSeparatedPrefix != "":
		r.pathKind, r.pattern = pathSeparated, m.PathSeparatedPrefix
	case m.Prefix != "" && m.Prefix != "/":
		r.pathKind, r.pattern = pathPrefix, m.Prefix
	}
	for i := range m.Headers {
		h := &m.Headers[i]
		r.headers = append(r.headers, headerMatcher{m: h, key: headerKey(h.Name), value: compileString(h.Value, res)})
	}
	for i := range m.Query {
		q := &m.Query[i]
		r.query = append(r.query, queryMatcher{m: q, value: compileString(q.Value, res)})
	}
	if f := mr.Forward; f != nil && f.Weighted != nil {
		for i := range f.Weighted.Clusters {
			r.Weighted = append(r.Weighted, compileOps(&f.Weighted.Clusters[i].Headers))
		}
	}
	return r
}

// headerKey is a header name as http.Header keys it (pseudo-headers as
// they are).
func headerKey(name string) string {
	if strings.HasPrefix(name, ":") {
		return name
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

func compileString(m *model.StringMatch, res regexCache) stringMatcher {
	if m == nil {
		return stringMatcher{}
	}
	return stringMatcher{m: m, re: res.full(m.Regex)}
}

// Input is a request as the matchers read it.
type Input struct {
	Request *http.Request
	// Path is the raw :path, query included.
	Path string
	// query holds the first value of each query parameter, as sent.
	query map[string]string
}

// parseQuery splits the query as Envoy's route matching does
// (QueryParamsMulti::parseQueryString): pairs separated by "&", the name
// up to the first "=", the value after it ("" without one), nothing
// percent-decoded ("+" stays "+", ";" is no separator), the first value
// of a repeated name kept.
func (in *Input) parseQuery() {
	in.query = map[string]string{}
	_, q, ok := strings.Cut(in.Path, "?")
	if !ok {
		return
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		name, value, _ := strings.Cut(pair, "=")
		if _, dup := in.query[name]; !dup {
			in.query[name] = value
		}
	}
}

// Matches reports whether every condition of the route holds for in.
func (r *Route) Matches(in *Input) bool {
	path := in.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	switch r.pathKind {
	case pathPrefix:
		if !hasPrefix(path, r.pattern, r.fold) {
			return false
		}
	case pathExact:
		if !(len(path) == len(r.pattern) && hasPrefix(path, r.pattern, r.fold)) {
			return false
		}
	case pathSeparated:
		// The prefix must end at a path segment boundary.
		if !hasPrefix(path, r.pattern, r.fold) || (len(path) > len(r.pattern) && path[len(r.pattern)] != '/') {
			return false
		}
	case pathRegex:
		if !r.re.MatchString(path) {
			return false
		}
	}
	if r.grpc && !IsGRPC(in.Request) {
		return false
	}
	for i := range r.headers {
		if !r.headers[i].matches(in.Request) {
			return false
		}
	}
	if len(r.query) > 0 {
		if in.query == nil {
			in.parseQuery()
		}
		for i := range r.query {
			if !r.query[i].matches(in.query) {
				return false
			}
		}
	}
	return true
}

// MatchedPrefixLen is how much of the path (query excluded) a prefix
// rewrite replaces: the route's prefix, or the whole path for a path or
// regex match (Envoy's matched path for a safe_regex route is the whole
// path, so prefix_rewrite replaces all of it).
func (r *Route) MatchedPrefixLen(path string) (int, bool) {
	switch r.pathKind {
	case pathPrefix, pathSeparated:
		return len(r.pattern), true
	case pathExact:
		return len(r.pattern), true
	case pathRegex:
		return len(path), true
	case pathAny:
		// Prefix "/" or no path condition: "/" is what matched.
		if strings.HasPrefix(path, "/") {
			return 1, true
		}
	}
	return 0, false
}

// IsGRPC reports a gRPC request (content-type application/grpc...).
func IsGRPC(r *http.Request) bool {
	// Envoy's hasGrpcContentType: application/grpc, alone or followed by
	// "+" (a codec) or ";" (parameters). gRPC-Web is not gRPC.
	ct := header.Get(r.Header, "Content-Type")
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

func (h *headerMatcher) matches(r *http.Request) bool {
	v, ok := requestHeader(r, h.key)
	m := h.m
	if !ok && m.TreatMissingAsEmpty {
		v, ok = "", true
	}
	var res bool
	switch {
	case m.Present != nil:
		res = ok == *m.Present
	case !ok:
		// Every other kind of matcher fails on a missing header, inverted
		// or not: Envoy's invert_match applies to a value, and a missing
		// header has none (treat_missing_header_as_empty gives it one).
		return false
	case m.Range != nil:
		n, err := strconv.ParseInt(v, 10, 64)
		res = err == nil && n >= m.Range.Start && n < m.Range.End
	case m.Value != nil:
		res = h.value.match(v)
	default:
		// No condition: Envoy's present_match by default.
		res = ok
	}
	return res != m.Invert
}

// requestHeader is a header's value as Envoy matches it: several values
// joined by ",", and the pseudo-headers from the request line.
func requestHeader(r *http.Request, key string) (string, bool) {
	if key != "" && key[0] == ':' {
		switch key {
		case ":method":
			return r.Method, true
		case ":authority":
			return r.Host, true
		case ":path":
			return RequestPath(r), true
		case ":scheme":
			return RequestScheme(r), true
		}
		return "", false
	}
	vs, ok := r.Header[key]
	if !ok {
		return "", false
	}
	switch len(vs) {
	case 0:
		return "", true
	case 1:
		return vs[0], true
	}
	return strings.Join(vs, ","), true
}

func (q *queryMatcher) matches(values map[string]string) bool {
	v, ok := values[q.m.Name]
	if !ok {
		return false
	}
	// No value condition: present_match (or no condition, which Envoy
	// treats the same).
	return q.m.Value == nil || q.value.match(v)
}

func (s *stringMatcher) match(v string) bool {
	m := s.m
	if m == nil {
		return true
	}
	kind := m.Kind
	if kind == "" {
		kind = inferKind(m)
	}
	switch kind {
	case "exact":
		if m.IgnoreCase {
			return equalFoldASCII(v, m.Exact)
		}
		return v == m.Exact
	case "prefix":
		return hasPrefix(v, m.Prefix, m.IgnoreCase)
	case "suffix":
		if len(v) < len(m.Suffix) {
			return false
		}
		tail := v[len(v)-len(m.Suffix):]
		if m.IgnoreCase {
			return equalFoldASCII(tail, m.Suffix)
		}
		return tail == m.Suffix
	case "contains":
		if m.IgnoreCase {
			return containsFoldASCII(v, m.Contains)
		}
		return strings.Contains(v, m.Contains)
	case "regex":
		return s.re != nil && s.re.MatchString(v)
	}
	return false
}

// inferKind reads the kind from the one field set, for matchers built
// without Kind.
func inferKind(m *model.StringMatch) string {
	switch {
	case m.Regex != nil:
		return "regex"
	case m.Prefix != "":
		return "prefix"
	case m.Suffix != "":
		return "suffix"
	case m.Contains != "":
		return "contains"
	}
	return "exact"
}

func hasPrefix(s, prefix string, fold bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if fold {
		return equalFoldASCII(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

// HeaderMatchers are compiled header conditions for filters that match on
// headers of their own (fault's headers).
type HeaderMatchers []headerMatcher

// CompileHeaders compiles header conditions; all must hold.
func CompileHeaders(hs []model.HeaderMatch) HeaderMatchers {
	res := regexCache{}
	var out HeaderMatchers
	for i := range hs {
		h := &hs[i]
		out = append(out, headerMatcher{m: h, key: headerKey(h.Name), value: compileString(h.Value, res)})
	}
	return out
}

// Match reports whether every condition holds for r (true when empty).
func (hs HeaderMatchers) Match(r *http.Request) bool {
	for i := range hs {
		if !hs[i].matches(r) {
			return false
		}
	}
	return true
}

// StringMatcher is a compiled model.StringMatch (regex anchored), for
// filters that match strings of their own (CORS origins).
type StringMatcher struct{ s stringMatcher }

// CompileString compiles m.
func CompileString(m *model.StringMatch) StringMatcher {
	return StringMatcher{compileString(m, regexCache{})}
}

// Match reports whether v matches.
func (s StringMatcher) Match(v string) bool { return s.s.match(v) }
