package filter

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// 5xx is 500 to 599: a status of 600 or more is not one.
func TestRetry5xxRange(t *testing.T) {
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"5xx": true}, NumRetries: 1})
	if !r.RetriableResponse(599, nil) {
		t.Error("599 not retried")
	}
	if r.RetriableResponse(600, nil) {
		t.Error("600 retried under 5xx")
	}
}
