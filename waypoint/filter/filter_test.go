package filter

import (
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

func ptr[T any](v T) *T { return &v }

func TestFaultPercentages(t *testing.T) {
	fs := &Faults{}
	f := CompileFault(&model.Fault{Delay: time.Second, DelayPercent: 30, AbortHTTPStatus: 503, AbortPercent: 10})
	const n = 20000
	var delays, aborts int
	for range n {
		d := fs.Decide(f, httptest.NewRequest("GET", "/", nil), "c")
		if d.Delay == time.Second {
			delays++
		}
		if d.AbortStatus == 503 {
			aborts++
		}
		if d.Active() {
			fs.Done()
		}
	}
	if got := float64(delays) / n; math.Abs(got-0.30) > 0.02 {
		t.Errorf("delay share %.3f, want 0.30", got)
	}
	if got := float64(aborts) / n; math.Abs(got-0.10) > 0.015 {
		t.Errorf("abort share %.3f, want 0.10", got)
	}
	if fs.ActiveFaults() != 0 {
		t.Errorf("active faults %d after all Done", fs.ActiveFaults())
	}
	all := CompileFault(&model.Fault{AbortGRPCStatus: ptr(14), AbortPercent: 100})
	if d := fs.Decide(all, httptest.NewRequest("GET", "/", nil), "c"); d.AbortGRPC == nil || *d.AbortGRPC != 14 || d.AbortStatus != 0 {
		t.Errorf("gRPC abort: %+v", d)
	}
}

func TestFaultConditionsAndMaxActive(t *testing.T) {
	fs := &Faults{}
	f := CompileFault(&model.Fault{AbortHTTPStatus: 500, AbortPercent: 100, MaxActive: ptr(2), UpstreamClusters: []string{"target"},
		Headers: []model.HeaderMatch{{Name: "x-canary", Value: &model.StringMatch{Exact: "1", Kind: "exact"}}}})
	r := httptest.NewRequest("GET", "/", nil)
	if fs.Decide(f, r, "target").Active() {
		t.Error("header condition not met: no fault")
	}
	r.Header.Set("X-Canary", "1")
	if fs.Decide(f, r, "other").Active() {
		t.Error("other cluster: no fault")
	}
	if !fs.Decide(f, r, "target").Active() || !fs.Decide(f, r, "target").Active() {
		t.Fatal("two faults fit")
	}
	if fs.Decide(f, r, "target").Active() {
		t.Error("a third exceeds max_active_faults")
	}
	fs.Done()
	if !fs.Decide(f, r, "target").Active() {
		t.Error("a slot came back")
	}
}

func TestFaultFromHeaders(t *testing.T) {
	fs := &Faults{}
	f := CompileFault(&model.Fault{HeaderDelay: true, DelayPercent: 100, HeaderAbort: true, AbortPercent: 100})
	r := httptest.NewRequest("GET", "/", nil)
	if fs.Decide(f, r, "c").Active() {
		t.Fatal("no headers: nothing")
	}
	r.Header.Set(HeaderDelay, "150")
	r.Header.Set(HeaderAbort, "418")
	d := fs.Decide(f, r, "c")
	if d.Delay != 150*time.Millisecond || d.AbortStatus != 418 {
		t.Errorf("decision %+v", d)
	}
	r.Header.Set(HeaderAbort, "700")
	if d := fs.Decide(f, r, "c"); d.AbortStatus != 0 {
		t.Errorf("an out of range status is ignored: %+v", d)
	}
	r.Header.Del(HeaderAbort)
	r.Header.Set(HeaderAbortGRPC, "8")
	if d := fs.Decide(f, r, "c"); d.AbortGRPC == nil || *d.AbortGRPC != 8 {
		t.Errorf("gRPC from header: %+v", d)
	}
	// The header's percentage may lower the configured one, not raise it.
	r.Header.Set(HeaderAbortPercent, "0")
	if d := fs.Decide(f, r, "c"); d.AbortGRPC != nil {
		t.Error("0% from the header: no abort")
	}
	low := CompileFault(&model.Fault{HeaderAbort: true, AbortPercent: 0})
	r.Header.Set(HeaderAbortPercent, "100")
	if d := fs.Decide(low, r, "c"); d.AbortGRPC != nil {
		t.Error("the header cannot raise the configured 0%")
	}
	// Without header_abort the headers mean nothing.
	plain := CompileFault(&model.Fault{})
	if fs.Decide(plain, r, "c").Active() {
		t.Error("headers honoured without header_abort/header_delay")
	}
}

func TestCORS(t *testing.T) {
	c := CompileCORS(&model.CORS{
		AllowOrigins: []model.StringMatch{{Exact: "https://a.example", Kind: "exact"}, {Regex: regexp.MustCompile(`https://.*\.b\.example`), Kind: "regex"}},
		AllowMethods: "GET,POST", AllowHeaders: "x-a", ExposeHeaders: "x-e", MaxAge: "600", AllowCredentials: ptr(true),
	})
	pre := httptest.NewRequest("OPTIONS", "/", nil)
	pre.Header.Set("Origin", "https://x.b.example")
	pre.Header.Set("Access-Control-Request-Method", "POST")
	res := c.Evaluate(pre)
	if !res.Preflight || res.Headers.Get("Access-Control-Allow-Origin") != "https://x.b.example" ||
		res.Headers.Get("Access-Control-Allow-Methods") != "GET,POST" || res.Headers.Get("Access-Control-Allow-Headers") != "x-a" ||
		res.Headers.Get("Access-Control-Max-Age") != "600" || res.Headers.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("preflight: %+v", res)
	}
	get := httptest.NewRequest("GET", "/", nil)
	get.Header.Set("Origin", "https://a.example")
	res = c.Evaluate(get)
	if res.Preflight || res.Headers.Get("Access-Control-Expose-Headers") != "x-e" || res.Headers.Get("Access-Control-Allow-Methods") != "" {
		t.Errorf("actual request: %+v", res)
	}
	get.Header.Set("Origin", "https://evil.example")
	if res := c.Evaluate(get); res.Headers != nil {
		t.Errorf("origin not allowed: %+v", res)
	}
	pre.Header.Set("Origin", "https://evil.example")
	if res := c.Evaluate(pre); res.Preflight {
		t.Error("a preflight from an origin not allowed goes upstream")
	}
	if res := CompileCORS(&model.CORS{AllowOrigins: []model.StringMatch{{Exact: "*", Kind: "exact"}}}).Evaluate(get); res.Headers.Get("Access-Control-Allow-Origin") != "https://evil.example" {
		t.Error(`"*" allows every origin`)
	}
	if res := CompileCORS(&model.CORS{Disabled: true, AllowOrigins: []model.StringMatch{{Exact: "*"}}}).Evaluate(get); res.Headers != nil {
		t.Error("disabled policy")
	}
	if res := c.Evaluate(httptest.NewRequest("GET", "/", nil)); res.Headers != nil {
		t.Error("no Origin: nothing")
	}
}

