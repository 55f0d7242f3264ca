// Package route decides what an HTTP request gets from a route table: the
// virtual host by authority, the first route that matches, and the
// changes its action makes to the request and the response (path and host
// rewrites, redirect locations, header operations), with Envoy's semantics.
//
// A model.RouteTable is compiled once per snapshot (Compile): domain
// indexes, anchored regexes and canonical header names are built there, so
// matching a request allocates nothing.
package route

import (
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Table is a compiled model.RouteTable. It is immutable and safe for
// concurrent use.
type Table struct {
	Model *model.RouteTable
	// exact domains, lower case, as written (with port when given).
	exact map[string]*VirtualHost
	// suffix ("*.x") and prefix ("x.*") wildcards without the star,
	// longest first: Envoy prefers the longest wildcard.
	suffix, prefix []wildcard
	any            *VirtualHost
	// ignorePort: match the authority without its port.
	ignorePort bool
	// Headers are the table-level operations.
	Headers *Ops
}

type wildcard struct {
	part string
	vh   *VirtualHost
}

// VirtualHost is a compiled model.VirtualHost.
type VirtualHost struct {
	Model  *model.VirtualHost
	Routes []*Route
	// Headers are the virtual host's operations.
	Headers *Ops
	// needQuery: some route matches on query parameters, so the query is
	// parsed for this host's requests (and only for them).
	needQuery bool
}

// Compile builds the lookup structures of rt. A nil table compiles to nil.
func Compile(rt *model.RouteTable) *Table {
	if rt == nil {
		return nil
	}
	t := &Table{Model: rt, exact: map[string]*VirtualHost{}, Headers: compileOps(&rt.Headers), ignorePort: rt.IgnorePortInHostMatching}
	res := regexCache{}
	for _, mv := range rt.VirtualHosts {
		vh := &VirtualHost{Model: mv, Headers: compileOps(&mv.Headers)}
		for _, mr := range mv.Routes {
			r := compileRoute(mr, res)
			if len(r.query) > 0 {
				vh.needQuery = true
			}
			vh.Routes = append(vh.Routes, r)
		}
		// Envoy rejects a domain listed twice; the first one wins here.
		for _, d := range mv.Domains {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				if t.any == nil {
					t.any = vh
				}
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, wildcard{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefix = append(t.prefix, wildcard{d[:len(d)-1], vh})
			default:
				if _, dup := t.exact[d]; !dup {
					t.exact[d] = vh
				}
			}
		}
	}
	byLen := func(a, b wildcard) int { return len(b.part) - len(a.part) }
	slices.SortStableFunc(t.suffix, byLen)
	slices.SortStableFunc(t.prefix, byLen)
	return t
}

// VirtualHost finds the virtual host for an authority in Envoy's order:
// exact domain, then the longest suffix wildcard, then the longest prefix
// wildcard, then "*". A wildcard stands for at least one character. Like
// Envoy (without strip_any_host_port) the authority is matched as sent,
// port included (istiod lists each domain with and without its port),
// unless the table says ignore_port_in_host_matching.
func (t *Table) VirtualHost(authority string) *VirtualHost {
	if t == nil {
		return nil
	}
	if t.ignorePort {
		if i := portStart(authority); i >= 0 {
			authority = authority[:i]
		}
	}
	host := strings.ToLower(authority)
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffix {
		if len(host) > len(w.part) && strings.HasSuffix(host, w.part) {
			return w.vh
		}
	}
	for _, w := range t.prefix {
		if len(host) > len(w.part) && strings.HasPrefix(host, w.part) {
			return w.vh
		}
	}
	return t.any
}

// Match finds the virtual host and the first route of it that matches r.
// Either may be nil: no virtual host, or no route in it (both are Envoy's
// NR, 404).
func (t *Table) Match(r *http.Request) (*VirtualHost, *Route) {
	vh := t.VirtualHost(r.Host)
	if vh == nil {
		return nil, nil
	}
	in := Input{Request: r, Path: RequestPath(r)}
	if vh.needQuery {
		in.parseQuery()
	}
	for _, rt := range vh.Routes {
		if rt.Matches(&in) {
			return vh, rt
		}
	}
	return vh, nil
}

// RequestScheme is the request's :scheme as Envoy's connection manager
// gives it to an HTTP/1 request (ConnectionManagerUtility::
// mutateRequestHeaders): an absolute-form target's scheme (the codec's,
// lower-cased), else x-forwarded-proto when it names http or https (the
// waypoint sets it to http when the client sent none, as Envoy does),
// else the connection's, which for the waypoint is always plaintext. An
// h2c request's own :scheme is not kept by net/http's server (it takes
// only http or https), so x-forwarded-proto decides for it too.
func RequestScheme(r *http.Request) string {
	if r.URL != nil && r.URL.Scheme != "" {
		return strings.ToLower(r.URL.Scheme)
	}
	var xfp string
	switch vs := r.Header["X-Forwarded-Proto"]; len(vs) {
	case 0:
	case 1:
		xfp = vs[0]
	default:
		// Envoy joins repeated values of this header: no longer a scheme.
		xfp = strings.Join(vs, ",")
	}
	switch {
	case strings.EqualFold(xfp, "https"):
		return "https"
	case strings.EqualFold(xfp, "http"):
		return "http"
	}
	return "http"
}

// RequestPath is the request's :path as the client sent it (not decoded,
// query included), which is what Envoy matches and rewrites.
func RequestPath(r *http.Request) string {
	if p := r.RequestURI; p != "" && p[0] == '/' {
		return p
	}
	if r.URL == nil {
		return "/"
	}
	return r.URL.RequestURI()
}

// regexCache shares the anchored form of a regex used in several places.
type regexCache map[*regexp.Regexp]*regexp.Regexp

// full returns re anchored at both ends: Envoy's safe_regex matchers must
// match the whole value, and a leftmost match at 0 is not that (for "a|ab"
// on "ab" it stops at "a").
func (c regexCache) full(re *regexp.Regexp) *regexp.Regexp {
	if re == nil {
		return nil
	}
	if a, ok := c[re]; ok {
		return a
	}
	a := regexp.MustCompile(`^(?:` + re.String() + `)$`)
	c[re] = a
	return a
}
