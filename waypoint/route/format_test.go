package route

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func TestHeaderValueOperators(t *testing.T) {
	v := &Vars{
		Remote: netip.MustParseAddrPort("10.0.0.9:40000"), DirectRemote: netip.MustParseAddrPort("10.0.0.1:5000"),
		Local: netip.MustParseAddrPort("[fd00::10]:80"), Protocol: "HTTP/1.1",
		Start:   time.Date(2026, 12, 7, 13, 4, 5, 678e6, time.UTC),
		Request: http.Header{"User-Agent": {"curl/8"}, "X-B": {"bee"}},
	}
	for _, c := range []struct{ in, want string }{
		{"plain", "plain"},
		{"%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.0.9:40000"},
		{"ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;", "ip=10.0.0.9;"},
		{"%DOWNSTREAM_REMOTE_PORT%", "40000"},
		{"%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.0.1"},
		{"%DOWNSTREAM_LOCAL_ADDRESS%", "[fd00::10]:80"},
		{"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "fd00::10"},
		{"%DOWNSTREAM_LOCAL_PORT%", "80"},
		{"%PROTOCOL%", "HTTP/1.1"},
		{"%START_TIME%", "2026-12-07T13:04:05.678Z"},
		{"%REQ(user-agent)%", "curl/8"},
		{"%REQ(x-a?x-b)%", "bee"},
		{"%REQ(user-agent):4%", "curl"},
		{"%REQ(x-missing)%", ""},
		{"100%% sure", "100% sure"},
		{"%PROTOCOL%%%%PROTOCOL%", "HTTP/1.1%HTTP/1.1"},
	} {
		ps, err := parseFormat(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		got := c.in
		if ps != nil {
			got = render(ps, v)
		}
		if got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}

func TestHeaderValueOperatorsRefused(t *testing.T) {
	for _, c := range []struct{ in, why string }{
		{"100%", "starts no operator"},
		{"%lower%", "starts no operator"},
		{"%PROTOCOL", "does not end with"},
		{"%START_TIME(%s", "is not closed"},
		{"%REQ%", "header name"},
		{"%REQ()%", "header name"},
		{"%REQ(a?b?c)%", "one alternative"},
		{"%REQ(a):0%", "length limit"},
		{"%REQ(a):%", "length limit"},
	} {
		_, err := CheckHeaderValue(c.in)
		if err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%q: %v, want an error saying %q", c.in, err, c.why)
		}
	}
}

func TestHeaderValueOperatorsNotFilledIn(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"%UPSTREAM_HOST%", []string{"%UPSTREAM_HOST%"}},
		{"t=%START_TIME(%s)% p=%PROTOCOL%", []string{"%START_TIME(%s)%"}},
		{"%FILTER_STATE(a:PLAIN):10%", []string{"%FILTER_STATE(a:PLAIN):10%"}},
		{"%PROTOCOL(x)%", []string{"%PROTOCOL(x)%"}},
	} {
		got, err := CheckHeaderValue(c.in)
		if err != nil || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%q: %q %v, want %q", c.in, got, err, c.want)
		}
	}
	ps, _ := parseFormat("t=%START_TIME(%s)% p=%PROTOCOL%")
	if got := render(ps, &Vars{Protocol: "HTTP/1.1"}); got != "t= p=HTTP/1.1" {
		t.Errorf("rendered %q", got)
	}
}

func TestFormattedValueEmptyIsNotAdded(t *testing.T) {
	o := compileOps(&model.HeaderOps{RequestAdd: []model.HeaderValue{
		{Name: "x-ua", Value: "%REQ(user-agent)%"},
		{Name: "x-none", Value: "%REQ(x-missing)%", Append: true},
		{Name: "x-lit", Value: "a%%b"},
		{Name: "x-kept", Value: "%REQ(x-missing)%", KeepEmpty: true},
		{Name: "x-kept-static", Value: "", KeepEmpty: true},
	}})
	h := http.Header{"User-Agent": {"ua"}}
	ApplyRequest(h, &Vars{Request: h}, o)
	if h.Get("X-Ua") != "ua" || h.Get("X-Lit") != "a%b" {
		t.Errorf("got %v", h)
	}
	if _, ok := h["X-None"]; ok {
		t.Errorf("a value that came out empty was added: %v", h)
	}
	if v, ok := h["X-Kept"]; !ok || len(v) != 1 || v[0] != "" {
		t.Errorf("keep_empty_value: an empty result was not added: %v", h)
	}
	if v, ok := h["X-Kept-Static"]; !ok || len(v) != 1 || v[0] != "" {
		t.Errorf("keep_empty_value: an empty value was not added: %v", h)
	}
}

// Envoy's REQ reads the pseudo-headers too (Istio's and Envoy's default
// access log formats read :AUTHORITY, :METHOD, X-ENVOY-ORIGINAL-PATH?:PATH):
// Go keeps them out of the header map.
func TestHeaderValueOperatorsPseudoHeaders(t *testing.T) {
	v := &Vars{Method: "POST", Path: "/a?b=1", Authority: "svc.ns:8080", Scheme: "https", Request: http.Header{"X-Other": {"o"}}}
	for _, c := range []struct{ in, want string }{
		{"%REQ(:AUTHORITY)%", "svc.ns:8080"},
		{"%REQ(:authority)%", "svc.ns:8080"},
		{"%REQ(:METHOD)%", "POST"},
		{"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/a?b=1"},
		{"%REQ(:path?x-other)%", "/a?b=1"},
		{"%REQ(:PATH):2%", "/a"},
		{"%REQ(:SCHEME)%", "https"},
	} {
		ps, err := parseFormat(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got := render(ps, v); got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}
