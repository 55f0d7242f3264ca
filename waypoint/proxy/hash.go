package proxy

import (
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// hashKey is the route's hash_policy applied to the request as the
// client sent it (the route's header operations and rewrite come after),
// as Envoy's HashPolicyImpl: each
// policy that yields a value is folded in (the hash so far rotated left
// by one, then xor), up to the first terminal policy once there is a
// hash. No policy yielding a value: no hash (the cluster's load balancer
// picks as if it had none). A cookie policy may make a cookie, kept in
// q.setCookies for the answer.
func (q *request) hashKey() (uint64, bool) {
	var h uint64
	have := false
	for i := range q.rt.Model.Forward.Hash {
		p := &q.rt.Model.Forward.Hash[i]
		if v, ok := q.evalHash(p); ok {
			h = bits.RotateLeft64(h, 1) ^ v // h is 0 before the first
			have = true
		}
		if p.Terminal && have {
			break
		}
	}
	return h, have
}

func (q *request) evalHash(p *model.HashPolicy) (uint64, bool) {
	switch {
	case p.Header != "":
		if p.Header[0] == ':' {
			// Envoy's header map holds the pseudo-headers; Go keeps them
			// in the request's own fields.
			if v, ok := q.pseudoHeader(p.Header); ok {
				return xxhash.Sum64String(v), true
			}
			return 0, false
		}
		vs := q.r.Header[p.Header]
		switch len(vs) {
		case 0:
			return 0, false
		case 1:
			return xxhash.Sum64String(vs[0]), true
		}
		// Several fields: the same hash whatever their order.
		sorted := slices.Clone(vs)
		slices.Sort(sorted)
		d := xxhash.New()
		for _, v := range sorted {
			d.WriteString(v)
		}
		return d.Sum64(), true
	case p.Cookie != nil:
		if v := cookieValue(q.r.Header["Cookie"], p.Cookie.Name); v != "" {
			return xxhash.Sum64String(v), true
		}
		if p.Cookie.TTL == nil {
			return 0, false
		}
		v := q.makeCookie(p.Cookie)
		return xxhash.Sum64String(v), true
	case p.SourceIP:
		a := q.remoteAddr()
		if !a.IsValid() {
			return 0, false
		}
		return xxhash.Sum64String(a.Addr().String()), true
	case p.QueryParameter != "":
		if v, ok := queryValue(q.path, p.QueryParameter); ok {
			return xxhash.Sum64String(v), true
		}
	}
	return 0, false
}

// pseudoHeader is a pseudo-header's value as Envoy's router has it when
// it picks the first host: the authority and path as the HCM leaves them
// (the route's rewrites come after).
func (q *request) pseudoHeader(name string) (string, bool) {
	switch name {
	case ":authority":
		return q.r.Host, q.r.Host != ""
	case ":path":
		return q.path, true
	case ":method":
		return q.r.Method, true
	case ":scheme":
		return route.RequestScheme(q.r), true
	}
	return "", false
}

// cookieValue finds a cookie in the request's Cookie fields as Envoy's
// Utility::parseCookieValue: pairs split at ";", leading spaces skipped,
// the name up to the first "=", the value after it without surrounding
// double quotes; the first match wins.
func cookieValue(fields []string, name string) string {
	for _, f := range fields {
		for f != "" {
			var pair string
			pair, f, _ = strings.Cut(f, ";")
			pair = strings.TrimLeft(pair, " ")
			k, v, ok := strings.Cut(pair, "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

// queryValue is the first value of a query parameter as sent, as Envoy's
// QueryParamsMulti::parseQueryString reads it (the route matcher's
// reading too): pairs split at "&", the name up to the first "=",
// nothing decoded; a name without "=" has the value "".
func queryValue(path, name string) (string, bool) {
	_, query, ok := strings.Cut(path, "?")
	if !ok {
		return "", false
	}
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		if k, v, _ := strings.Cut(pair, "="); k == name {
			return v, true
		}
	}
	return "", false
}

// makeCookie makes the value of a cookie the request did not have and
// keeps its Set-Cookie for the answer, as Envoy's router: the value is the
// hex xxHash64 of the client's and the original destination's addresses,
// the same for every request of a connection (requests racing on it get
// one cookie), and the field is name="value"[; Max-Age=n][; Path=p]
// [; attributes]; HttpOnly.
func (q *request) makeCookie(c *model.HashCookie) string {
	v := strconv.FormatUint(xxhash.Sum64String(q.cs.info.Source.String()+q.cs.info.Destination.String()), 16)
	v = strings.Repeat("0", 16-len(v)) + v
	var b strings.Builder
	b.WriteString(c.Name)
	b.WriteString(`="`)
	b.WriteString(v)
	b.WriteByte('"')
	if secs := *c.TTL; secs != 0 {
		b.WriteString("; Max-Age=")
		b.WriteString(strconv.FormatInt(secs, 10))
	}
	if c.Path != "" {
		b.WriteString("; Path=")
		b.WriteString(c.Path)
	}
	for _, a := range c.Attributes {
		b.WriteString("; ")
		b.WriteString(a.Name)
		if a.Value != "" {
			b.WriteByte('=')
			b.WriteString(a.Value)
		}
	}
	b.WriteString("; HttpOnly")
	q.setCookies = append(q.setCookies, b.String())
	return v
}

// streamRemote is the stream's client address as Envoy's HCM sets it
// (ConnectionManagerUtility::mutateRequestHeaders, then the stream's
// downstream remote address): the connection's (the PROXY header's
// source) with use_remote_address; without it (istiod's waypoint) the
// default XFF original IP detection's, the last X-Forwarded-For address
// once xff_num_trusted_hops more are skipped from the right, with port 0
// as Envoy parses it, and the connection's only when that is not an IP
// address. The source-IP hash policy, %DOWNSTREAM_REMOTE_ADDRESS% and
// the access log's downstream_remote_address read it.
func (q *request) streamRemote() netip.AddrPort {
	if hcm := q.ch.hcm; hcm != nil && !hcm.UseRemoteAddress {
		if a, ok := lastForwardedFor(q.r.Header["X-Forwarded-For"], hcm.XffNumTrustedHops); ok {
			return netip.AddrPortFrom(a, 0)
		}
	}
	return q.cs.info.Source
}

// remoteAddr is streamRemote as the request's routing found it, the
// connection's client before that (a chain's deny).
func (q *request) remoteAddr() netip.AddrPort {
	if q.remote.IsValid() {
		return q.remote
	}
	return q.cs.info.Source
}

// lastForwardedFor is Envoy's Utility::getLastAddressFromXFF: the fields
// are one comma-separated list (Envoy keeps X-Forwarded-For as one
// header, several fields joined), skip entries are dropped from its end,
// and the last one left, without surrounding whitespace, must be an IP
// address.
func lastForwardedFor(fields []string, skip uint32) (netip.Addr, bool) {
	if len(fields) == 0 {
		return netip.Addr{}, false
	}
	list := fields[0]
	if len(fields) > 1 {
		list = strings.Join(fields, ",")
	}
	for range skip {
		i := strings.LastIndexByte(list, ',')
		if i < 0 {
			return netip.Addr{}, false
		}
		list = list[:i]
	}
	if i := strings.LastIndexByte(list, ','); i >= 0 {
		list = list[i+1:]
	}
	a, err := netip.ParseAddr(strings.TrimSpace(list))
	return a, err == nil
}
