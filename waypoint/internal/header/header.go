// Package header reads header maps by canonical name without
// canonicalizing it again.
//
// http.Header.Get canonicalizes its key on every call: validating and
// case-checking each byte cost ~25 ns, and the waypoint's HTTP/1.1 path
// makes about fifteen such lookups per request with names that are
// constants already in canonical form. Every map the waypoint reads holds
// canonical names: its own parser, net/http and the route's header
// operations all canonicalize when they write.
package header

import "net/http"

// Get returns the first value of the field named key, which must be in
// canonical form ("Content-Type"), or "" when there is none.
func Get(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
