package route

import (
	"net"
	"strconv"
	"strings"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// RewritePath applies a forward action's prefix or regex rewrite to a raw
// :path (query included) and returns the new :path; the query is kept.
func (r *Route) RewritePath(path string) string {
	f := r.Model.Forward
	if f == nil {
		return path
	}
	p, query := path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		p, query = path[:i], path[i:]
	}
	switch {
	case f.PrefixRewrite != "":
		n, ok := r.MatchedPrefixLen(p)
		if !ok || n > len(p) {
			return path
		}
		p = f.PrefixRewrite + p[n:]
	case f.RegexRewrite != nil && f.RegexRewrite.Pattern != nil:
		p = f.RegexRewrite.Pattern.ReplaceAllString(p, f.RegexRewrite.Substitution)
	default:
		return path
	}
	return p + query
}

// RedirectLocation builds the Location of a redirect for a request with
// the given scheme, authority and raw :path, as Envoy does: each part the
// action does not replace comes from the request; a path redirect carries
// its own query when it has one, otherwise the request's query is kept
// unless StripQuery.
func (r *Route) RedirectLocation(scheme, authority, path string) string {
	a := r.Model.Redirect
	p, query := path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		p, query = path[:i], path[i:]
	}
	own := false // the query is path_redirect's: strip_query leaves it
	switch {
	case a.Path != "":
		p = a.Path
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p, query, own = p[:i], p[i:], true
		}
	case a.PrefixRewrite != "":
		if n, ok := r.MatchedPrefixLen(p); ok && n <= len(p) {
			p = a.PrefixRewrite + p[n:]
		}
	}
	if a.StripQuery && !own {
		query = ""
	}
	host, port := splitHostPort(authority)
	if a.Host != "" {
		host, port = splitHostPort(a.Host)
	}
	if a.Scheme != "" {
		// Changing scheme: a default port of the old scheme does not carry
		// over.
		if port == "80" || port == "443" {
			port = ""
		}
		scheme = a.Scheme
	}
	if a.Port != 0 {
		port = strconv.FormatUint(uint64(a.Port), 10)
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return scheme + "://" + host + p + query
}

// RedirectStatus is the redirect's response code (301 when unset).
func RedirectStatus(a *model.RedirectAction) int {
	switch a.Status {
	case 301, 302, 303, 307, 308:
		return a.Status
	}
	return 301
}

// splitHostPort splits an authority into host and port; a bare host
// (IPv6 in brackets or not) has an empty port.
func splitHostPort(authority string) (string, string) {
	if h, p, err := net.SplitHostPort(authority); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]"), ""
}
