package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/daemon/admin"
)

// The connection views read what the daemon's telemetry writes: the
// entries here are the server's own type, encoded as the admin API does.
// (The admin kernel test covers the handler; live connections need the
// telemetry kernel test's traffic.)
func TestConnectionViews(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	open := admin.Connection{Time: start.Add(90 * time.Second), Start: start, Reporter: "source",
		Source:      admin.Endpoint{Address: "10.0.0.40:40000", Workload: "client", Namespace: "default"},
		Destination: admin.Endpoint{Address: "10.0.0.11:8080", Workload: "web-1", Namespace: "default"},
		Dialled:     "10.96.0.10:80", Service: "web.default.svc.cluster.local", RequestBytes: 2048, ResponseBytes: 3 << 20,
		DurationMs: 90000, RTTMicros: 150, Retransmits: 1, Accelerated: true, ID: 7}
	direct := admin.Connection{Time: start, Start: start, Reporter: "destination",
		Source:      admin.Endpoint{Address: "10.0.0.99:1234"},
		Destination: admin.Endpoint{Address: "10.0.0.12:8080", Workload: "web-2", Namespace: "default"},
		Result:      "closed", ID: 8}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/debug/connections":
			_ = json.NewEncoder(w).Encode([]admin.Connection{open, direct})
		case "/debug/accesslog":
			enc := json.NewEncoder(w) // one entry per line
			_ = enc.Encode(direct)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	var out bytes.Buffer
	c := client{base: srv.URL, out: &out}
	if err := c.showConnections(); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"default/client", "default/web-1", "web.default.svc.cluster.local", "2.0KiB", "3.0MiB", "1m30s", "150µs", "true",
		"10.0.0.99:1234", "default/web-2"} {
		if !strings.Contains(got, want) {
			t.Errorf("connections: no %q in\n%s", want, got)
		}
	}

	out.Reset()
	if err := c.top(time.Second, 1); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "2 open connection ends") || !strings.Contains(got, "default/client") {
		t.Errorf("top:\n%s", got)
	}

	out.Reset()
	if err := c.logs(false); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "10.0.0.99:1234 -> default/web-2 (10.0.0.12:8080) via -: 0B up") || !strings.Contains(got, "closed") {
		t.Errorf("logs:\n%s", got)
	}
}

// logs -o json is one JSON object a line, as the admin API writes them; a
// line that is not one (a proxy's error page, a truncated write) is an
// error, as it is for the table, not passed on to the script reading it.
func TestLogsJSONLinesAreJSON(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("{\"reporter\":\"source\"}\n<html>oops</html>\n"))
	}))
	defer srv.Close()
	var out bytes.Buffer
	err := client{base: srv.URL, json: true, out: &out}.logs(false)
	if err == nil || strings.Contains(out.String(), "<html>") {
		t.Errorf("logs -o json: %v, printed %q", err, out.String())
	}
	if !strings.Contains(out.String(), `{"reporter":"source"}`) {
		t.Errorf("logs -o json lost the good line: %q", out.String())
	}
}

// logs without -f is one answer like any other command's and gives up on
// a server that never finishes it; only -f waits for ever.
func TestLogsWithoutFollowTimesOut(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	was := requestTimeout
	requestTimeout = 200 * time.Millisecond
	defer func() { requestTimeout = was }()
	done := make(chan error, 1)
	go func() { done <- client{base: srv.URL, out: &bytes.Buffer{}}.logs(false) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("logs from a server that never finished: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("logs without -f still waiting after 5s")
	}
}

// top draws a screen's worth of rows and says how many it left out,
// rather than cutting the table without a word.
func TestTopSaysWhatItLeavesOut(t *testing.T) {
	var es []admin.Connection
	for i := range topRows + 5 {
		es = append(es, admin.Connection{ID: uint64(i + 1), Reporter: "source",
			Source: admin.Endpoint{Address: "10.0.0.1:1"}, Destination: admin.Endpoint{Address: "10.0.0.2:80"}})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(es)
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := (client{base: srv.URL, out: &out}).top(time.Second, 1); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "(5 more)") || strings.Count(got, "10.0.0.2:80") != topRows {
		t.Errorf("top of %d connections:\n%s", len(es), got)
	}
}

// kmeshctl help answers with the usage on standard output and exit 0, as
// -h does; it is not a wrong command line.
func TestHelpCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := runCLI([]string{"help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "usage: kmeshctl") {
		t.Errorf("help: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
}
