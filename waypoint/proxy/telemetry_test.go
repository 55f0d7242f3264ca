package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// TestMetricsIdentityFromPeer: the source is the workload at the TCP peer
// address, never the one the PROXY header names; the destination is the
// endpoint's workload and the cluster's service.
func TestMetricsIdentityFromPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "reviews") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	be := mustAddrPort(ln.Addr().String())

	peers := &model.Peers{ByAddress: map[netip.Addr]*model.Peer{
		netip.MustParseAddr("127.0.0.3"): {Name: "productpage-v1-abc", Namespace: "bookinfo", WorkloadName: "productpage-v1", ServiceAccount: "bookinfo-productpage",
			CanonicalName: "productpage", CanonicalRevision: "v1", ClusterID: "Kubernetes"},
		netip.MustParseAddr("127.0.0.2"): {Name: "reviews-v1-xyz", Namespace: "bookinfo", WorkloadName: "reviews-v1", ServiceAccount: "bookinfo-reviews",
			CanonicalName: "reviews", CanonicalRevision: "v1", ClusterID: "Kubernetes"},
		netip.MustParseAddr("10.0.0.99"): {Name: "attacker", Namespace: "evil", WorkloadName: "attacker", CanonicalName: "attacker"},
	}}
	s := httpSnapshot(oneRoute(fwd("reviews")), false, &model.Cluster{Name: "reviews", Endpoints: endpoints(be),
		Service: model.ServiceRef{Hostname: "reviews.bookinfo.svc.cluster.local", Name: "reviews", Namespace: "bookinfo"}})
	s.Peers = peers
	te := newTestEngine(t, Options{})
	te.apply(s)

	// From 127.0.0.3, claiming to be 10.0.0.99 in the header.
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
		c, err := d.DialContext(ctx, "tcp", te.addr("main").String())
		if err != nil {
			return nil, err
		}
		h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(mustAddrPort("10.0.0.99:1234")), net.TCPAddrFromAddrPort(serviceVIP))
		_, err = h.WriteTo(c)
		return c, err
	}
	c := &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: 5 * time.Second}
	for range 3 {
		if code, _, _ := get(t, c, "http://reviews.bookinfo:9080/reviews/0"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	text := metricsText(t, te)
	series := grep(text, "istio_requests_total{")
	want := `istio_requests_total{connection_security_policy="none",destination_app="reviews",destination_canonical_revision="v1",destination_canonical_service="reviews",destination_cluster="Kubernetes",destination_principal="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",destination_service="reviews.bookinfo.svc.cluster.local",destination_service_name="reviews",destination_service_namespace="bookinfo",destination_version="v1",destination_workload="reviews-v1",destination_workload_namespace="bookinfo",grpc_response_status="",reporter="waypoint",request_protocol="http",response_code="200",response_flags="-",source_app="productpage",source_canonical_revision="v1",source_canonical_service="productpage",source_cluster="Kubernetes",source_principal="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",source_version="v1",source_workload="productpage-v1",source_workload_namespace="bookinfo"} 3`
	if series != want {
		t.Errorf("series:\n%s\nwant:\n%s", series, want)
	}
	if strings.Contains(text, "attacker") {
		t.Error("an identity was taken from the PROXY header")
	}
	for _, h := range []string{"istio_request_duration_milliseconds_count", "istio_request_bytes_count", "istio_response_bytes_count"} {
		if l := grep(text, h); !strings.Contains(l, `source_workload="productpage-v1"`) || !strings.HasSuffix(l, "} 3") {
			t.Errorf("%s:\n%s", h, grep(text, h))
		}
	}
	// The sizes themselves: TestRequestAndResponseSizesAreWireBytes.
}

// istio_request_bytes and istio_response_bytes are the stream's wire
// bytes, as Istio's filter reads them from Envoy's downstream bytes
// meter: the head and the body with its chunk framing, each way (the
// access log's bytes_received and bytes_sent stay the bodies').
func TestRequestAndResponseSizesAreWireBytes(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/chunked" {
			// No length: the waypoint answers chunked.
			io.WriteString(w, "part one,")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part two")
			return
		}
		io.WriteString(w, "reviews")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	wantIn, wantOut, bodies := 0, 0, 0
	for _, rq := range []string{
		"POST /sized HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\n\r\nhello",
		"POST /chunked HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /chunked HTTP/1.1\r\nHost: reviews\r\n\r\n",
	} {
		if _, err := io.WriteString(conn, rq); err != nil {
			t.Fatal(err)
		}
		wantIn += len(rq)
		// The answer's bytes as they came: the response is read through a
		// copy of everything taken from the connection.
		var raw bytes.Buffer
		resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(br, &raw)), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%q: %d %v", rq, resp.StatusCode, err)
		}
		bodies += len(b)
		wantOut += raw.Len()
	}
	text := metricsText(t, te)
	eventually(t, "three requests counted", func() bool {
		text = metricsText(t, te)
		// Each histogram is observed in turn: both counts, then the sums.
		return strings.HasSuffix(grep(text, "istio_request_bytes_count"), "} 3") && strings.HasSuffix(grep(text, "istio_response_bytes_count"), "} 3")
	})
	if got := grep(text, "istio_request_bytes_sum"); !strings.HasSuffix(got, fmt.Sprintf("} %d", wantIn)) {
		t.Errorf("request bytes, want %d on the wire: %s", wantIn, got)
	}
	if got := grep(text, "istio_response_bytes_sum"); !strings.HasSuffix(got, fmt.Sprintf("} %d", wantOut)) {
		t.Errorf("response bytes, want %d on the wire (bodies %d): %s", wantOut, bodies, got)
	}
}