func TestRetryConditions(t *testing.T) {
	pol := func(on ...string) *Retry {
		m := map[string]bool{}
		for _, o := range on {
			m[o] = true
		}
		return NewRetry(&model.RetryPolicy{On: m, NumRetries: 2, RetriableStatusCodes: []int{418}})
	}
	grpc := func(code string) http.Header { return http.Header{"Grpc-Status": {code}} }
	resp := []struct {
		r    *Retry
		code int
		h    http.Header
		want bool
	}{
		{pol("5xx"), 500, nil, true},
		{pol("5xx"), 503, http.Header{"X-Envoy-Overloaded": {"true"}}, true},
		{pol("5xx"), 404, nil, false},
		{pol("gateway-error"), 500, nil, false},
		{pol("gateway-error"), 502, nil, true},
		{pol("gateway-error"), 504, nil, true},
		{pol("retriable-4xx"), 409, nil, true},
		{pol("retriable-4xx"), 404, nil, false},
		{pol("retriable-status-codes"), 418, nil, true},
		{pol("retriable-status-codes"), 419, nil, false},
		{pol("unavailable"), 200, grpc("14"), true},
		{pol("unavailable"), 200, grpc("13"), false},
		{pol("internal"), 200, grpc("13"), true},
		{pol("cancelled", "deadline-exceeded", "resource-exhausted"), 200, grpc("4"), true},
		{pol("cancelled", "deadline-exceeded", "resource-exhausted"), 200, grpc("8"), true},
		{pol("cancelled"), 200, grpc("1"), true},
		{pol("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"), 503, nil, false},
		{nil, 503, nil, false},
	}
	for i, c := range resp {
		if got := c.r.RetriableResponse(c.code, c.h); got != c.want {
			t.Errorf("%d: response %d %v: %v, want %v", i, c.code, c.h, got, c.want)
		}
	}
	fail := []struct {
		r    *Retry
		f    Failure
		want bool
	}{
		{pol("5xx"), ConnectFailure, true},
		{pol("5xx"), PerTryTimeout, true},
		{pol("gateway-error"), Reset, true},
		{pol("reset"), PerTryTimeout, true},
		{pol("connect-failure"), ConnectFailure, true},
		{pol("connect-failure"), Reset, false},
		{pol("connect-failure"), PerTryTimeout, false},
		{pol("refused-stream"), RefusedStream, true},
		{pol("refused-stream"), Reset, false},
		{pol("unavailable"), ConnectFailure, false},
	}
	for i, c := range fail {
		if got := c.r.RetriableFailure(c.f); got != c.want {
			t.Errorf("%d: failure %d: %v, want %v", i, c.f, got, c.want)
		}
	}
	if NewRetry(&model.RetryPolicy{On: map[string]bool{"5xx": true}}) != nil {
		t.Error("0 retries: no retry state")
	}
}

