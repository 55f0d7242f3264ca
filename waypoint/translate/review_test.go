package translate

import (
	"net/http/httptest"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kmesh-go/kmesh/waypoint/filter"
)

// An unset fault percentage is 0%, as in Envoy (the proto's default) and
// Istio's API: istiod leaves it unset for a VirtualService abort without
// one, which aborts nothing.
func TestFaultWithoutPercentageNeverApplies(t *testing.T) {
	hf := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503}}}
	a, _ := anypb.New(hf)
	tr := &translator{}
	f, err := tr.faultFromAny(a, "x")
	if err != nil {
		t.Fatal(err)
	}
	var fs filter.Faults
	aborted := 0
	for range 100 {
		r := httptest.NewRequest("GET", "/", nil)
		if d := fs.Decide(filter.CompileFault(f), r, "c"); d.AbortStatus != 0 {
			aborted++
			fs.Done()
		}
	}
	if aborted != 0 {
		t.Errorf("abort without percentage: %d/100 requests aborted (AbortPercent=%v); Envoy aborts none", aborted, f.AbortPercent)
	}
}

// retry_on reset-before-request retries connect failures (nothing of the
// request went out), as Envoy's; a condition not known here is reported.
func TestRetryOnResetBeforeRequestAndUnknown(t *testing.T) {
	tr := &translator{}
	rp, err := tr.retryPolicy(&routev3.RetryPolicy{RetryOn: "reset-before-request,envoy-ratelimited"}, "x")
	if err != nil {
		t.Fatal(err)
	}
	if !filter.NewRetry(rp).RetriableFailure(filter.ConnectFailure) {
		t.Errorf("retry_on reset-before-request: a connect failure is not retried")
	}
	if len(tr.unsup) != 0 {
		t.Errorf("known conditions reported unsupported: %+v", tr.unsup)
	}
	if _, err := tr.retryPolicy(&routev3.RetryPolicy{RetryOn: "5xx,acme-condition"}, "x"); err != nil || len(tr.unsup) != 1 || !strings.Contains(tr.unsup[0].Name, "acme-condition") {
		t.Errorf("an unknown condition: %v, unsupported %+v", err, tr.unsup)
	}
}

// A listener-level deny is each chain's own: one chain's RBAC does not
// turn a sibling's deny into a 403 with the RBAC reason.
func TestListenerDenyNotSharedBetweenChains(t *testing.T) {
	l := hcmChain(httpFilter("envoy.filters.http.rbac", typed("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")), router())
	plain := hcmChain(router())
	l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Name: "plain", Filters: plain.FilterChains[0].Filters})
	l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "acme", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed("type.googleapis.com/acme.LF")}}}
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := snap.Listeners[0].Chains["plain"].Deny
	if d.HTTPStatus != 503 || strings.Contains(d.Reason, "RBAC") {
		t.Errorf("chain without RBAC: deny %d %q (listener filter alone says 503)", d.HTTPStatus, d.Reason)
	}
}

// A transport socket is judged by its typed config's type, as Envoy
// picks the factory, not by its name: TLS named raw_buffer is still TLS
// (not terminated here: the chain denies).
func TestTransportSocketByType(t *testing.T) {
	l := hcmChain(router())
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true)})}}
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Listeners[0].Chains["only"].Deny == nil {
		t.Errorf("mTLS (require_client_certificate) chain served as plaintext: transport socket judged by name")
	}
}

// path_with_escaped_slashes_action reaches the model (istiod sends
// UNESCAPE_AND_FORWARD with DECODE_AND_MERGE_SLASHES normalization).
func TestEscapedSlashesActionTranslated(t *testing.T) {
	for a, want := range map[hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction]string{
		hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT: "",
		hcmv3.HttpConnectionManager_KEEP_UNCHANGED:                  "",
		hcmv3.HttpConnectionManager_REJECT_REQUEST:                  "reject",
		hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:           "redirect",
		hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:            "forward",
	} {
		l := hcmChain(router())
		var h hcmv3.HttpConnectionManager
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		h.PathWithEscapedSlashesAction = a
		l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&h)}
		snap, err := Translate(Input{Listeners: []*listenerv3.Listener{l}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Listeners[0].Chains["only"].HTTP.EscapedSlashes; got != want {
			t.Errorf("%s: %q, want %q", a, got, want)
		}
	}
}

