package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/bootstrap"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// TestWaypointViews reads a real dump (the demo config through the
// translator) from a real HTTP server.
func TestWaypointViews(t *testing.T) {
	snap, err := bootstrap.Load("../conf/waypoint-demo.yaml", translate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(model.Dump(snap))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/config_dump" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	for view, want := range map[string][]string{
		"listeners": {"LISTENER waypoint", "0.0.0.0:15019", "PROXY protocol", "web-http", "http", "routes web", "web-tcp", "to web-tcp", "10.96.0.20/32", "80", "9000"},
		"routes":    {"web", "prefix /slow", "web-v1", "delay 1s 50%", "web-v1 90, web-v2 10", "2x on 5xx,connect-failure,refused-stream per try 1s", "5s", "prefix /flaky", "web-all"},
		"clusters":  {"web-v1", "static", "round_robin", "2/2 healthy", "2s", "web-tcp"},
		"endpoints": {"web-v1", "10.244.0.15:8080", "10.244.0.16:8080", "10.244.0.15:9000", "true"},
	} {
		var out bytes.Buffer
		if err := (client{base: srv.URL, out: &out}).waypoint(view); err != nil {
			t.Fatalf("%s: %v", view, err)
		}
		for _, w := range want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: no %q in\n%s", view, w, out.String())
			}
		}
	}

	// -o json decodes into the server's own types.
	var out bytes.Buffer
	if err := (client{base: srv.URL, json: true, out: &out}).waypoint("clusters"); err != nil {
		t.Fatal(err)
	}
	var cs []model.ClusterDump
	if err := json.Unmarshal(out.Bytes(), &cs); err != nil || len(cs) != 4 || cs[0].Name != "web-all" {
		t.Fatalf("clusters JSON %s: %v", out.String(), err)
	}
	if err := (client{base: srv.URL, out: &out}).waypoint("bogus"); err == nil {
		t.Fatal("an unknown view was accepted")
	}
	if err := (client{base: "http://127.0.0.1:1", server: "kmesh-waypoint", out: &out}).waypoint("listeners"); err == nil || !strings.Contains(err.Error(), "kmesh-waypoint") {
		t.Fatalf("unreachable admin: %v", err)
	}
}

// A listener's title line is not a row of its chain table: sharing the
// table's columns, it widened them to the listener's name, address and
// PROXY protocol note.
func TestWaypointListenerTableAligned(t *testing.T) {
	d := model.ConfigDump{Version: "v1", Listeners: []model.ListenerDump{{
		Name: "a-rather-long-listener-name", Address: "0.0.0.0:15019", ProxyProtocol: true,
		Chains: []model.ChainDump{{Name: "web", Kind: "tcp", Service: "s", Clusters: []model.WeightDump{{Cluster: "c"}}}},
	}}}
	var out bytes.Buffer
	if err := renderWaypoint(&d, "listeners", &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.HasPrefix(lines[0], "LISTENER a-rather-long-listener-name") {
		t.Fatalf("title: %q", lines[0])
	}
	// The chain table is as wide as its own cells: CHAIN is the widest.
	if lines[1] != "CHAIN  KIND  SERVICE  DETAIL" || lines[2] != "web    tcp   s        to c" {
		t.Errorf("chain table misaligned:\n%s", out.String())
	}
}

// An empty cell is "-", as dump services writes a service without a
// waypoint: a blank in the middle of a row shifts every column after it
// for awk and for the eye.
func TestWaypointEmptyCells(t *testing.T) {
	d := model.ConfigDump{
		Listeners: []model.ListenerDump{{Name: "l", Chains: []model.ChainDump{{Name: "c", Kind: "tcp"}}}},
		Clusters:  []model.ClusterDump{{Name: "c", Kind: "static", LB: "round_robin", Protocol: "http1"}},
		Endpoints: []model.EndpointsDump{{Cluster: "c", Priorities: [][]model.Endpoint{{{Address: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1}}}}},
	}
	for view, cols := range map[string]int{"listeners": 4, "clusters": 9, "endpoints": 6} {
		var out bytes.Buffer
		if err := renderWaypoint(&d, view, &out); err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(l, "c ") {
				if f := strings.Fields(l); len(f) != cols {
					t.Errorf("%s: row %q has %d fields, want %d", view, l, len(f), cols)
				}
			}
		}
	}
}

// waypoint status shows whether the waypoint serves a configuration and
// its source's fields, one a line (and the object itself with -o json).
func TestWaypointStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/status" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": true, "source": map[string]any{
			"connected": true, "acks": 12, "lastNACK": "", "versions": map[string]any{"lds": "v3"}}})
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := (client{base: srv.URL, server: "kmesh-waypoint", out: &out}).waypoint("status"); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"ready      true", "acks       12", "connected  true", "lastNACK   -", `versions   {"lds":"v3"}`} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
	out.Reset()
	if err := (client{base: srv.URL, server: "kmesh-waypoint", json: true, out: &out}).waypoint("status"); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back["ready"] != true {
		t.Errorf("-o json: %v\n%s", err, out.String())
	}
}
