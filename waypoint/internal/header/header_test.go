package header

import (
	"net/http"
	"testing"
)

// Get agrees with http.Header.Get for canonical names.
func TestGetMatchesHeaderGet(t *testing.T) {
	h := http.Header{}
	h.Set("content-type", "text/plain")
	h.Add("x-forwarded-for", "10.0.0.1")
	h.Add("x-forwarded-for", "10.0.0.2")
	h["Empty"] = nil
	for _, k := range []string{"Content-Type", "X-Forwarded-For", "Empty", "Missing"} {
		if got, want := Get(h, k), h.Get(k); got != want {
			t.Errorf("Get(%q) = %q, http.Header.Get %q", k, got, want)
		}
	}
}