func TestRetryBudgetAndBackoff(t *testing.T) {
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 5})
	limits := []time.Duration{25, 50, 100, 200, 250} // ms: base·2^(n-1), capped at 10x base
	for i, lim := range limits {
		if !r.Take() {
			t.Fatalf("retry %d refused", i+1)
		}
		var maxSeen time.Duration
		for range 2000 {
			b := r.Backoff()
			if b < 0 || b >= lim*time.Millisecond {
				t.Fatalf("retry %d: backoff %v outside [0, %dms)", i+1, b, lim)
			}
			maxSeen = max(maxSeen, b)
		}
		if maxSeen < lim*time.Millisecond*8/10 {
			t.Errorf("retry %d: backoff never came near its bound %dms (max %v): not jittered over the full range", i+1, lim, maxSeen)
		}
	}
	if r.Take() {
		t.Error("a sixth retry of five")
	}
}

// A percentage header is a numerator over the configured percentage's
// denominator, as Envoy's HeaderPercentageProvider reads it: with 100% as
// 1000000/MILLION (istiod's form) a header of 50 is 0.005%, not 50%.
func TestFaultHeaderPercentOverConfiguredDenominator(t *testing.T) {
	fs := &Faults{}
	f := CompileFault(&model.Fault{HeaderAbort: true, AbortPercent: 100, AbortDenominator: 1000000})
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set(HeaderAbort, "503")
	r.Header.Set(HeaderAbortPercent, "50")
	hits := 0
	for range 2000 {
		if d := fs.Decide(f, r, "c"); d.Active() {
			hits++
			fs.Done()
		}
	}
	if hits > 10 {
		t.Errorf("%d of 2000 aborted: the header's 50 read over 100, not over 1000000", hits)
	}
}

// An x-envoy-fault-abort-request Envoy cannot use (not a number, or out of
// 200..599) gives no HTTP status, and the gRPC header is read next.
func TestFaultBadHTTPAbortHeaderFallsToGRPC(t *testing.T) {
	fs := &Faults{}
	f := CompileFault(&model.Fault{HeaderAbort: true, AbortPercent: 100})
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set(HeaderAbort, "700")
	r.Header.Set(HeaderAbortGRPC, "14")
	if d := fs.Decide(f, r, "c"); d.AbortGRPC == nil || *d.AbortGRPC != 14 || d.AbortStatus != 0 {
		t.Errorf("out of range HTTP status with a gRPC header: %+v", d)
	}
}

