package model

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
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

func TestDumpOutlierDetection(t *testing.T) {
	s := &Snapshot{Clusters: map[string]*Cluster{"c": {Name: "c", Outlier: &OutlierDetection{Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
		ConsecutiveGatewayFailure: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 10}}}}
	c := Dump(s).Clusters[0]
	if c.Outlier == nil || c.Outlier.Consecutive5xx != 5 || c.Outlier.ConsecutiveGatewayFailure != 0 || c.Outlier.Interval != "10s" || c.PanicThreshold != 0 {
		t.Fatalf("%+v %+v", c, c.Outlier)
	}
	if got, want := c.Outlier.String(), "5 5xx in a row; out 30s+, at most 10%"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

// The config dump shows a route's hash policies in order.
func TestDumpHashPolicies(t *testing.T) {
	ttl := int64(3600)
	r := &Route{Forward: &ForwardAction{Cluster: "c", Hash: []HashPolicy{
		{Header: "X-User", Terminal: true}, {Cookie: &HashCookie{Name: "sess", TTL: &ttl, Path: "/"}},
		{Cookie: &HashCookie{Name: "plain"}}, {SourceIP: true}, {QueryParameter: "u"}}}}
	got := strings.Join(dumpRoute(r, nil, nil).Hash, "|")
	want := "header X-User terminal|cookie sess ttl=3600s path=/|cookie plain|source_ip|query u"
	if got != want {
		t.Errorf("hash %q, want %q", got, want)
	}
}
