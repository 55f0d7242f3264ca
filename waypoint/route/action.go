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
	p, _ := r.RewritePathOK(path)
	return p
}

// RewritePathOK is RewritePath, also saying whether a rewrite took place:
// Envoy's router (RouteEntryImplBase::finalizePathHeader) sets :path and
// x-envoy-original-path only when its rewrite gives a path, which a
// prefix rewrite always does and a regex rewrite does unless it leaves
// nothing (even when it gives the path back unchanged).
func (r *Route) RewritePathOK(path string) (string, bool) {
	f := r.Model.Forward
	if f == nil {
		return path, false
	}
	p, query := path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		p, query = path[:i], path[i:]
	}
	switch {
	case f.PrefixRewrite != "":
		n, ok := r.MatchedPrefixLen(p)
		if !ok || n > len(p) {
			return path, false
		}
		p = f.PrefixRewrite + p[n:]
	case f.RegexRewrite != nil && f.RegexRewrite.Pattern != nil:
		p = f.RegexRewrite.Pattern.ReplaceAllString(p, f.RegexRewrite.Substitution)
		if p == "" {
			// Envoy takes an empty result for a failed rewrite and keeps
			// the path.
			return path, false
		}
	default:
		return path, false
	}
	return p + query, true
}

// RedirectLocation builds the Location of a redirect for a request with
// the given scheme, authority and raw :path, as Envoy does: each part the
// action does not replace comes from the request; a path redirect carries
// its own query when it has one, otherwise the request's query is kept
// unless StripQuery. The scheme stands for x-forwarded-proto too (see
// RedirectLocationProto).
func (r *Route) RedirectLocation(scheme, authority, path string) string {
	return r.RedirectLocationProto(scheme, scheme, authority, path)
}

// RedirectLocationProto is RedirectLocation with the request's :scheme
// (RequestScheme) and its x-forwarded-proto apart, as Envoy's
// Http::Utility::newUri reads them: the Location keeps the :scheme, and
// the request's port is dropped on a scheme change when it is the
// default port of the scheme x-forwarded-proto names (processRequestHost:
// "http://foo.com:80 won't have the port stripped when served over TLS").
func (r *Route) RedirectLocationProto(scheme, forwardedProto, authority, path string) string {
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
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	newScheme := scheme
	if a.Scheme != "" {
		newScheme = a.Scheme
	}
	var port string
	if a.Port != 0 {
		port = ":" + strconv.FormatUint(uint64(a.Port), 10)
	}
	var host string
	if a.Host != "" {
		// host_redirect replaces the authority, port and all (when
		// port_redirect is set too, its port replaces the one in it).
		host = a.Host
		if port != "" {
			h, _ := splitHostPort(host)
			host = h
		}
		if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
			if h, _, err := net.SplitHostPort(host); err != nil || strings.Contains(h, ":") {
				host = "[" + host + "]"
			}
		}
	} else {
		// Envoy keeps the request's authority as sent, dropping its port
		// only for port_redirect, or when the scheme changes and the port
		// is the request's (x-forwarded-proto's) scheme's default
		// (http://h:80 -> https://h). A default port is not dropped
		// otherwise.
		host = authority
		if i := portStart(host); i >= 0 {
			reqPort := host[i:]
			drop := port != ""
			if newScheme != forwardedProto {
				drop = drop || (strings.EqualFold(forwardedProto, "https") && reqPort == ":443") ||
					(strings.EqualFold(forwardedProto, "http") && reqPort == ":80")
			}
			if drop {
				host = host[:i]
			}
		}
	}
	return newScheme + "://" + host + port + p + query
}

// portStart is the index of the ":" before an authority's port, or -1.
func portStart(authority string) int {
	if strings.HasPrefix(authority, "[") {
		if i := strings.LastIndex(authority, "]:"); i >= 0 {
			return i + 1
		}
		return -1
	}
	return strings.LastIndexByte(authority, ':')
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