func TestAccessLogLines(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { io.ReadAll(r.Body); io.WriteString(w, "0123456789") })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	req, _ := http.NewRequest("POST", "http://reviews:9080/a/b?c=d", strings.NewReader("abc"))
	req.Header.Set("User-Agent", "tester/1")
	req.Header.Set("X-Request-Id", "rid-1")
	req.Header.Set("X-Forwarded-For", "1.2.3.4")
	req.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	resp, err := client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	eventually(t, "a line", func() bool { return strings.Count(te.access.String(), "\n") == 1 })
	var e map[string]any
	if err := json.Unmarshal([]byte(te.access.String()), &e); err != nil {
		t.Fatal(err)
	}
	// response_code_details: Envoy's for an answer the endpoint gave.
	want := map[string]any{"method": "POST", "path": "/a/b?c=d", "protocol": "HTTP/1.1", "response_code": 200.0, "response_flags": "-",
		"response_code_details": "via_upstream", "bytes_received": 3.0, "bytes_sent": 10.0, "upstream_host": be.String(), "upstream_cluster": "c", "route_name": "to-c", "request_id": "rid-1",
		"authority": "reviews:9080", "user_agent": "tester/1", "x_forwarded_for": "1.2.3.4", "downstream_local_address": "10.96.0.10:80",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %#v, want %#v", k, e[k], v)
		}
	}
	// The stream's client, as Envoy's HCM sets it without
	// use_remote_address (istiod's waypoint): the last X-Forwarded-For
	// address, with port 0 as Envoy parses it.
	if ra := e["downstream_remote_address"]; ra != "1.2.3.4:0" {
		t.Errorf("downstream_remote_address %v, want X-Forwarded-For's 1.2.3.4:0", ra)
	}
}

// Without X-Forwarded-For, the access log's client is the PROXY header's
// source (Envoy's proxy_protocol filter makes it the connection's remote
// address), not the TCP peer.
func TestAccessLogClientIsTheProxyHeadersSource(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	if code, _, _ := get(t, client(te.addr("main")), "http://reviews:9080/"); code != 200 {
		t.Fatalf("code %d", code)
	}
	eventually(t, "a line", func() bool { return strings.Count(te.access.String(), "\n") == 1 })
	var e map[string]any
	if err := json.Unmarshal([]byte(te.access.String()), &e); err != nil {
		t.Fatal(err)
	}
	if ra, _ := e["downstream_remote_address"].(string); !strings.HasPrefix(ra, "10.0.0.9:") {
		t.Errorf("downstream_remote_address %q is not the PROXY header's source", ra)
	}
}

// TestGRPCStatusFromHTTPStatus: a gRPC request answered without a
// grpc-status (a plain HTTP error from the endpoint) is labelled with
// the status the HTTP code maps to, as Envoy's getGrpcStatus infers it
// for Istio's filter: 503 is UNAVAILABLE (14).
func TestGRPCStatusFromHTTPStatus(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) })
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	req, _ := http.NewRequest("POST", "http://reviews:9080/pkg.Svc/Call", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	var l string
	eventually(t, "the request counted", func() bool { l = grep(metricsText(t, te), "istio_requests_total{"); return l != "" })
	if !strings.Contains(l, `response_code="503"`) || !strings.Contains(l, `grpc_response_status="14"`) || !strings.Contains(l, `request_protocol="grpc"`) {
		t.Errorf("series: %s", l)
	}
}

// TestAccessLogUpstreamServiceTime: Istio's upstream_service_time is
// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%, the response header as the
// client got it: a JSON string, the header's value.
func TestAccessLogUpstreamServiceTime(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(15 * time.Millisecond)
		io.WriteString(w, "ok")
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	code, _, resp := get(t, client(te.addr("main")), "http://reviews:9080/")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	sent := resp.Header.Get("X-Envoy-Upstream-Service-Time")
	if sent == "" {
		t.Fatal("no x-envoy-upstream-service-time")
	}
	eventually(t, "a line", func() bool { return strings.Count(te.access.String(), "\n") == 1 })
	var e map[string]any
	if err := json.Unmarshal([]byte(te.access.String()), &e); err != nil {
		t.Fatal(err)
	}
	if e["upstream_service_time"] != sent {
		t.Errorf("upstream_service_time %#v, the header said %q", e["upstream_service_time"], sent)
	}
}

// A chunked answer the endpoint breaks off mid-body is aborted (the
// connection closes without the last chunk): its wire size is what went
// out, not a last chunk that never did.
func TestResponseSizeOfAnAbortedChunkedAnswer(t *testing.T) {
	be := backend(t, func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		brw.Flush()
		time.Sleep(20 * time.Millisecond)
		c.Close()
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	conn, err := dialer(te.addr("main"), clientAddr, serviceVIP)(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /cut HTTP/1.1\r\nHost: reviews\r\n\r\n")
	raw, _ := io.ReadAll(conn)
	if !bytes.Contains(raw, []byte("hello")) {
		t.Fatalf("no partial answer: %q", raw)
	}
	var text string
	eventually(t, "the request counted", func() bool {
		text = metricsText(t, te)
		return strings.HasSuffix(grep(text, "istio_response_bytes_count"), "} 1")
	})
	if got := grep(text, "istio_response_bytes_sum"); !strings.HasSuffix(got, fmt.Sprintf("} %d", len(raw))) {
		t.Errorf("response bytes, want the %d that went out: %s", len(raw), got)
	}
}
