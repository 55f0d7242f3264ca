package model

import (
	"encoding/json"
	"net/netip"
	"testing"
)

func TestDumpEmpty(t *testing.T) {
	b, err := json.Marshal(Dump(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":"","listeners":[],"routes":[],"clusters":[],"endpoints":[],"peers":0,"unsupported":[]}`
	if string(b) != want {
		t.Fatalf("%s", b)
	}
}

func TestPeers(t *testing.T) {
	p := &Peers{ByAddress: map[netip.Addr]*Peer{netip.MustParseAddr("10.0.0.1"): {Name: "a", Namespace: "ns", ServiceAccount: "sa"}}}
	if got := p.Lookup(netip.MustParseAddr("::ffff:10.0.0.1")); got == nil || got.Principal() != "spiffe://cluster.local/ns/ns/sa/sa" {
		t.Fatalf("%+v", got)
	}
	var none *Peers
	if none.Lookup(netip.MustParseAddr("10.0.0.1")) != nil || (*Peer)(nil).Principal() != "" {
		t.Fatal("nil peers")
	}
}
