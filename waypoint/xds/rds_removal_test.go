package xds

import (
	"context"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// A delta RDS removal of a route configuration a listener still names is
// ignored, as Envoy ignores it: the last routes keep serving (without them
// every request would get 503 route_configuration_missing).
func TestRDSRemovalOfRoutesInUseIgnored(t *testing.T) {
	srv := startIstiod(t)
	l, rc := rdsConfig(90)
	srv.Set(translate.TypeListener, map[string]types.Resource{"main_internal": l})
	srv.Set(translate.TypeCluster, map[string]types.Resource{})
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": rc})
	var got applied
	s, err := New(Config{Address: srv.Addr(), Plaintext: true, Node: testNode(), Apply: got.apply, WarmTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	routes := func(sn *model.Snapshot) *model.RouteTable { return sn.Listeners[0].Chains["web"].HTTP.Routes }
	got.wait(t, "routes", func(sn *model.Snapshot) bool { return routes(sn) != nil })
	srv.Set(translate.TypeRoute, map[string]types.Resource{"web-routes": nil})
	time.Sleep(300 * time.Millisecond)
	if sn := s.Snapshot(); routes(sn) == nil {
		t.Errorf("snapshot %s: RDS removal of a route still referenced dropped the table (Envoy keeps it)", sn.Version)
	}
}
