package route

import "strings"

// NormalizePath is what Envoy's HCM does to :path before routing when
// normalize_path and merge_slashes are set (istiod sets normalize_path on
// every waypoint chain): percent-encoded unreserved characters are
// decoded and the other escapes' hex made upper case, "." and ".."
// segments are resolved (never above the root), and with mergeSlashes
// runs of "/" become one. The query is left alone. Routing on the raw path
// would let "/admin/../public" or "/%61dmin" slip past a prefix route
// (and, in the next issue, past L7 policy).
func NormalizePath(p string, normalize, mergeSlashes bool) string {
	if !normalize && !mergeSlashes {
		return p
	}
	path, query, hasQuery := strings.Cut(p, "?")
	if normalize {
		path = removeDotSegments(decodeUnreserved(path))
	}
	if mergeSlashes && strings.Contains(path, "//") {
		var b strings.Builder
		b.Grow(len(path))
		for i := 0; i < len(path); i++ {
			if path[i] == '/' && i > 0 && path[i-1] == '/' {
				continue
			}
			b.WriteByte(path[i])
		}
		path = b.String()
	}
	if hasQuery {
		return path + "?" + query
	}
	return path
}

// decodeUnreserved decodes %XX escapes of unreserved characters (RFC 3986
// 2.3) and upper-cases the hex of the others, which is the form RFC 3986
// 6.2.2 calls normal.
func decodeUnreserved(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' || i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			b.WriteByte(c)
			continue
		}
		v := unhex(p[i+1])<<4 | unhex(p[i+2])
		if isUnreserved(v) {
			b.WriteByte(v)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex(p[i+1]))
			b.WriteByte(upperHex(p[i+2]))
		}
		i += 2
	}
	return b.String()
}

// removeDotSegments is RFC 3986 5.2.4 for an absolute path.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			// Never above the root (out[0] is the empty segment before it).
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if r == "" || r[0] != '/' {
		r = "/" + r
	}
	return r
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// UnescapeSlashes turns the %2F and %5C escapes (either case) of a path's
// path part into "/" and "\\", as Envoy's path_with_escaped_slashes_action
// does; the query is left alone. changed says whether there were any.
func UnescapeSlashes(p string) (out string, changed bool) {
	path, query, hasQuery := strings.Cut(p, "?")
	if !strings.Contains(path, "%") {
		return p, false
	}
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		if path[i] == '%' && i+2 < len(path) {
			switch path[i+1 : i+3] {
			case "2F", "2f":
				b.WriteByte('/')
				i += 2
				changed = true
				continue
			case "5C", "5c":
				b.WriteByte('\\')
				i += 2
				changed = true
				continue
			}
		}
		b.WriteByte(path[i])
	}
	if !changed {
		return p, false
	}
	out = b.String()
	if hasQuery {
		out += "?" + query
	}
	return out, true
}
