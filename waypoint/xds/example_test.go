package xds_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
	wpxds "github.com/kmesh-go/kmesh/waypoint/xds"
)

// engine stands for the waypoint's proxy engine.
type engine struct{}

func (engine) Apply(*model.Snapshot) error { return nil }

// How kmesh-waypoint wires its istiod session: identity from the pod's
// downward API, the engine's Apply as the callback, the snapshot dumped on
// the admin port for kmeshctl.
func Example() {
	var eng engine
	s, err := wpxds.New(wpxds.Config{
		Address:      "istiod.istio-system.svc:15012",
		RootCertFile: "/var/run/secrets/istio/root-cert.pem",
		TokenFile:    "/var/run/secrets/tokens/istio-token",
		Node: wpxds.Node{
			PodIP:          netip.MustParseAddr("10.244.0.7"), // INSTANCE_IP
			PodName:        "waypoint-6d8f9-x2x4q",            // POD_NAME
			Namespace:      "default",                         // POD_NAMESPACE
			ServiceAccount: "waypoint",                        // SERVICE_ACCOUNT
			GatewayName:    "waypoint",                        // the Gateway this pod serves
		},
		Translate: translate.IstiodOptions(), // 0.0.0.0:15019 with the PROXY protocol
		Apply:     eng.Apply,
		Logger:    slog.Default(),
	})
	if err != nil {
		panic(err)
	}
	go s.Run(context.Background())
	http.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(model.Dump(s.Snapshot()))
	})
}
