package nodebox

import (
	"os"
	"strconv"
	"testing"
	"time"
)

func TestOwnerGone(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name string
		gone bool
	}{
		{"kmdemo-" + self + "-1", false},           // this process
		{"kmdemo-1-1-node", false},                 // init is always there
		{"kmdemo-2147483647-3", true},              // beyond pid_max: gone
		{"kmdemo-2147483647-3-p7", true},           // a pod of it
		{"kmdemo-2147483647-3-node-x8812", true},   // its work folder
		{"kmdemo-2147483647", false},               // no box number
		{"kmdemo-2147483647-", false},              // empty rest
		{"kmdemo-x-1", false},                      // not a pid
		{"kmdemo2-2147483647-1", false},            // another prefix
		{"other-kmdemo-2147483647-1", false},       // not ours
		{"kmdemoextra-2147483647-1", false},        // longer prefix
		{"kmdemo--2147483647-1", false},            // no pid
		{"kmdemo-0-1", false},                      // pid 0
		{"kmdemo-" + self + "000000-1-node", true}, // a longer (dead) pid
	} {
		if got := ownerGone(tc.name, "kmdemo"); got != tc.gone {
			t.Errorf("ownerGone(%q) = %v, want %v", tc.name, got, tc.gone)
		}
	}
}

func TestProcCPU(t *testing.T) {
	// Burn a little CPU so the counters move, then read our own.
	deadline := time.Now().Add(30 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	u, s, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u+s <= 0 {
		t.Fatalf("user %v + system %v after burning 30ms", u, s)
	}
}
