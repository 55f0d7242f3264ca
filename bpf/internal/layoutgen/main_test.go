package main

import (
	"bytes"
	"os"
	"testing"
)

// bpf/layout/types.go is what this generator makes of the committed
// object: a hand edit, or an object rebuilt without regenerating, fails
// here without clang (make verify-generate checks the object itself).
func TestCommittedTypesMatchTheObject(t *testing.T) {
	want, err := generate("../../kmesh_bpfel.o", "layout")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../../layout/types.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bpf/layout/types.go is stale: run make generate")
	}
}

func TestNames(t *testing.T) {
	for in, want := range map[string]string{
		"lb_policy": "LBPolicy", "STAT_TCP_SOCK_FULL": "StatTCPSockFull",
		"authz_ps_value": "AuthzPSValue", "srtt_us": "SRTTUs", "ep_count": "EpCount",
	} {
		if got := camel(in); got != want {
			t.Errorf("camel(%q) = %q, want %q", in, got, want)
		}
	}
}
