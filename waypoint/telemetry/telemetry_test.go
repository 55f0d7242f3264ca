package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

var (
	sleep = &model.Peer{Name: "sleep-1", Namespace: "demo", WorkloadName: "sleep", ServiceAccount: "sleep", CanonicalName: "sleep", CanonicalRevision: "v1", ClusterID: "Kubernetes"}
	echo  = &model.Peer{Name: "echo-1", Namespace: "demo", WorkloadName: "echo", ServiceAccount: "echo-sa", CanonicalName: "echo", ClusterID: "Kubernetes"}
	svc   = model.ServiceRef{Hostname: "echo.demo.svc.cluster.local", Name: "echo", Namespace: "demo"}
)

func TestRequestLabels(t *testing.T) {
	m := NewMetrics(0)
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.ObserveRequest(&RequestKey{Source: sleep, Dest: echo, Service: &svc, Protocol: "http", Code: 200}, 3*time.Millisecond, 10, 2000)
	m.ObserveRequest(&RequestKey{Source: sleep, Dest: echo, Service: &svc, Protocol: "http", Code: 200}, 7*time.Millisecond, 10, 2000)
	m.ObserveRequest(&RequestKey{Protocol: "grpc", Code: 200, GRPCStatus: "14", Flags: "UH"}, time.Millisecond, 0, 0)
	want := `
# HELP istio_requests_total Requests (Istio standard metric).
# TYPE istio_requests_total counter
istio_requests_total{connection_security_policy="none",destination_app="echo",destination_canonical_revision="unknown",destination_canonical_service="echo",destination_cluster="Kubernetes",destination_principal="spiffe://cluster.local/ns/demo/sa/echo-sa",destination_service="echo.demo.svc.cluster.local",destination_service_name="echo",destination_service_namespace="demo",destination_version="unknown",destination_workload="echo",destination_workload_namespace="demo",grpc_response_status="",reporter="waypoint",request_protocol="http",response_code="200",response_flags="-",source_app="sleep",source_canonical_revision="v1",source_canonical_service="sleep",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/demo/sa/sleep",source_version="v1",source_workload="sleep",source_workload_namespace="demo"} 2
istio_requests_total{connection_security_policy="none",destination_app="unknown",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_cluster="unknown",destination_principal="unknown",destination_service="unknown",destination_service_name="unknown",destination_service_namespace="unknown",destination_version="unknown",destination_workload="unknown",destination_workload_namespace="unknown",grpc_response_status="14",reporter="waypoint",request_protocol="grpc",response_code="200",response_flags="UH",source_app="unknown",source_canonical_revision="latest",source_canonical_service="unknown",source_cluster="unknown",source_principal="unknown",source_version="unknown",source_workload="unknown",source_workload_namespace="unknown"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "istio_requests_total"); err != nil {
		t.Error(err)
	}
	// Two observations of 3 and 7 ms: both under the 10 ms bucket, one
	// under 5.
	out, _ := testutil.CollectAndFormat(m.duration, expfmt.TypeTextPlain, "istio_request_duration_milliseconds")
	for _, line := range []string{`le="5"}`, `le="10"}`} {
		found := false
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, line) && strings.Contains(l, `source_workload="sleep"`) {
				found = true
				if (line == `le="5"}` && !strings.HasSuffix(l, " 1")) || (line == `le="10"}` && !strings.HasSuffix(l, " 2")) {
					t.Errorf("bucket %s: %s", line, l)
				}
			}
		}
		if !found {
			t.Errorf("no bucket %s", line)
		}
	}
}

func TestSeriesCap(t *testing.T) {
	m := NewMetrics(5)
	for i := range 20 {
		p := &model.Peer{Name: fmt.Sprint("w", i), Namespace: "ns", CanonicalName: fmt.Sprint("w", i)}
		m.ObserveRequest(&RequestKey{Source: p, Protocol: "http", Code: 200}, time.Millisecond, 1, 1)
		m.ObserveRequest(&RequestKey{Source: p, Protocol: "http", Code: 503, Flags: "UF"}, time.Millisecond, 1, 1)
	}
	if n := testutil.CollectAndCount(m.requests); n != 5+2 {
		t.Errorf("series: %d, want 5 + 2 overflow sets (per code/flags)", n)
	}
	if v := testutil.ToFloat64(m.overflowed); v != 35 {
		t.Errorf("overflowed %v, want 35", v)
	}
	var total float64
	ch := make(chan prometheus.Metric, 100)
	m.requests.Collect(ch)
	close(ch)
	for c := range ch {
		total += testutil.ToFloat64(c.(prometheus.Collector))
	}
	if total != 40 {
		t.Errorf("requests counted %v, want all 40", total)
	}
	// TCP series are capped the same way.
	for i := range 20 {
		p := &model.Peer{Name: fmt.Sprint("w", i)}
		m.TCP(&TCPKey{Source: p}).Opened.Inc()
	}
	if n := testutil.CollectAndCount(m.tcpOpened); n != 5+1 {
		t.Errorf("tcp series %d, want 6", n)
	}
}

func TestSameLabelsAcrossSnapshots(t *testing.T) {
	m := NewMetrics(3)
	for range 10 {
		// A new snapshot makes new Peer values with the same content.
		p := *sleep
		m.ObserveRequest(&RequestKey{Source: &p, Protocol: "http", Code: 200}, time.Millisecond, 1, 1)
	}
	if n := testutil.CollectAndCount(m.requests); n != 1 || testutil.ToFloat64(m.overflowed) != 0 {
		t.Errorf("same labels from new pointers: %d series, %v overflowed", n, testutil.ToFloat64(m.overflowed))
	}
}

func TestAccessLogLine(t *testing.T) {
	var nilLog *AccessLog
	nilLog.Write(&Entry{}) // off: no panic, nothing
	if NewAccessLog(nil) != nil {
		t.Fatal("a nil writer must give the off log")
	}
	var buf bytes.Buffer
	l := NewAccessLog(&buf)
	start := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	l.Write(&Entry{Start: start, Method: "GET", Path: "/a?\"b\"\n\xff", Protocol: "HTTP/1.1", Code: 503, Flags: "UF,URX",
		BytesReceived: 3, BytesSent: 91, Duration: 12 * time.Millisecond, UpstreamHost: "10.0.0.1:80", UpstreamCluster: "c",
		RouteName: "r", RequestID: "id", Authority: "echo", UserAgent: "ua", Downstream: "10.0.0.9:5555", OriginalDst: "10.96.0.1:80",
		Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
	l.Write(&Entry{Start: start, Code: 0, UpstreamServiceTime: "2"})
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	var e map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, lines[0])
	}
	want := map[string]any{
		"start_time": "2026-01-02T03:04:05.000Z", "method": "GET", "path": "/a?\"b\"\n\ufffd", "protocol": "HTTP/1.1",
		"response_code": 503.0, "response_flags": "UF,URX", "response_code_details": nil, "bytes_received": 3.0, "bytes_sent": 91.0,
		"duration": 12.0, "upstream_service_time": nil, "upstream_host": "10.0.0.1:80", "upstream_cluster": "c", "route_name": "r",
		"request_id": "id", "authority": "echo", "user_agent": "ua", "x_forwarded_for": nil, "downstream_remote_address": "10.0.0.9:5555",
		"downstream_local_address": "10.96.0.1:80", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %#v, want %#v", k, e[k], v)
		}
	}
	if len(e) != len(want) {
		t.Errorf("%d fields, want %d", len(e), len(want))
	}
	if err := json.Unmarshal([]byte(lines[1]), &e); err != nil || e["upstream_service_time"] != "2" || e["response_flags"] != "-" {
		t.Errorf("second line %v: %s", err, lines[1])
	}
}

// TestCanonicalRevisionDefaults: as Istio's stats filter (reporter
// waypoint) labels them, a missing source revision reads "latest" (an
// unknown peer too) while source_version, the destination's revision and
// destination_version read "unknown".
func TestCanonicalRevisionDefaults(t *testing.T) {
	m := NewMetrics(0)
	noRev := &model.Peer{Name: "a-1", Namespace: "demo", WorkloadName: "a", CanonicalName: "a"}
	m.ObserveRequest(&RequestKey{Source: noRev, Dest: noRev, Protocol: "http", Code: 200}, time.Millisecond, 1, 1)
	m.ObserveRequest(&RequestKey{Protocol: "http", Code: 503, Flags: "UH"}, time.Millisecond, 1, 1)
	out, _ := testutil.CollectAndFormat(m.requests, expfmt.TypeTextPlain, "istio_requests_total")
	text := string(out)
	known := lineWith(text, `source_workload="a"`)
	unknownPeer := lineWith(text, `response_code="503"`)
	for _, c := range []struct{ line, label, want string }{
		{known, "source_canonical_revision", "latest"},
		{known, "source_version", "unknown"},
		{known, "destination_canonical_revision", "unknown"},
		{known, "destination_version", "unknown"},
		{known, "source_app", "a"},
		{unknownPeer, "source_canonical_revision", "latest"},
		{unknownPeer, "source_version", "unknown"},
		{unknownPeer, "destination_canonical_revision", "unknown"},
	} {
		if !strings.Contains(c.line, c.label+`="`+c.want+`"`) {
			t.Errorf("%s: want %q in\n%s", c.label, c.want, c.line)
		}
	}
}

func lineWith(text, s string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// TestDurationWholeMilliseconds: Istio's filter records a request's
// duration as whole milliseconds (the fraction dropped), so a 0.7 ms
// request lands in the 0.5 bucket, as 0.
func TestDurationWholeMilliseconds(t *testing.T) {
	m := NewMetrics(0)
	m.ObserveRequest(&RequestKey{Protocol: "http", Code: 200}, 700*time.Microsecond, 1, 1)
	m.ObserveRequest(&RequestKey{Protocol: "http", Code: 200}, 2900*time.Microsecond, 1, 1)
	out, _ := testutil.CollectAndFormat(m.duration, expfmt.TypeTextPlain, "istio_request_duration_milliseconds")
	text := string(out)
	if l := lineWith(text, `le="0.5"`); !strings.HasSuffix(l, " 1") {
		t.Errorf("0.5 bucket: %s", l)
	}
	if l := lineWith(text, "istio_request_duration_milliseconds_sum"); !strings.HasSuffix(l, " 2") {
		t.Errorf("sum: %s", l)
	}
}

// TestAccessLogStartTimeMillis: %START_TIME% is written as Envoy's
// default, always three fraction digits (e.g. 2016-04-15T20:17:00.310Z).
func TestAccessLogStartTimeMillis(t *testing.T) {
	for _, c := range []struct {
		ns   int
		want string
	}{{123456789, "2026-01-02T03:04:05.123Z"}, {0, "2026-01-02T03:04:05.000Z"}, {300000000, "2026-01-02T03:04:05.300Z"}} {
		var buf bytes.Buffer
		NewAccessLog(&buf).Write(&Entry{Start: time.Date(2026, 1, 2, 3, 4, 5, c.ns, time.UTC)})
		var e map[string]any
		if err := json.Unmarshal(buf.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		if e["start_time"] != c.want {
			t.Errorf("start_time %v, want %s", e["start_time"], c.want)
		}
	}
}
