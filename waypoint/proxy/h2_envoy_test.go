package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// One stream whose endpoint does not read its body (a client-streaming
// call to a busy server) must not hold up the bodies of the other
// streams on the same downstream connection: grpc-go sends all of a
// channel's calls over one connection. Envoy's connection window
// (256 MiB by default) is far above what one stream may hold (it stops
// taking a stream's data beyond its buffer limit); net/http's server
// hands back connection window only as the handler reads and makes it
// no bigger than one stream's (1 MiB), so a single stalled upload
// stopped every other request body on the connection.
func TestStalledUploadDoesNotBlockOtherStreams(t *testing.T) {
	release := make(chan struct{})
	slow := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.Copy(io.Discard, r.Body)
	})
	fast := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	defer close(release)
	slowRoute := fwd("slow")
	slowRoute.Match = model.RouteMatch{Prefix: "/slow"}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(slowRoute, fwd("fast")), false,
		&model.Cluster{Name: "slow", Protocol: "http2", Endpoints: endpoints(slow)},
		&model.Cluster{Name: "fast", Protocol: "http2", Endpoints: endpoints(fast)}))
	c := h2client(te.addr("main"))

	// The stalled upload: as much as flow control lets through.
	pr, pw := io.Pipe()
	defer pw.Close()
	wrote := make(chan int, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		n := 0
		defer func() { wrote <- n }()
		for n < 16<<20 {
			w, err := pw.Write(chunk)
			n += w
			if err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/slow", pr)
	go func() {
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	// Let the upload fill every window on its way.
	time.Sleep(500 * time.Millisecond)

	done := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://x/fast", strings.NewReader("ping"))
		resp, err := c.Do(req)
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- string(b)
	}()
	select {
	case got := <-done:
		if got != "ping" {
			t.Fatalf("other stream: %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a request body on the same connection is stuck behind the stalled upload")
	}
}

// parkedStreams answers every FullDuplexCall's headers and holds it open
// until its client ends it.
type parkedStreams struct {
	testpb.UnimplementedTestServiceServer
}

func (parkedStreams) FullDuplexCall(st grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	st.SendHeader(nil)
	<-st.Context().Done()
	return nil
}

func (parkedStreams) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Username: "ok"}, nil
}

// A gRPC channel with many long-lived streams (watches, subscriptions)
// keeps opening calls on its one connection: Envoy's HTTP/2 codec takes
// up to 2^31-1 concurrent streams by default, net/http's server 250,
// past which grpc-go's next call waits for a stream to end, for ever;
// the waypoint takes 1024.
func TestManyConcurrentStreamsOnOneConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, parkedStreams{})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(mustAddrPort(ln.Addr().String()))}))
	c := grpcClient(t, te.addr("main"))
	// Every stream lives until the end of the test: one blocked waiting
	// for a free stream ends with the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 300 {
		st, err := c.FullDuplexCall(ctx)
		if err == nil {
			_, err = st.Header()
		}
		if err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	uctx, ucancel := context.WithTimeout(ctx, 3*time.Second)
	defer ucancel()
	if out, err := c.UnaryCall(uctx, &testpb.SimpleRequest{}); err != nil || out.GetUsername() != "ok" {
		t.Fatalf("a call beside 300 open streams: %v %v", out, err)
	}
}

// A per-try timeout bounds a try until its answer starts: once the
// response has begun downstream, Envoy ignores it (the route timeout
// still applies), since it could neither retry nor answer otherwise. A
// server-streaming gRPC call that outlived its per-try timeout was cut
// with a reset mid-stream.
func TestPerTryTimeoutIgnoredOnceAnswerStarted(t *testing.T) {
	be := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		for range 4 {
			w.Write([]byte("\x00\x00\x00\x00\x00"))
			http.NewResponseController(w).Flush()
			time.Sleep(150 * time.Millisecond)
		}
		w.Header().Set("Grpc-Status", "0")
	})
	r := retryRoute("c", retryOn(1, "5xx", "reset"))
	r.Forward.Retry.PerTryTimeout = 200 * time.Millisecond
	r.Forward.Timeout = 5 * time.Second
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(be)}))
	req, _ := http.NewRequest("POST", "http://x/svc/Stream", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != 20 || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("stream longer than the per-try timeout: %d bytes, %v, grpc-status %q; want 20 bytes and 0", len(b), err, resp.Trailer.Get("Grpc-Status"))
	}
}

