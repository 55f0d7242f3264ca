package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// HTTP/2 and gRPC behaviour that Envoy's router defines and clients rely
// on.

// A stream's response headers reach the client before any body: an
// upstream that answers with headers and then waits for the client's
// next message must not deadlock (the client waits for the headers).
func TestStreamHeadersFlushedBeforeBody(t *testing.T) {
	be := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		b := make([]byte, 1)
		io.ReadFull(r.Body, b) // waits for the client
		w.Write(b)
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(be)}))
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/svc/Method", pr)
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := h2client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatalf("response headers never arrived: %v", err)
	}
	resp.Body.Close()
}

type headersFirst struct {
	testpb.UnimplementedTestServiceServer
}

func (headersFirst) FullDuplexCall(st grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	st.SendHeader(metadata.Pairs("x-ready", "1"))
	in, err := st.Recv()
	if err != nil {
		return err
	}
	return st.Send(&testpb.StreamingOutputCallResponse{Payload: in.GetPayload()})
}

// The same with real gRPC: SendHeader, then Recv, while the client waits
// in Header().
func TestGRPCHeadersBeforeFirstMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, headersFirst{})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(netip.MustParseAddrPort(ln.Addr().String()))}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := grpcClient(t, te.addr("main")).FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, err := st.Header()
	if err != nil || md.Get("x-ready") == nil {
		t.Fatalf("headers: %v %v", md, err)
	}
}

// refusingH2C answers every stream with RST_STREAM(REFUSED_STREAM),
// counting the streams.
func refusingH2C(t *testing.T, streams *atomic.Int64) netip.AddrPort {
	return rawServer(t, func(c net.Conn) {
		h2cFrames(c, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			streams.Add(1)
			fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			return true
		})
	})
}

// A refused stream is the route's retry policy's to retry (Istio's
// default retries refused-stream): three streams for one try and two
// retries, answered at once, not net/http's own retries with backoff.
func TestRefusedStreamRetriedByPolicy(t *testing.T) {
	var streams atomic.Int64
	up := refusingH2C(t, &streams)
	r := retryRoute("c", retryOn(2, "connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"))
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(up)}))
	req, _ := http.NewRequest("POST", "http://x/svc/M", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	c := h2client(te.addr("main"))
	c.Timeout = 5 * time.Second
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(start); streams.Load() != 3 || d > time.Second || resp.Header.Get("Grpc-Status") != "14" {
		t.Fatalf("after %v: %d streams, grpc-status %q; want 3 streams, 14 (unavailable), at once", d, streams.Load(), resp.Header.Get("Grpc-Status"))
	}
}

// A bodyless request (a GET to an HTTP/2 cluster) whose stream is
// refused is the retry policy's too: net/http's Transport would resend it
// itself (no body to keep) with a backoff of 1 s, 2 s, 4 s... for as long
// as the request lasts. Without a policy: one stream, then 503.
func TestRefusedBodylessStreamRetriedByPolicy(t *testing.T) {
	var streams atomic.Int64
	up := refusingH2C(t, &streams)
	with := retryRoute("c", retryOn(2, "refused-stream"))
	with.Match = model.RouteMatch{Prefix: "/retried"}
	without := fwd("c")
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(with, without), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(up)}))
	c := client(te.addr("main"))
	c.Timeout = 10 * time.Second
	for path, want := range map[string]int64{"/retried": 3, "/once": 1} {
		streams.Store(0)
		start := time.Now()
		code, body, _ := get(t, c, "http://x"+path)
		if d := time.Since(start); code != 503 || streams.Load() != want || d > time.Second || !strings.Contains(body, "refused stream") {
			t.Errorf("%s after %v: %d %q, %d streams; want 503 (refused stream) after %d, at once", path, d, code, body, streams.Load(), want)
		}
	}
}

