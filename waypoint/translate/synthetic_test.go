package translate_test

import (
	"net/netip"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	"github.com/kmesh-go/kmesh/waypoint/translate/translatetest"
)

func connInfo(dst, proto string) model.ConnInfo {
	return model.ConnInfo{Destination: netip.MustParseAddrPort(dst), Protocol: proto}
}

func TestSyntheticTranslates(t *testing.T) {
	snap, err := translate.Translate(translatetest.Synthetic(50), translate.IstiodOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Listeners) != 1 || len(snap.Listeners[0].Chains) != 50 || len(snap.Clusters) != 50 {
		t.Fatalf("listeners %d, clusters %d", len(snap.Listeners), len(snap.Clusters))
	}
	l := snap.Listeners[0]
	got := l.Select.Select(connInfo("10.96.0.7:80", ""))
	if got != "inbound-vip|80|http|svc-7.ns-7.svc.cluster.local" {
		t.Fatalf("chain %q", got)
	}
	c := snap.Clusters[got]
	if c.Kind != "eds" || len(c.Endpoints[0]) != 3 || c.Endpoints[0][0].Address.Port() != 8080 || c.LB != "least_request" {
		t.Fatalf("cluster %+v", c)
	}
}

func BenchmarkTranslate1000(b *testing.B) {
	in := translatetest.Synthetic(1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := translate.Translate(in, translate.IstiodOptions()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPush1000 is a push as the waypoint sees it: istiod resends the
// whole dispatch listener (decoded afresh) and the memo keeps the rest.
func BenchmarkPush1000(b *testing.B) {
	in := translatetest.Synthetic(1000)
	raw, err := proto.Marshal(in.Listeners[0])
	if err != nil {
		b.Fatal(err)
	}
	in.Memo = translate.NewMemo()
	if _, err := translate.Translate(in, translate.IstiodOptions()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		l := &listenerv3.Listener{}
		if err := proto.Unmarshal(raw, l); err != nil {
			b.Fatal(err)
		}
		in.Listeners = []*listenerv3.Listener{l}
		if _, err := translate.Translate(in, translate.IstiodOptions()); err != nil {
			b.Fatal(err)
		}
	}
}
