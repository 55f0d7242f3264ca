package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// hashEngine is a waypoint whose one route hashes by policies onto a
// ring-hash cluster of four endpoints answering their names.
func hashEngine(t *testing.T, lb string, policies ...model.HashPolicy) *http.Client {
	t.Helper()
	rt := fwd("c")
	rt.Forward.Hash = policies
	return hashRouteEngine(t, lb, rt)
}

// hashRouteEngine is hashEngine with the route given.
func hashRouteEngine(t *testing.T, lb string, rt *model.Route) *http.Client {
	t.Helper()
	var names [4]string
	var eps []netip.AddrPort
	for i := range names {
		names[i] = "b" + strconv.Itoa(i)
		name := names[i]
		eps = append(eps, backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
	}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(rt), false, &model.Cluster{Name: "c", LB: lb, Endpoints: endpoints(eps...)}))
	return client(te.addr("main"))
}

// reached does a GET and returns the endpoint that answered and its
// Set-Cookie fields.
func reached(t *testing.T, c *http.Client, url string, hdr ...string) (string, []string) {
	t.Helper()
	code, body, resp := get(t, c, url, hdr...)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	return body, resp.Header.Values("Set-Cookie")
}

// Envoy's cookie hash policy with a TTL (istiod's consistentHash
// httpCookie, sticky sessions): a request without the cookie gets one
// (name="hex of xxHash64(client address + original destination)";
// Max-Age; Path; attributes; HttpOnly), and every request carrying it
// reaches the endpoint its value hashes to, quoted or not.
func TestCookieHashPolicyMakesAndFollowsTheCookie(t *testing.T) {
	ttl := int64(3600)
	for _, lb := range []string{"ring_hash", "maglev"} {
		t.Run(lb, func(t *testing.T) {
			c := hashEngine(t, lb, model.HashPolicy{Cookie: &model.HashCookie{Name: "sess", TTL: &ttl, Path: "/",
				Attributes: []model.CookieAttribute{{Name: "SameSite", Value: "Lax"}}}})
			first, set := reached(t, c, "http://svc/")
			v := fmt.Sprintf("%016x", xxhash.Sum64String(clientAddr.String()+serviceVIP.String()))
			want := `sess="` + v + `"; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly`
			if len(set) != 1 || set[0] != want {
				t.Fatalf("Set-Cookie %q, want %q", set, want)
			}
			for i := range 10 {
				cookie := "other=1; sess=" + v
				if i%2 == 1 {
					cookie = `sess="` + v + `"`
				}
				got, set := reached(t, c, "http://svc/", "Cookie", cookie)
				if got != first || len(set) != 0 {
					t.Fatalf("with Cookie %q: reached %s (the cookie's request %s), Set-Cookie %q", cookie, got, first, set)
				}
			}
			seen := map[string]bool{}
			for i := range 40 {
				got, _ := reached(t, c, "http://svc/", "Cookie", "sess=user"+strconv.Itoa(i))
				seen[got] = true
			}
			if len(seen) < 2 {
				t.Errorf("40 sessions all reached %v: the cookie is not hashed", seen)
			}
		})
	}
}

// Without a TTL no cookie is made (Envoy: no hash from this policy); with
// a TTL of 0 the made cookie is a session cookie (no Max-Age).
func TestCookieHashPolicyTTL(t *testing.T) {
	c := hashEngine(t, "ring_hash", model.HashPolicy{Cookie: &model.HashCookie{Name: "sess"}})
	if _, set := reached(t, c, "http://svc/"); len(set) != 0 {
		t.Errorf("no TTL: Set-Cookie %q", set)
	}
	zero := int64(0)
	c = hashEngine(t, "ring_hash", model.HashPolicy{Cookie: &model.HashCookie{Name: "sess", TTL: &zero}})
	_, set := reached(t, c, "http://svc/")
	if len(set) != 1 || strings.Contains(set[0], "Max-Age") || !strings.HasSuffix(set[0], `"; HttpOnly`) {
		t.Errorf("TTL 0: Set-Cookie %q", set)
	}
	// The longest TTL a protobuf Duration holds, whole.
	long := int64(315576000000)
	c = hashEngine(t, "ring_hash", model.HashPolicy{Cookie: &model.HashCookie{Name: "sess", TTL: &long}})
	if _, set := reached(t, c, "http://svc/"); len(set) != 1 || !strings.Contains(set[0], "; Max-Age=315576000000;") {
		t.Errorf("TTL of 10000 years: Set-Cookie %q", set)
	}
}

