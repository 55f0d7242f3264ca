package main

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/waypoint/admin"
)

// The admin and status servers close a kept connection left idle: the
// status port is open to the pod network, and Go's server otherwise holds
// an idle connection for ever.
func TestAdminServersCloseIdleConnections(t *testing.T) {
	o := &options{adminAddress: "127.0.0.1:0", statusAddress: "127.0.0.2:0"}
	servers, err := serveAdmin(o, admin.Source{}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 2 {
		t.Fatalf("%d servers, want admin and status", len(servers))
	}
	for _, s := range servers {
		defer s.Close()
		if s.IdleTimeout <= 0 {
			t.Errorf("a server without an idle timeout: idle connections are held for ever")
		}
	}
}
