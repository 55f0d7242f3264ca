package filter

import (
	"net/http"
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// An upstream Envoy's rate-limited answer is retried only under
// envoy-ratelimited, even when its status matches another condition.
func TestRetryRateLimitedOnlyUnderEnvoyRateLimited(t *testing.T) {
	rl := http.Header{"X-Envoy-Ratelimited": {"true"}}
	for _, on := range []string{"5xx", "gateway-error", "retriable-status-codes"} {
		r := NewRetry(&model.RetryPolicy{On: map[string]bool{on: true}, NumRetries: 1, RetriableStatusCodes: []int{503}})
		if r.RetriableResponse(503, rl) {
			t.Errorf("%s: rate-limited 503 retried", on)
		}
	}
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"envoy-ratelimited": true}, NumRetries: 1})
	if !r.RetriableResponse(429, rl) {
		t.Error("envoy-ratelimited: rate-limited 429 not retried")
	}
}