// Envoy's query_parameter hash policy (istiod's httpQueryParameterName):
// the parameter's first value, as sent, picks the endpoint.
func TestQueryParameterHashPolicy(t *testing.T) {
	c := hashEngine(t, "ring_hash", model.HashPolicy{QueryParameter: "user"})
	seen := map[string]bool{}
	for i := range 40 {
		u := "u" + strconv.Itoa(i)
		first, _ := reached(t, c, "http://svc/a?user="+u)
		seen[first] = true
		for _, url := range []string{"http://svc/b?x=1&user=" + u, "http://svc/a?user=" + u + "&user=other"} {
			if got, _ := reached(t, c, url); got != first {
				t.Fatalf("%s reached %s, ?user=%s reached %s", url, got, u, first)
			}
		}
	}
	if len(seen) < 2 {
		t.Errorf("40 users all reached %v: the parameter is not hashed", seen)
	}
}

// Several policies fold their hashes together, and a terminal policy
// that gave a hash ends the list (Envoy's HashPolicyImpl::generateHash).
func TestHashPoliciesCombineUpToTheTerminal(t *testing.T) {
	c := hashEngine(t, "ring_hash", model.HashPolicy{Header: "X-A", Terminal: true}, model.HashPolicy{Header: "X-B"})
	first, _ := reached(t, c, "http://svc/", "X-A", "a", "X-B", "0")
	for i := range 20 {
		if got, _ := reached(t, c, "http://svc/", "X-A", "a", "X-B", strconv.Itoa(i)); got != first {
			t.Fatalf("x-b %d moved the request (%s, not %s) past a terminal x-a", i, got, first)
		}
	}
	seen := map[string]bool{}
	for i := range 20 {
		// No x-a: x-b alone decides.
		got, _ := reached(t, c, "http://svc/", "X-B", strconv.Itoa(i))
		seen[got] = true
	}
	if len(seen) < 2 {
		t.Errorf("without x-a, 20 x-b values all reached %v", seen)
	}

	c = hashEngine(t, "ring_hash", model.HashPolicy{Header: "X-A"}, model.HashPolicy{Header: "X-B"})
	seen = map[string]bool{}
	for i := range 20 {
		got, _ := reached(t, c, "http://svc/", "X-A", "a", "X-B", strconv.Itoa(i))
		seen[got] = true
	}
	if len(seen) < 2 {
		t.Errorf("not terminal: x-b did not count (%v)", seen)
	}
}

// A header sent as several fields hashes the same whatever their order
// (Envoy sorts the values before hashing them together).
func TestHeaderHashPolicySeveralValues(t *testing.T) {
	c := hashEngine(t, "ring_hash", model.HashPolicy{Header: "X-User"})
	for i := range 20 {
		a, b := "a"+strconv.Itoa(i), "b"+strconv.Itoa(i)
		ab, _ := reached(t, c, "http://svc/", "X-User", a, "X-User", b)
		ba, _ := reached(t, c, "http://svc/", "X-User", b, "X-User", a)
		if ab != ba {
			t.Fatalf("x-user %s,%s reached %s; %s,%s reached %s", a, b, ab, b, a, ba)
		}
	}
}

// Only a hashing load balancer asks for the hash (Envoy's
// computeHashKey): a round-robin cluster makes no cookie.
func TestCookieMadeOnlyForAHashingCluster(t *testing.T) {
	ttl := int64(3600)
	c := hashEngine(t, "round_robin", model.HashPolicy{Cookie: &model.HashCookie{Name: "sess", TTL: &ttl}})
	if _, set := reached(t, c, "http://svc/"); len(set) != 0 {
		t.Errorf("round robin: Set-Cookie %q", set)
	}
}

