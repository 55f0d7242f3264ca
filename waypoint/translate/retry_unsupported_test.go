package translate

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Retry settings not applied here are reported, not dropped.
func TestRetryPolicyUnappliedReported(t *testing.T) {
	for name, rp := range map[string]*routev3.RetryPolicy{
		"per_try_idle_timeout":     {RetryOn: "5xx", PerTryIdleTimeout: durationpb.New(1e9)},
		"retry_options_predicates": {RetryOn: "5xx", RetryOptionsPredicates: []*corev3.TypedExtensionConfig{{Name: "acme"}}},
	} {
		tr := &translator{}
		if _, err := tr.retryPolicy(rp, "x"); err != nil {
			t.Fatal(err)
		}
		if len(tr.unsup) != 1 {
			t.Errorf("%s: unsupported %+v, want one report", name, tr.unsup)
		}
	}
}

// Envoy does not validate retriable_status_codes: an unusual code is kept
// (it matches a response with that status), not a rejected route.
func TestRetriableStatusCodesNotValidated(t *testing.T) {
	tr := &translator{}
	rp, err := tr.retryPolicy(&routev3.RetryPolicy{RetryOn: "retriable-status-codes", RetriableStatusCodes: []uint32{600, 503}}, "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(rp.RetriableStatusCodes) != 2 || rp.RetriableStatusCodes[0] != 600 {
		t.Errorf("codes %v", rp.RetriableStatusCodes)
	}
}

// Envoy keeps back-off intervals in whole milliseconds, at least 1 ms, and
// compares max with base after that rounding.
func TestRetryBackOffMilliseconds(t *testing.T) {
	tr := &translator{}
	rp, err := tr.retryPolicy(&routev3.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
		BaseInterval: durationpb.New(1500 * time.Microsecond), MaxInterval: durationpb.New(1200 * time.Microsecond)}}, "x")
	if err != nil {
		t.Fatal(err)
	}
	if rp.BackoffBase != time.Millisecond || rp.BackoffMax != time.Millisecond {
		t.Errorf("base %v max %v, want 1ms 1ms", rp.BackoffBase, rp.BackoffMax)
	}
	rp, err = tr.retryPolicy(&routev3.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
		BaseInterval: durationpb.New(300 * time.Microsecond)}}, "x")
	if err != nil || rp.BackoffBase != time.Millisecond {
		t.Errorf("sub-ms base: %v, %v", err, rp)
	}
}