// Envoy caps a gRPC request's timeout by max_grpc_timeout, a missing or
// zero grpc-timeout (no limit) included; Istio sets the cap to the route's
// timeout.
func TestGRPCTimeoutCapped(t *testing.T) {
	slow := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Second):
		}
		w.Header().Set("Grpc-Status", "0")
		w.WriteHeader(200)
	})
	max := 200 * time.Millisecond
	rt := fwd("c")
	rt.Forward.Timeout, rt.Forward.MaxGRPCTimeout = 10*time.Second, &max
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(rt), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(slow)}))
	for _, gt := range []string{"", "5S", "0S"} {
		req, _ := http.NewRequest("POST", "http://x/svc/M", strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		if gt != "" {
			req.Header.Set("Grpc-Timeout", gt)
		}
		start := time.Now()
		resp, err := h2client(te.addr("main")).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		gs := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status")
		if d := time.Since(start); d > 2*time.Second || gs != "14" {
			t.Errorf("grpc-timeout %q: grpc-status %q after %v, want 14 (timed out) after ~%v", gt, gs, d, max)
		}
	}
}

// Every local reply to a gRPC request, a direct response included, is
// gRPC: HTTP 200 with the status in grpc-status.
func TestDirectResponseToGRPC(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(&model.Route{Name: "d", Direct: &model.DirectResponse{Status: 503, Body: []byte("down")}}), false))
	code, _, resp := get(t, h2client(te.addr("main")), "http://x/pkg.Svc/M", "Content-Type", "application/grpc")
	if code != 200 || resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "down" {
		t.Errorf("direct 503 to a gRPC client: HTTP %d, grpc-status %q, grpc-message %q", code, resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"))
	}
	code, body, _ := get(t, h2client(te.addr("main")), "http://x/page")
	if code != 503 || body != "down" {
		t.Errorf("direct 503 to a plain client: %d %q", code, body)
	}
}

// Envoy's hasGrpcContentType: application/grpc, alone or followed by "+"
// or ";". gRPC-Web is not gRPC.
func TestIsGRPCContentType(t *testing.T) {
	for ct, want := range map[string]bool{"application/grpc": true, "application/grpc+proto": true, "application/grpc;charset=utf-8": true,
		"application/grpc-web": false, "application/grpc-web-text": false, "application/grpcx": false, "": false} {
		r, _ := http.NewRequest("POST", "/", nil)
		r.Header.Set("Content-Type", ct)
		if got := route.IsGRPC(r); got != want {
			t.Errorf("IsGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

// goAwayOnce is an h2c server whose first connection answers its first
// stream with GOAWAY (last stream 0: nothing processed, with code) and
// closes; the connections after it serve h.
func goAwayOnce(t *testing.T, h http.Handler, code http2.ErrCode, streams *atomic.Int64) netip.AddrPort {
	srv := &http2.Server{}
	var conns atomic.Int64
	return rawServer(t, func(c net.Conn) {
		if conns.Add(1) > 1 {
			srv.ServeConn(c, &http2.ServeConnOpts{Handler: h})
			return
		}
		h2cFrames(c, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			streams.Add(1)
			fr.WriteGoAway(0, code, nil)
			time.Sleep(50 * time.Millisecond)
			return false
		})
	})
}

// An upstream going away (GOAWAY) before it processed a gRPC call: the
// call was never seen, so Istio's default policy (refused-stream) sends
// it again, here on a new connection that answers. Whatever the GOAWAY's
// error code: Envoy's codecs (nghttp2, oghttp2's OnGoAway) close every
// stream above its last stream with REFUSED_STREAM. (net/http fails the
// first stream of a connection under a GOAWAY with a code differently
// from the others; it was taken for a connection termination, not
// retried.)
func TestGOAWAYBeforeProcessingRetried(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeNo, http2.ErrCodeEnhanceYourCalm} {
		var streams atomic.Int64
		up := goAwayOnce(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.WriteHeader(200)
			w.Write([]byte("\x00\x00\x00\x00\x00"))
			w.Header().Set("Grpc-Status", "0")
		}), code, &streams)
		r := retryRoute("c", retryOn(2, "connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"))
		te := newTestEngine(t, Options{})
		te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(up)}))
		req, _ := http.NewRequest("POST", "http://x/svc/M", strings.NewReader("\x00\x00\x00\x00\x00"))
		req.Header.Set("Content-Type", "application/grpc")
		c := h2client(te.addr("main"))
		c.Timeout = 5 * time.Second
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		if gs := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status"); resp.StatusCode != 200 || gs != "0" || streams.Load() != 1 {
			t.Errorf("GOAWAY %v: HTTP %d grpc-status %q, %d streams went away; want 0 after a retry", code, resp.StatusCode, gs, streams.Load())
		}
	}
}