// An HTTP filter disabled in the connection manager is kept, off: it
// runs only where a route or virtual host enables it (Envoy's
// typed_per_filter_config, a FilterConfig with disabled false or a
// config of its own). A disabled filter that could deny still fails
// closed.
func TestDisabledHTTPFilter(t *testing.T) {
	hf := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 500}, Percentage: &typev3.FractionalPercent{Numerator: 100}}}
	a, _ := anypb.New(hf)
	fl := httpFilter("envoy.filters.http.fault", a)
	fl.Disabled = true
	snap, err := Translate(Input{Listeners: []*listenerv3.Listener{hcmChain(fl, router())}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ch := snap.Listeners[0].Chains["only"]
	if f := ch.HTTP.Filters[0]; f.Fault == nil || !f.Off {
		t.Errorf("disabled fault filter: %+v, want it kept with Off", f)
	}
	if ch.Deny != nil || len(snap.Unsupported) != 0 {
		t.Errorf("deny %+v, unsupported %+v; want neither", ch.Deny, snap.Unsupported)
	}
	on, _ := anypb.New(&routev3.FilterConfig{})
	own, _ := anypb.New(hf)
	off, _ := anypb.New(&routev3.FilterConfig{Disabled: true})
	var tr translator
	pf, err := tr.perFilter(map[string]*anypb.Any{"a": on, "b": own, "c": off}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if !pf.Enabled["a"] || !pf.Enabled["b"] || pf.Enabled["c"] || !pf.Disabled["c"] {
		t.Errorf("enabled %v, disabled %v; want a and b enabled, c disabled", pf.Enabled, pf.Disabled)
	}
	rbac := httpFilter("envoy.filters.http.rbac", typed("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"))
	rbac.Disabled = true
	snap, err = Translate(Input{Listeners: []*listenerv3.Listener{hcmChain(rbac, router())}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Listeners[0].Chains["only"].Deny == nil {
		t.Error("a disabled RBAC filter opened the chain; it must still fail closed")
	}
}

// cluster_not_found_response_code reaches the route (istiod sets
// INTERNAL_SERVER_ERROR for waypoints).
func TestClusterNotFoundResponseCode(t *testing.T) {
	for code, want := range map[routev3.RouteAction_ClusterNotFoundResponseCode]int{
		routev3.RouteAction_SERVICE_UNAVAILABLE: 0, routev3.RouteAction_NOT_FOUND: 404, routev3.RouteAction_INTERNAL_SERVER_ERROR: 500,
	} {
		tr := &translator{}
		f, _, err := tr.forward(&routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}, ClusterNotFoundResponseCode: code}, "x")
		if err != nil || f.ClusterNotFoundStatus != want {
			t.Errorf("%s: %v, %v; want %d", code, f, err, want)
		}
	}
}

// A route configuration's own typed_per_filter_config is read (the
// least specific level), not dropped.
func TestRouteConfigPerFilter(t *testing.T) {
	hf := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 418}, Percentage: &typev3.FractionalPercent{Numerator: 100}}}
	own, _ := anypb.New(hf)
	off, _ := anypb.New(&routev3.FilterConfig{Disabled: true})
	rc := &routev3.RouteConfiguration{Name: "rc",
		TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.fault": own, "envoy.filters.http.cors": off},
		VirtualHosts:         []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}}}}
	var tr translator
	rt, err := tr.routeTable(rc, "test")
	if err != nil {
		t.Fatal(err)
	}
	if f := rt.PerFilter.Fault; f == nil || f.AbortHTTPStatus != 418 || !rt.PerFilter.Enabled["envoy.filters.http.fault"] {
		t.Errorf("table-level fault %+v enabled %v; want abort 418, enabled", f, rt.PerFilter.Enabled)
	}
	if !rt.PerFilter.Disabled["envoy.filters.http.cors"] {
		t.Errorf("table-level disabled %v; want cors", rt.PerFilter.Disabled)
	}
}

// header_abort with a percentage over MILLION: the header's percentage is
// a numerator over MILLION, as Envoy reads it.
func TestFaultHeaderPercentKeepsDenominator(t *testing.T) {
	hf := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HeaderAbort_{HeaderAbort: &faultv3.FaultAbort_HeaderAbort{}},
		Percentage: &typev3.FractionalPercent{Numerator: 1000000, Denominator: typev3.FractionalPercent_MILLION}}}
	a, _ := anypb.New(hf)
	f, err := (&translator{}).faultFromAny(a, "x")
	if err != nil {
		t.Fatal(err)
	}
	if f.AbortPercent != 100 || f.AbortDenominator != 1000000 {
		t.Errorf("abort %v%% over %d, want 100%% over 1000000", f.AbortPercent, f.AbortDenominator)
	}
}

// max_active_faults set to 0 lets no fault in (Envoy compares the active
// count, at least 0, with it); only an unset one is unbounded.
func TestFaultMaxActiveZeroInjectsNothing(t *testing.T) {
	hf := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503},
		Percentage: &typev3.FractionalPercent{Numerator: 100}}, MaxActiveFaults: wrapperspb.UInt32(0)}
	a, _ := anypb.New(hf)
	f, err := (&translator{}).faultFromAny(a, "x")
	if err != nil {
		t.Fatal(err)
	}
	var fs filter.Faults
	if d := fs.Decide(filter.CompileFault(f), httptest.NewRequest("GET", "/", nil), "c"); d.Active() {
		t.Errorf("max_active_faults 0: fault injected %+v", d)
	}
}

// istiod writes forward_not_matching_preflights on every CORS policy
// (false for unmatchedPreflights: IGNORE); it reaches the filter.
func TestCORSForwardNotMatchingPreflightsTranslated(t *testing.T) {
	c, err := corsPolicy(&corsv3.CorsPolicy{ForwardNotMatchingPreflights: wrapperspb.Bool(false)})
	if err != nil {
		t.Fatal(err)
	}
	if c.ForwardNotMatchingPreflights == nil || *c.ForwardNotMatchingPreflights {
		t.Errorf("forward_not_matching_preflights false lost: %v", c.ForwardNotMatchingPreflights)
	}
}
