package route

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func vh(name string, domains ...string) *model.VirtualHost {
	return &model.VirtualHost{Name: name, Domains: domains, Routes: []*model.Route{{Name: name, Forward: &model.ForwardAction{Cluster: name}}}}
}

func TestVirtualHostDomainOrder(t *testing.T) {
	tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{
		vh("any", "*"),
		vh("prefix-short", "api.*"),
		vh("prefix-long", "api.example.*"),
		vh("suffix-short", "*.com"),
		vh("suffix-long", "*.example.com"),
		vh("exact", "www.example.com", "www.example.com:8080"),
		vh("exact-upper", "UPPER.example.org"),
	}})
	cases := map[string]string{
		"www.example.com":       "exact",
		"WWW.Example.COM":       "exact",
		"www.example.com:8080":  "exact",
		"www.example.com:9090":  "suffix-short", // port kept: "*.com" does not match, so... see below
		"a.example.com":         "suffix-long",
		"b.com":                 "suffix-short",
		"api.example.net":       "prefix-long",
		"api.other.net":         "prefix-short",
		"api.example.com":       "suffix-long", // suffix wildcards before prefix ones
		"example.com":           "suffix-short",
		".example.com":          "suffix-short", // "*" must stand for one character at least
		"upper.example.org":     "exact-upper",
		"nothing.org":           "any",
		"api.":                  "any",
		"reviews.default:9080 ": "any",
	}
	// "www.example.com:9090" ends in ":9090", not ".com": it falls to "*".
	cases["www.example.com:9090"] = "any"
	for host, want := range cases {
		got := tbl.VirtualHost(host)
		if got == nil || got.Model.Name != want {
			name := "<nil>"
			if got != nil {
				name = got.Model.Name
			}
			t.Errorf("VirtualHost(%q) = %s, want %s", host, name, want)
		}
	}
	if Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{vh("x", "x")}}).VirtualHost("y") != nil {
		t.Error("no virtual host must give nil (NR)")
	}
}

// ignore_port_in_host_matching: the authority's port is dropped before
// the domains are looked up (Envoy's getPortStart: the last ":" outside an
// IPv6 literal's brackets).
func TestIgnorePortInHostMatching(t *testing.T) {
	tbl := Compile(&model.RouteTable{IgnorePortInHostMatching: true, VirtualHosts: []*model.VirtualHost{
		vh("any", "*"),
		vh("exact", "reviews.default.svc.cluster.local"),
		vh("v6", "[fd00::1]"),
		vh("suffix", "*.example.com"),
	}})
	for host, want := range map[string]string{
		"reviews.default.svc.cluster.local:9080": "exact",
		"reviews.default.svc.cluster.local":      "exact",
		"[fd00::1]:80":                           "v6",
		"[fd00::1]":                              "v6",
		"a.example.com:443":                      "suffix",
		"other:1":                                "any",
	} {
		if got := tbl.VirtualHost(host); got == nil || got.Model.Name != want {
			t.Errorf("VirtualHost(%q) = %v, want %s", host, got, want)
		}
	}
}

