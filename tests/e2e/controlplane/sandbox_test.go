package controlplane

import (
	"os"
	"strconv"
	"testing"
)

func TestSandboxOwnerGone(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name string
		gone bool
	}{
		{"kmesh-e2e-cp-" + self + "-1", false},     // this process: still running
		{"kmesh-e2e-cp-1-1", false},                // init is always there
		{"kmesh-e2e-cp-2147483647-3", true},        // beyond pid_max: gone
		{"kmesh-e2e-cp-2147483647", false},         // no sequence number
		{"kmesh-e2e-cp-x-1", false},                // not a PID
		{"kmesh-e2e-cpx-2147483647-1", false},      // other prefix
		{"kmesh-e2e-cp-extra-2147483647-1", false}, // longer prefix
		{"other-2147483647-1", false},              // not ours at all
		{"kmesh-e2e-cp-2147483647-1-rest", false},  // trailing junk
	} {
		if got := sandboxOwnerGone(tc.name, "kmesh-e2e-cp"); got != tc.gone {
			t.Errorf("sandboxOwnerGone(%q) = %v, want %v", tc.name, got, tc.gone)
		}
	}
}