// An HTTP/2 endpoint resetting its stream (RST_STREAM) is Envoy's
// remote reset: response flag UR, before the answer a 503 whose body
// and details say "remote reset" (a refused stream is UR too), after it
// the downstream stream reset, logged UR. They were logged UC (a
// connection termination), which is what a closed connection is.
func TestUpstreamStreamResetIsUR(t *testing.T) {
	up := rawServer(t, func(c net.Conn) {
		var path string
		dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
			if hf.Name == ":path" {
				path = hf.Value
			}
		})
		h2cFrames(c, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			var b bytes.Buffer
			enc := hpack.NewEncoder(&b)
			dec.Write(f.HeaderBlockFragment())
			switch path {
			case "/refused":
				fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			case "/before":
				fr.WriteRSTStream(f.StreamID, http2.ErrCodeInternal)
			default:
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b.Bytes(), EndHeaders: true})
				fr.WriteData(f.StreamID, false, []byte("\x00\x00\x00\x00\x00"))
				fr.WriteRSTStream(f.StreamID, http2.ErrCodeInternal)
			}
			return true
		})
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(up)}))
	c := h2client(te.addr("main"))
	for _, tc := range []struct{ path, body, details string }{
		{"/refused", bodyRefused, "upstream_reset_before_response_started{remote_refused_stream_reset}"},
		{"/before", "upstream connect error or disconnect/reset before headers. reset reason: remote reset", "upstream_reset_before_response_started{remote_reset}"},
		{"/after", "", "upstream_reset_after_response_started{remote_reset}"},
	} {
		req, _ := http.NewRequest("GET", "http://x"+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tc.body != "" && (resp.StatusCode != 503 || string(b) != tc.body) {
			t.Errorf("%s: %d %q", tc.path, resp.StatusCode, b)
		}
		if tc.body == "" && err == nil {
			t.Errorf("%s: the reset came through as a clean end", tc.path)
		}
		want := fmt.Sprintf(`"path":"%s","protocol":"HTTP/2.0","response_code":%d,"response_flags":"UR","response_code_details":"%s"`, tc.path, resp.StatusCode, tc.details)
		eventually(t, tc.path+" logged", func() bool { return strings.Contains(te.access.String(), `"path":"`+tc.path+`"`) })
		if !strings.Contains(te.access.String(), want) {
			t.Errorf("%s: want %s in %s", tc.path, want, te.access.String())
		}
	}
}

// An HTTP/2 client may split its Cookie header into one field per
// cookie (RFC 9113 8.2.3); they are one header again for route matching
// and for an HTTP/1.1 endpoint, joined with "; " as Envoy's codec joins
// them (codec_impl.cc, reconstituteCrumbledCookies), not with ",", which
// would make "b=2" part of a's value. net/http's server does the joining:
// this pins it.
func TestH2CookieCrumbsJoined(t *testing.T) {
	got := make(chan []string, 1)
	be := backend(t, func(w http.ResponseWriter, r *http.Request) { got <- r.Header["Cookie"] })
	matched := fwd("c")
	matched.Match = model.RouteMatch{Prefix: "/", Headers: []model.HeaderMatch{{Name: "cookie", Value: &model.StringMatch{Exact: "a=1; b=2", Kind: "exact"}}}}
	other := &model.Route{Name: "other", Direct: &model.DirectResponse{Status: 404}}
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(matched, other), false, &model.Cluster{Name: "c", Endpoints: endpoints(be)}))
	req, _ := http.NewRequest("GET", "http://x/", nil)
	req.Header.Add("Cookie", "a=1")
	req.Header.Add("Cookie", "b=2")
	resp, err := h2client(te.addr("main")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("cookie crumbs did not match \"a=1; b=2\": %d", resp.StatusCode)
	}
	if c := <-got; len(c) != 1 || c[0] != "a=1; b=2" {
		t.Errorf("HTTP/1.1 endpoint got Cookie %q, want one \"a=1; b=2\"", c)
	}
}

// An HTTP/2 endpoint that breaks the protocol (an answer without
// :status, a frame HTTP/2 forbids) is Envoy's protocol error: its codec
// resets the stream or closes the connection with ProtocolError, which
// the router answers 502 UPE (onUpstreamReset), or, after the answer
// started, cuts the downstream stream, logged UPE. They were 503 UC, a
// connection termination.
func TestUpstreamH2ProtocolErrorIsUPE(t *testing.T) {
	up := rawServer(t, func(c net.Conn) {
		var path string
		dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
			if hf.Name == ":path" {
				path = hf.Value
			}
		})
		h2cFrames(c, func(fr *http2.Framer, f *http2.HeadersFrame) bool {
			var b bytes.Buffer
			enc := hpack.NewEncoder(&b)
			dec.Write(f.HeaderBlockFragment())
			if path == "/no-status" {
				enc.WriteField(hpack.HeaderField{Name: "x-a", Value: "b"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b.Bytes(), EndHeaders: true, EndStream: true})
				return true
			}
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b.Bytes(), EndHeaders: true})
			fr.WriteData(f.StreamID, false, []byte("part"))
			// DATA on stream 0: a connection error.
			fr.AllowIllegalWrites = true
			fr.WriteData(0, false, []byte("x"))
			return false
		})
	})
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(fwd("c")), false, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: endpoints(up)}))
	c := h2client(te.addr("main"))
	for _, tc := range []struct {
		path    string
		code    int
		details string
	}{
		{"/no-status", 502, "upstream_reset_before_response_started{protocol_error}"},
		{"/after", 200, "upstream_reset_after_response_started{protocol_error}"},
	} {
		req, _ := http.NewRequest("GET", "http://x"+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.code == 502 && string(b) != bodyProtocol) || (tc.code == 200 && err == nil) {
			t.Errorf("%s: %d %q %v", tc.path, resp.StatusCode, b, err)
		}
		want := fmt.Sprintf(`"path":"%s","protocol":"HTTP/2.0","response_code":%d,"response_flags":"UPE","response_code_details":"%s"`, tc.path, tc.code, tc.details)
		eventually(t, tc.path+" logged", func() bool { return strings.Contains(te.access.String(), `"path":"`+tc.path+`"`) })
		if !strings.Contains(te.access.String(), want) {
			t.Errorf("%s: want %s in %s", tc.path, want, te.access.String())
		}
	}
}