func req(method, target string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	r.Host = "svc"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func ptr[T any](v T) *T { return &v }

func TestRouteMatch(t *testing.T) {
	cases := []struct {
		name  string
		match model.RouteMatch
		r     *http.Request
		want  bool
	}{
		{"empty matches all", model.RouteMatch{}, req("GET", "/x/y?z=1"), true},
		{"prefix", model.RouteMatch{Prefix: "/api"}, req("GET", "/api/v1"), true},
		{"prefix is not segment-aware", model.RouteMatch{Prefix: "/api"}, req("GET", "/apix"), true},
		{"prefix case", model.RouteMatch{Prefix: "/API"}, req("GET", "/api/v1"), false},
		{"prefix case-insensitive", model.RouteMatch{Prefix: "/API", CaseInsensitive: true}, req("GET", "/api/v1"), true},
		{"prefix ignores query", model.RouteMatch{Prefix: "/a?b"}, req("GET", "/a?b=1"), false},
		{"path exact", model.RouteMatch{Path: "/a"}, req("GET", "/a?x=1"), true},
		{"path longer", model.RouteMatch{Path: "/a"}, req("GET", "/ab"), false},
		{"path case-insensitive", model.RouteMatch{Path: "/A", CaseInsensitive: true}, req("GET", "/a"), true},
		{"path is raw, not decoded", model.RouteMatch{Path: "/a b"}, req("GET", "/a%20b"), false},
		{"separated prefix exact", model.RouteMatch{PathSeparatedPrefix: "/api"}, req("GET", "/api"), true},
		{"separated prefix segment", model.RouteMatch{PathSeparatedPrefix: "/api"}, req("GET", "/api/x"), true},
		{"separated prefix query", model.RouteMatch{PathSeparatedPrefix: "/api"}, req("GET", "/api?x"), true},
		{"separated prefix not segment", model.RouteMatch{PathSeparatedPrefix: "/api"}, req("GET", "/apix"), false},
		{"regex full", model.RouteMatch{Regex: regexp.MustCompile(`/b/[0-9]+`)}, req("GET", "/b/12"), true},
		{"regex must match all", model.RouteMatch{Regex: regexp.MustCompile(`/b/[0-9]+`)}, req("GET", "/b/12/x"), false},
		{"regex alternation anchored", model.RouteMatch{Regex: regexp.MustCompile(`/a|/ab`)}, req("GET", "/ab"), true},
		{"grpc yes", model.RouteMatch{GRPC: true}, req("POST", "/s/M", "Content-Type", "application/grpc+proto"), true},
		{"grpc no", model.RouteMatch{GRPC: true}, req("POST", "/s/M", "Content-Type", "application/json"), false},

		{"header exact", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}}), req("GET", "/", "X-V", "a"), true},
		{"header exact miss", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}}), req("GET", "/", "X-V", "b"), false},
		{"header exact ignore case", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "ABC", IgnoreCase: true, Kind: "exact"}}), req("GET", "/", "X-V", "abc"), true},
		{"header prefix", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Prefix: "ab", Kind: "prefix"}}), req("GET", "/", "X-V", "abc"), true},
		{"header suffix", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Suffix: "bc", Kind: "suffix"}}), req("GET", "/", "X-V", "abc"), true},
		{"header suffix ignore case", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Suffix: "BC", IgnoreCase: true, Kind: "suffix"}}), req("GET", "/", "X-V", "abc"), true},
		{"header contains", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Contains: "b", Kind: "contains"}}), req("GET", "/", "X-V", "abc"), true},
		{"header contains ignore case", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Contains: "B", IgnoreCase: true, Kind: "contains"}}), req("GET", "/", "X-V", "abc"), true},
		{"header regex", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Regex: regexp.MustCompile(`a.c`), Kind: "regex"}}), req("GET", "/", "X-V", "abc"), true},
		{"header regex partial", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Regex: regexp.MustCompile(`b`), Kind: "regex"}}), req("GET", "/", "X-V", "abc"), false},
		{"header values joined", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a,b", Kind: "exact"}}), req("GET", "/", "X-V", "a", "X-V", "b"), true},
		{"header missing", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}}), req("GET", "/"), false},
		// Envoy: "the header is treated as not present. The match rule will
		// not match when inverted" (treat_missing_header_as_empty).
		{"header missing inverted", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}, Invert: true}), req("GET", "/"), false},
		{"header missing inverted range", hm(model.HeaderMatch{Name: "x-n", Range: &struct{ Start, End int64 }{0, 10}, Invert: true}), req("GET", "/"), false},
		{"header missing as empty inverted", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}, Invert: true, TreatMissingAsEmpty: true}), req("GET", "/"), true},
		{"absent inverted on missing", hm(model.HeaderMatch{Name: "x-v", Present: ptr(false), Invert: true}), req("GET", "/"), false},
		{"header inverted", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "a", Kind: "exact"}, Invert: true}), req("GET", "/", "X-V", "a"), false},
		{"header missing as empty", hm(model.HeaderMatch{Name: "x-v", Value: &model.StringMatch{Exact: "", Kind: "exact"}, TreatMissingAsEmpty: true}), req("GET", "/"), true},
		{"present", hm(model.HeaderMatch{Name: "x-v", Present: ptr(true)}), req("GET", "/", "X-V", ""), true},
		{"present missing", hm(model.HeaderMatch{Name: "x-v", Present: ptr(true)}), req("GET", "/"), false},
		{"absent", hm(model.HeaderMatch{Name: "x-v", Present: ptr(false)}), req("GET", "/"), true},
		{"absent but there", hm(model.HeaderMatch{Name: "x-v", Present: ptr(false)}), req("GET", "/", "X-V", "1"), false},
		{"present inverted", hm(model.HeaderMatch{Name: "x-v", Present: ptr(true), Invert: true}), req("GET", "/"), true},
		{"no condition is present", hm(model.HeaderMatch{Name: "x-v"}), req("GET", "/", "X-V", "z"), true},
		{"range in", hm(model.HeaderMatch{Name: "x-n", Range: &struct{ Start, End int64 }{10, 20}}), req("GET", "/", "X-N", "10"), true},
		{"range end exclusive", hm(model.HeaderMatch{Name: "x-n", Range: &struct{ Start, End int64 }{10, 20}}), req("GET", "/", "X-N", "20"), false},
		{"range negative", hm(model.HeaderMatch{Name: "x-n", Range: &struct{ Start, End int64 }{-5, 0}}), req("GET", "/", "X-N", "-3"), true},
		{"range not a number", hm(model.HeaderMatch{Name: "x-n", Range: &struct{ Start, End int64 }{0, 100}}), req("GET", "/", "X-N", "5x"), false},
		{"pseudo method", hm(model.HeaderMatch{Name: ":method", Value: &model.StringMatch{Exact: "POST", Kind: "exact"}}), req("POST", "/"), true},
		{"pseudo authority", hm(model.HeaderMatch{Name: ":authority", Value: &model.StringMatch{Exact: "svc", Kind: "exact"}}), req("GET", "/"), true},
		{"pseudo path", hm(model.HeaderMatch{Name: ":path", Value: &model.StringMatch{Exact: "/p?q=1", Kind: "exact"}}), req("GET", "/p?q=1"), true},

		{"query exact", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "2", Kind: "exact"}}), req("GET", "/?v=2"), true},
		{"query first value", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "2", Kind: "exact"}}), req("GET", "/?v=1&v=2"), false},
		// Envoy matches query parameters as sent: nothing is decoded, and
		// only "&" separates pairs.
		{"query not decoded", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "a b", Kind: "exact"}}), req("GET", "/?v=a%20b"), false},
		{"query raw value", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "a%20b", Kind: "exact"}}), req("GET", "/?v=a%20b"), true},
		{"query plus kept", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "a+b", Kind: "exact"}}), req("GET", "/?v=a+b"), true},
		{"query raw name", qm(model.QueryMatch{Name: "name", Present: true}), req("GET", "/?na%6De=1"), false},
		{"query semicolon is no separator", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "1;w=2", Kind: "exact"}}), req("GET", "/?v=1;w=2"), true},
		{"query bad escape", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "%zz", Kind: "exact"}}), req("GET", "/?v=%zz"), true},
		{"query value with =", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "a=b", Kind: "exact"}}), req("GET", "/?v=a=b"), true},
		{"query empty value", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "", Kind: "exact"}}), req("GET", "/?v"), true},
		{"query regex", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Regex: regexp.MustCompile(`[0-9]+`), Kind: "regex"}}), req("GET", "/?v=123"), true},
		{"query present", qm(model.QueryMatch{Name: "debug", Present: true}), req("GET", "/?debug"), true},
		{"query present missing", qm(model.QueryMatch{Name: "debug", Present: true}), req("GET", "/?x=1"), false},
		{"query no query", qm(model.QueryMatch{Name: "v", Value: &model.StringMatch{Exact: "1", Kind: "exact"}}), req("GET", "/"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"}, Routes: []*model.Route{
				{Name: "r", Match: c.match, Forward: &model.ForwardAction{Cluster: "c"}},
			}}}})
			_, r := tbl.Match(c.r)
			if got := r != nil; got != c.want {
				t.Errorf("match = %v, want %v", got, c.want)
			}
		})
	}
}

