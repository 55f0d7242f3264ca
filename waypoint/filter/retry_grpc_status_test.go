package filter

import (
	"net/http"
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// grpc-status is read as a number, as Envoy does: padding, a plus sign or
// leading zeros do not hide it.
func TestRetryGRPCStatusNumeric(t *testing.T) {
	r := NewRetry(&model.RetryPolicy{On: map[string]bool{"unavailable": true}, NumRetries: 1})
	for _, v := range []string{"14", "014", " 14 ", "+14"} {
		if !r.RetriableResponse(200, http.Header{"Grpc-Status": {v}}) {
			t.Errorf("grpc-status %q not retried", v)
		}
	}
	for _, v := range []string{"-14", "1 4", "", "140"} {
		if r.RetriableResponse(200, http.Header{"Grpc-Status": {v}}) {
			t.Errorf("grpc-status %q retried", v)
		}
	}
}