// forward_not_matching_preflights false (istiod's unmatchedPreflights:
// IGNORE): a preflight from an origin not allowed is answered here, 200
// without Access-Control-Allow-Origin, instead of going upstream.
func TestCORSNotMatchingPreflightAnsweredWhenNotForwarded(t *testing.T) {
	c := CompileCORS(&model.CORS{AllowOrigins: []model.StringMatch{{Exact: "https://a.example", Kind: "exact"}},
		AllowMethods: "GET", MaxAge: "60", ForwardNotMatchingPreflights: ptr(false)})
	pre := httptest.NewRequest("OPTIONS", "/", nil)
	pre.Header.Set("Origin", "https://evil.example")
	pre.Header.Set("Access-Control-Request-Method", "GET")
	res := c.Evaluate(pre)
	if !res.Preflight || res.Headers.Get("Access-Control-Allow-Origin") != "" || res.Headers.Get("Access-Control-Allow-Methods") != "GET" ||
		res.Headers.Get("Access-Control-Max-Age") != "60" {
		t.Errorf("preflight not forwarded: %+v", res)
	}
	get := httptest.NewRequest("GET", "/", nil)
	get.Header.Set("Origin", "https://evil.example")
	if res := c.Evaluate(get); res.Preflight || res.Headers != nil {
		t.Errorf("actual request from an origin not allowed: %+v", res)
	}
}

// Envoy allows every origin when an allow_origin matcher matches the
// string "*" itself, whatever its kind: a prefix "*" is such a matcher.
func TestCORSMatcherMatchingStarAllowsAll(t *testing.T) {
	c := CompileCORS(&model.CORS{AllowOrigins: []model.StringMatch{{Prefix: "*", Kind: "prefix"}}})
	get := httptest.NewRequest("GET", "/", nil)
	get.Header.Set("Origin", "https://a.example")
	if got := c.Evaluate(get).Headers.Get("Access-Control-Allow-Origin"); got != "https://a.example" {
		t.Errorf(`prefix "*": allow-origin %q`, got)
	}
}

// allow_methods / allow_headers "*": Envoy's preflight answer echoes the
// request's Access-Control-Request-Method / -Headers.
func TestCORSPreflightStarEchoesRequest(t *testing.T) {
	c := CompileCORS(&model.CORS{AllowOrigins: []model.StringMatch{{Exact: "*", Kind: "exact"}}, AllowMethods: "*", AllowHeaders: "*"})
	pre := httptest.NewRequest("OPTIONS", "/", nil)
	pre.Header.Set("Origin", "https://a.example")
	pre.Header.Set("Access-Control-Request-Method", "DELETE")
	pre.Header.Set("Access-Control-Request-Headers", "x-a, x-b")
	res := c.Evaluate(pre)
	if res.Headers.Get("Access-Control-Allow-Methods") != "DELETE" || res.Headers.Get("Access-Control-Allow-Headers") != "x-a, x-b" {
		t.Errorf(`"*" methods/headers: %v`, res.Headers)
	}
}

// allow_private_network_access: a preflight asking for it
// (Access-Control-Request-Private-Network: true) is granted it.
func TestCORSPrivateNetworkAccess(t *testing.T) {
	c := CompileCORS(&model.CORS{AllowOrigins: []model.StringMatch{{Exact: "*", Kind: "exact"}}, AllowPrivateNetworkAccess: ptr(true)})
	pre := httptest.NewRequest("OPTIONS", "/", nil)
	pre.Header.Set("Origin", "https://a.example")
	pre.Header.Set("Access-Control-Request-Method", "GET")
	pre.Header.Set("Access-Control-Request-Private-Network", "true")
	if got := c.Evaluate(pre).Headers.Get("Access-Control-Allow-Private-Network"); got != "true" {
		t.Errorf("allow-private-network %q", got)
	}
}