func hm(h model.HeaderMatch) model.RouteMatch {
	return model.RouteMatch{Headers: []model.HeaderMatch{h}}
}
func qm(q model.QueryMatch) model.RouteMatch { return model.RouteMatch{Query: []model.QueryMatch{q}} }

func TestRoutesInOrder(t *testing.T) {
	tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"}, Routes: []*model.Route{
		{Name: "v2", Match: model.RouteMatch{Prefix: "/", Headers: []model.HeaderMatch{{Name: "end-user", Value: &model.StringMatch{Exact: "jason", Kind: "exact"}}}}},
		{Name: "api", Match: model.RouteMatch{Prefix: "/api"}},
		{Name: "all", Match: model.RouteMatch{Prefix: "/"}},
		{Name: "never", Match: model.RouteMatch{Prefix: "/api/v1"}},
	}}}})
	for target, want := range map[string]string{"/api/v1": "api", "/x": "all"} {
		if _, r := tbl.Match(req("GET", target)); r == nil || r.Model.Name != want {
			t.Errorf("%s: got %v, want %s", target, r, want)
		}
	}
	if _, r := tbl.Match(req("GET", "/api", "End-User", "jason")); r.Model.Name != "v2" {
		t.Errorf("header route first: got %s", r.Model.Name)
	}
}

