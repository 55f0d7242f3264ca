package filter

import (
	"net/http"
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Since Envoy 1.16 an upstream's x-envoy-overloaded does not stop a retry.
func TestRetryOverloadedRetried(t *testing.T) {
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 1})
	if !r.RetriableResponse(503, http.Header{"X-Envoy-Overloaded": {"true"}}) {
		t.Error("overloaded 503 under 5xx not retried")
	}
}