// The source-IP policy hashes Envoy's downstream remote address of the
// stream: with use_remote_address false (istiod's waypoint HCM) that is
// the last X-Forwarded-For address (past xff_num_trusted_hops), the
// connection's only when there is none that parses
// (ConnectionManagerUtility::mutateRequestHeaders, the default XFF
// original IP detection). Behind a gateway that appends the client's
// address, clients keep spreading instead of all landing on one pod.
func TestSourceIPHashPolicyFollowsForwardedFor(t *testing.T) {
	build := func(useRemote bool, hops uint32) *http.Client {
		var eps []netip.AddrPort
		for i := range 4 {
			name := "b" + strconv.Itoa(i)
			eps = append(eps, backend(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
		}
		rt := fwd("c")
		rt.Forward.Hash = []model.HashPolicy{{SourceIP: true}}
		snap := httpSnapshot(oneRoute(rt), false, &model.Cluster{Name: "c", LB: "ring_hash", Endpoints: endpoints(eps...)})
		hcm := snap.Listeners[0].Chains["http"].HTTP
		hcm.UseRemoteAddress, hcm.XffNumTrustedHops = useRemote, hops
		te := newTestEngine(t, Options{})
		te.apply(snap)
		return client(te.addr("main"))
	}

	c := build(false, 0)
	none, _ := reached(t, c, "http://svc/")
	seen := map[string]bool{}
	for i := range 30 {
		ip := "192.168.7." + strconv.Itoa(i)
		got, _ := reached(t, c, "http://svc/", "X-Forwarded-For", ip)
		seen[got] = true
		for _, xff := range []string{"203.0.113.1, " + ip, " 203.0.113.1 ," + ip + " "} {
			if again, _ := reached(t, c, "http://svc/", "X-Forwarded-For", xff); again != got {
				t.Fatalf("x-forwarded-for %q reached %s, %s reached %s", xff, again, ip, got)
			}
		}
		// Two fields are one list, as Envoy's inline header.
		if again, _ := reached(t, c, "http://svc/", "X-Forwarded-For", "203.0.113.1", "X-Forwarded-For", ip); again != got {
			t.Fatalf("x-forwarded-for in two fields ending %s reached %s, not %s", ip, again, got)
		}
	}
	if len(seen) < 2 {
		t.Errorf("30 forwarded clients all reached %v: the connection's address was hashed", seen)
	}
	for _, bad := range []string{"not-an-ip", "192.168.7.1,", "[::1]"} {
		if got, _ := reached(t, c, "http://svc/", "X-Forwarded-For", bad); got != none {
			t.Errorf("x-forwarded-for %q reached %s, not the connection's endpoint %s", bad, got, none)
		}
	}

	// One trusted hop: the address before the last one.
	c = build(false, 1)
	none, _ = reached(t, c, "http://svc/")
	for i := range 10 {
		ip := "192.168.7." + strconv.Itoa(i)
		a, _ := reached(t, c, "http://svc/", "X-Forwarded-For", ip+", 203.0.113.1")
		b, _ := reached(t, c, "http://svc/", "X-Forwarded-For", ip+", 203.0.113.2")
		if a != b {
			t.Fatalf("with one trusted hop, the last address moved %s: %s and %s", ip, a, b)
		}
	}
	if got, _ := reached(t, c, "http://svc/", "X-Forwarded-For", "192.168.7.3"); got != none {
		t.Errorf("one trusted hop, one address: reached %s, not the connection's endpoint %s", got, none)
	}

	// use_remote_address: the connection's address whatever XFF says.
	c = build(true, 0)
	none, _ = reached(t, c, "http://svc/")
	for i := range 20 {
		if got, _ := reached(t, c, "http://svc/", "X-Forwarded-For", "192.168.7."+strconv.Itoa(i)); got != none {
			t.Fatalf("use_remote_address: x-forwarded-for moved the request to %s from %s", got, none)
		}
	}
}

// A header policy naming a pseudo-header hashes the request's own value
// (Envoy keeps :authority, :path, :method and :scheme in its header map,
// so HeaderHashMethod finds them); Go keeps them out of Header.
func TestHeaderHashPolicyPseudoHeaders(t *testing.T) {
	for _, name := range []string{":authority", ":path"} {
		t.Run(name, func(t *testing.T) {
			c := hashEngine(t, "ring_hash", model.HashPolicy{Header: name})
			seen := map[string]bool{}
			for i := range 30 {
				host, path := "svc", "/"
				if name == ":authority" {
					host = "h" + strconv.Itoa(i)
				} else {
					path = "/p" + strconv.Itoa(i)
				}
				first, _ := reached(t, c, "http://svc"+path, "Host", host)
				seen[first] = true
				for range 3 {
					if got, _ := reached(t, c, "http://svc"+path, "Host", host); got != first {
						t.Fatalf("%s %s%s reached %s then %s", name, host, path, first, got)
					}
				}
			}
			if len(seen) < 2 {
				t.Errorf("30 values of %s all reached %v: not hashed", name, seen)
			}
		})
	}
}

// The hash is the request's as it came: Envoy's router picks the host
// (computeHashKey) before the route's header operations and path
// rewrite are applied (finalizeRequestHeaders), so a header the route
// removes or sets still hashes as the client sent it.
func TestHashPolicyReadsTheRequestBeforeTheRoutesOperations(t *testing.T) {
	rt := fwd("c")
	rt.Forward.Hash = []model.HashPolicy{{Header: "X-User"}}
	rt.Headers = model.HeaderOps{RequestRemove: []string{"x-user"}}
	c := hashRouteEngine(t, "ring_hash", rt)
	first, _ := reached(t, c, "http://svc/", "X-User", "u")
	for range 20 {
		if got, _ := reached(t, c, "http://svc/", "X-User", "u"); got != first {
			t.Fatalf("x-user u reached %s, then %s: the route's removal of x-user took the hash away", first, got)
		}
	}

	rt = fwd("c")
	rt.Forward.Hash = []model.HashPolicy{{Header: "X-User"}}
	rt.Headers = model.HeaderOps{RequestAdd: []model.HeaderValue{{Name: "x-user", Value: "fixed"}}}
	c = hashRouteEngine(t, "ring_hash", rt)
	seen := map[string]bool{}
	for i := range 20 {
		got, _ := reached(t, c, "http://svc/", "X-User", strconv.Itoa(i))
		seen[got] = true
	}
	if len(seen) < 2 {
		t.Errorf("20 x-user values all reached %v: the route's x-user was hashed, not the client's", seen)
	}
}