func TestRewritePath(t *testing.T) {
	cases := []struct {
		match model.RouteMatch
		fwd   model.ForwardAction
		path  string
		want  string
	}{
		{model.RouteMatch{Prefix: "/api/"}, model.ForwardAction{PrefixRewrite: "/"}, "/api/v1/x?q=1", "/v1/x?q=1"},
		{model.RouteMatch{Prefix: "/api"}, model.ForwardAction{PrefixRewrite: "/v2"}, "/api/x", "/v2/x"},
		{model.RouteMatch{Prefix: "/API", CaseInsensitive: true}, model.ForwardAction{PrefixRewrite: "/b"}, "/api/x", "/b/x"},
		{model.RouteMatch{Path: "/old"}, model.ForwardAction{PrefixRewrite: "/new"}, "/old?a", "/new?a"},
		{model.RouteMatch{PathSeparatedPrefix: "/svc"}, model.ForwardAction{PrefixRewrite: "/"}, "/svc/m", "//m"},
		{model.RouteMatch{}, model.ForwardAction{PrefixRewrite: "/root/"}, "/x", "/root/x"},
		{model.RouteMatch{Prefix: "/"}, model.ForwardAction{RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`^/service/([^/]+)(/.*)$`), Substitution: "${2}/instance/${1}"}}, "/service/foo/v1/api?x=1", "/v1/api/instance/foo?x=1"},
		{model.RouteMatch{Prefix: "/"}, model.ForwardAction{RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`o`), Substitution: "0"}}, "/foo/boo", "/f00/b00"},
		{model.RouteMatch{Prefix: "/"}, model.ForwardAction{}, "/same?x", "/same?x"},
		// A regex rewrite that leaves nothing of the path is no rewrite in
		// Envoy: the path goes out as it came.
		{model.RouteMatch{Prefix: "/"}, model.ForwardAction{RegexRewrite: &model.RegexRewrite{Pattern: regexp.MustCompile(`^.*$`), Substitution: ""}}, "/gone?x=1", "/gone?x=1"},
		// A VirtualService "uri: {regex}" with "rewrite: {uri}": istiod
		// emits safe_regex + prefix_rewrite, and Envoy replaces the whole
		// path (the regex's matched path), keeping the query.
		{model.RouteMatch{Regex: regexp.MustCompile(`/v[0-9]+/.*`)}, model.ForwardAction{PrefixRewrite: "/latest"}, "/v1/items/7?q=1", "/latest?q=1"},
	}
	for _, c := range cases {
		fwd := c.fwd
		tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"}, Routes: []*model.Route{{Match: c.match, Forward: &fwd}}}}})
		r := tbl.VirtualHost("x").Routes[0]
		if got := r.RewritePath(c.path); got != c.want {
			t.Errorf("RewritePath(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}

func TestRedirectLocation(t *testing.T) {
	cases := []struct {
		match          model.RouteMatch
		ra             model.RedirectAction
		authority, uri string
		want           string
	}{
		{model.RouteMatch{}, model.RedirectAction{Host: "new.example.com"}, "old:8080", "/a?b=1", "http://new.example.com/a?b=1"},
		{model.RouteMatch{}, model.RedirectAction{Scheme: "https"}, "h:80", "/a", "https://h/a"},
		{model.RouteMatch{}, model.RedirectAction{Scheme: "https"}, "h:8080", "/a", "https://h:8080/a"},
		{model.RouteMatch{}, model.RedirectAction{Port: 8443, Scheme: "https"}, "h", "/a", "https://h:8443/a"},
		{model.RouteMatch{}, model.RedirectAction{Path: "/new"}, "h", "/old?x=1", "http://h/new?x=1"},
		{model.RouteMatch{}, model.RedirectAction{Path: "/new?y=2"}, "h", "/old?x=1", "http://h/new?y=2"},
		{model.RouteMatch{}, model.RedirectAction{Path: "/new", StripQuery: true}, "h", "/old?x=1", "http://h/new"},
		{model.RouteMatch{Prefix: "/v1"}, model.RedirectAction{PrefixRewrite: "/v2"}, "h", "/v1/x", "http://h/v2/x"},
		{model.RouteMatch{}, model.RedirectAction{}, "[::1]:8080", "/", "http://[::1]:8080/"},
		{model.RouteMatch{}, model.RedirectAction{Host: "::1"}, "h", "/", "http://[::1]/"},
		{model.RouteMatch{Regex: regexp.MustCompile(`/old/.*`)}, model.RedirectAction{PrefixRewrite: "/new"}, "h", "/old/x?y=1", "http://h/new?y=1"},
		// Envoy drops the request's port only for port_redirect or a
		// scheme change away from that port's scheme.
		{model.RouteMatch{}, model.RedirectAction{Path: "/new"}, "h:80", "/old", "http://h:80/new"},
		{model.RouteMatch{}, model.RedirectAction{Scheme: "http"}, "h:80", "/a", "http://h:80/a"},
		{model.RouteMatch{}, model.RedirectAction{Scheme: "https"}, "h:443", "/a", "https://h:443/a"},
		{model.RouteMatch{}, model.RedirectAction{Port: 80}, "h:8080", "/a", "http://h:80/a"},
		{model.RouteMatch{}, model.RedirectAction{Port: 9090}, "[::1]:8080", "/a", "http://[::1]:9090/a"},
		{model.RouteMatch{}, model.RedirectAction{Host: "n:1", Port: 2}, "h", "/a", "http://n:2/a"},
		{model.RouteMatch{}, model.RedirectAction{Path: "new"}, "h", "/old", "http://h/new"},
	}
	for _, c := range cases {
		ra := c.ra
		tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"}, Routes: []*model.Route{{Match: c.match, Redirect: &ra}}}}})
		r := tbl.VirtualHost("x").Routes[0]
		if got := r.RedirectLocation("http", c.authority, c.uri); got != c.want {
			t.Errorf("%+v on %s%s: got %q, want %q", c.ra, c.authority, c.uri, got, c.want)
		}
	}
	// A request that came as https (X-Forwarded-Proto) redirected to
	// http loses its :443.
	https := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"}, Routes: []*model.Route{{Redirect: &model.RedirectAction{Scheme: "http"}}}}}})
	if got := https.VirtualHost("x").Routes[0].RedirectLocation("https", "h:443", "/a"); got != "http://h/a" {
		t.Errorf("https h:443 to http: got %q", got)
	}
	if RedirectStatus(&model.RedirectAction{}) != 301 || RedirectStatus(&model.RedirectAction{Status: 307}) != 307 {
		t.Error("redirect status")
	}
}

func TestHeaderOpsOrder(t *testing.T) {
	ops := func(add ...model.HeaderValue) *Ops {
		return compileOps(&model.HeaderOps{RequestAdd: add, ResponseAdd: add, RequestRemove: []string{"x-gone"}, ResponseRemove: []string{"x-gone"}})
	}
	weighted := ops(model.HeaderValue{Name: "x-level", Value: "weighted"}, model.HeaderValue{Name: "x-w", Value: "1"})
	route := ops(model.HeaderValue{Name: "x-level", Value: "route"}, model.HeaderValue{Name: "x-list", Value: "r", Append: true})
	vhost := ops(model.HeaderValue{Name: "x-level", Value: "vhost"}, model.HeaderValue{Name: "x-list", Value: "v", Append: true}, model.HeaderValue{Name: "x-once", Value: "v", AddIfAbsent: true})
	table := ops(model.HeaderValue{Name: "X-Level", Value: "table"}, model.HeaderValue{Name: "x-once", Value: "t", AddIfAbsent: true},
		model.HeaderValue{Name: "x-empty", Value: ""}, model.HeaderValue{Name: "host", Value: "evil"}, model.HeaderValue{Name: ":authority", Value: "evil"})
	for _, resp := range []bool{false, true} {
		h := http.Header{"X-Gone": {"1"}, "X-List": {"client"}}
		if resp {
			ApplyResponse(h, nil, weighted, route, vhost, table)
		} else {
			ApplyRequest(h, nil, weighted, route, vhost, table)
		}
		want := http.Header{
			"X-Level": {"table"}, // least specific wins by default
			"X-W":     {"1"},
			"X-List":  {"client", "r", "v"},
			"X-Once":  {"v"},
		}
		if !reflect.DeepEqual(h, want) {
			t.Errorf("resp=%v: got %v, want %v", resp, h, want)
		}
	}
}

// OVERWRITE_IF_EXISTS replaces a header that is there and never adds one.
func TestHeaderOnlyIfPresent(t *testing.T) {
	o := compileOps(&model.HeaderOps{RequestAdd: []model.HeaderValue{
		{Name: "x-there", Value: "new", OnlyIfPresent: true},
		{Name: "x-absent", Value: "new", OnlyIfPresent: true},
	}})
	h := http.Header{"X-There": {"old", "older"}}
	ApplyRequest(h, nil, o)
	want := http.Header{"X-There": {"new"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %v, want %v", h, want)
	}
}

// Within one level Envoy decides ADD_IF_ABSENT and OVERWRITE_IF_EXISTS on
// the headers as they were, then makes every overwrite, then every append:
// istiod lists a VirtualService's route-level "add" before its
// destination-level "set", and the "set" must not erase the "add".
func TestHeaderOpsOverwriteBeforeAppend(t *testing.T) {
	o := compileOps(&model.HeaderOps{RequestAdd: []model.HeaderValue{
		{Name: "x-a", Value: "added", Append: true},
		{Name: "x-a", Value: "set"},
		{Name: "x-b", Value: "first", Append: true},
		{Name: "x-b", Value: "only-if-absent", AddIfAbsent: true},
		{Name: "x-c", Value: "set"},
		{Name: "x-c", Value: "only-if-present", OnlyIfPresent: true},
	}})
	h := http.Header{"X-A": {"client"}}
	ApplyRequest(h, nil, o)
	want := http.Header{
		"X-A": {"set", "added"},
		"X-B": {"first", "only-if-absent"},
		"X-C": {"set"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %v, want %v", h, want)
	}
}
