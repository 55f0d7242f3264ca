package filter

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// reset-before-request retries only when no byte of the request went out:
// a refused stream's headers did, so it is not covered (only a connect
// failure is).
func TestRetryResetBeforeRequest(t *testing.T) {
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"reset-before-request": true}, NumRetries: 1})
	if !r.RetriableFailure(ConnectFailure) {
		t.Error("connect failure not retried")
	}
	for _, f := range []Failure{RefusedStream, Reset, PerTryTimeout} {
		if r.RetriableFailure(f) {
			t.Errorf("failure %d retried after the request went out", f)
		}
	}
}
