package grpcunary_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/internal/grpcunary"
	"github.com/kmesh-go/kmesh/internal/h2"
)

// service is a PodRegistry that keeps pods and can be made to wait,
// panic or fail.
type service struct {
	podregistry.UnimplementedPodRegistryServer
	mu      sync.Mutex
	pods    []*cniv1.Pod
	block   chan struct{} // EnrollPod of container "wait" waits for it
	started chan struct{} // ... after saying so here
}

func (s *service) EnrollPod(ctx context.Context, req *cniv1.EnrollPodRequest) (*cniv1.EnrollPodResponse, error) {
	switch req.GetPod().GetContainerId() {
	case "panic":
		panic("boom")
	case "fail":
		return nil, status.Error(codes.FailedPrecondition, "détaché: 100% fini\nline two")
	case "deadline":
		<-ctx.Done() // the client's grpc-timeout
		return nil, status.FromContextError(ctx.Err()).Err()
	case "wait":
		s.started <- struct{}{}
		<-s.block
	case "rawctx":
		<-ctx.Done()
		return nil, ctx.Err() // not a status: read as grpc-go reads it
	case "until-stopped":
		s.started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	case "details":
		st, err := status.New(codes.NotFound, "no such pod").WithDetails(&cniv1.Pod{Name: "detail"})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = append(s.pods, req.GetPod())
	return &cniv1.EnrollPodResponse{Enrolled: true}, nil
}

func (s *service) ListPods(ctx context.Context, _ *cniv1.ListPodsRequest) (*cniv1.ListPodsResponse, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("x-echo")) > 0 {
		// The call's metadata, echoed back.
		var pods []*cniv1.Pod
		for _, v := range append(md.Get("x-echo"), md.Get("x-echo-bin")...) {
			pods = append(pods, &cniv1.Pod{Name: v})
		}
		return &cniv1.ListPodsResponse{Pods: pods}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &cniv1.ListPodsResponse{Pods: s.pods}, nil
}

func socket(t *testing.T) string {
	dir, err := os.MkdirTemp("", "grpcunary")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}

// start serves svc on a fresh socket until the test ends.
func start(t *testing.T, svc *service) (*grpcunary.Server, string) {
	sock := socket(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpcunary.NewServer()
	podregistry.RegisterPodRegistryServer(srv, svc)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, sock
}

func dial(t *testing.T, sock string) podregistry.PodRegistryClient {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return podregistry.NewPodRegistryClient(cc)
}

func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// grpc-go's client, as kmeshctl and tests use it: calls, statuses with
// messages that need encoding, unknown methods, panics, deadlines; a
// request and an answer larger than the flow-control windows.
func TestGRPCGoClient(t *testing.T) {
	svc := &service{}
	_, sock := start(t, svc)
	c := dial(t, sock)

	big := strings.Repeat("n", 300<<10) // past the stream's 64 KiB window
	if r, err := c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "big", Name: big}}); err != nil || !r.GetEnrolled() {
		t.Fatalf("enroll: %v %v", r, err)
	}
	for i := range 3000 {
		if _, err := c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: fmt.Sprint("c", i), Name: strings.Repeat("p", 100)}}); err != nil {
			t.Fatal(err)
		}
	}
	// An answer of ~750 KiB: grpc-go's client grants 64 KiB at first.
	r, err := c.ListPods(within(t, 5*time.Second), &cniv1.ListPodsRequest{})
	if err != nil || len(r.GetPods()) != 3001 || r.GetPods()[0].GetName() != big || r.GetPods()[3000].GetContainerId() != "c2999" {
		t.Fatalf("list: %d pods, %v", len(r.GetPods()), err)
	}

	_, err = c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "fail"}})
	if s := status.Convert(err); s.Code() != codes.FailedPrecondition || s.Message() != "détaché: 100% fini\nline two" {
		t.Fatalf("fail: %v", err)
	}
	_, err = c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "panic"}})
	if s := status.Convert(err); s.Code() != codes.Internal || !strings.Contains(s.Message(), "boom") {
		t.Fatalf("panic: %v", err)
	}
	start := time.Now()
	_, err = c.EnrollPod(within(t, 150*time.Millisecond), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "deadline"}})
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
		t.Fatalf("deadline: %v after %v", err, time.Since(start))
	}
	start = time.Now()
	_, err = c.EnrollPod(within(t, 150*time.Millisecond), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "rawctx"}})
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
		t.Fatalf("ctx.Err() returned as it is: %v after %v", err, time.Since(start))
	}
	_, err = c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: "details"}})
	if s := status.Convert(err); s.Code() != codes.NotFound || len(s.Details()) != 1 || s.Details()[0].(*cniv1.Pod).GetName() != "detail" {
		t.Fatalf("status with details: %v %v", err, s.Details())
	}
	mdctx := metadata.AppendToOutgoingContext(within(t, 5*time.Second), "x-echo", "one", "x-echo", "two", "x-echo-bin", "bin\x00é")
	if r, err := c.ListPods(mdctx, &cniv1.ListPodsRequest{}); err != nil || len(r.GetPods()) != 3 ||
		r.GetPods()[0].GetName() != "one" || r.GetPods()[1].GetName() != "two" || r.GetPods()[2].GetName() != "bin\x00é" {
		t.Fatalf("metadata: %v %v", r, err)
	}
	_, err = c.Status(within(t, 5*time.Second), &cniv1.StatusRequest{}) // not implemented by service
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("unimplemented method: %v", err)
	}
	cc, _ := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer cc.Close()
	err = cc.Invoke(within(t, 5*time.Second), "/no.Such/Method", &cniv1.StatusRequest{}, &cniv1.StatusResponse{})
	if s := status.Convert(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "/no.Such/Method") {
		t.Fatalf("unknown method: %v", err)
	}
	_, err = c.EnrollPod(within(t, 5*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{Name: strings.Repeat("x", grpcunary.MaxRecvMsgSize+1<<20)}},
		grpc.MaxCallSendMsgSize(64<<20))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("request over the limit: %v", err)
	}
	if !strings.Contains(status.Convert(err).Message(), "request larger than") {
		t.Fatalf("request over the limit, not refused by the server: %v", err)
	}
	// The connection still serves after all that.
	if _, err := c.ListPods(within(t, 5*time.Second), &cniv1.ListPodsRequest{}); err != nil {
		t.Fatal(err)
	}
}

// Many calls at once on one connection: each gets its own answer.
func TestConcurrentCalls(t *testing.T) {
	svc := &service{}
	_, sock := start(t, svc)
	c := dial(t, sock)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				id := fmt.Sprintf("g%d-%d", g, i)
				_, err := c.EnrollPod(within(t, 10*time.Second), &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: id, Name: strings.Repeat(id, 500)}})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r, err := c.ListPods(within(t, 5*time.Second), &cniv1.ListPodsRequest{})
	if err != nil || len(r.GetPods()) != 1000 {
		t.Fatalf("%d pods, %v", len(r.GetPods()), err)
	}
}

// enrollAsync makes an EnrollPod call of container id on a goroutine.
func enrollAsync(ctx context.Context, c podregistry.PodRegistryClient, id string) <-chan error {
	answered := make(chan error, 1)
	go func() {
		_, err := c.EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{ContainerId: id}})
		answered <- err
	}()
	return answered
}

// async runs fn on a goroutine; the channel closes when it returns.
func async(fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		fn()
		close(done)
	}()
	return done
}

// GracefulStop lets a call in progress finish, refuses new connections,
// and returns once the connections are done.
func TestGracefulStop(t *testing.T) {
	svc := &service{block: make(chan struct{}), started: make(chan struct{}, 1)}
	sock := socket(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpcunary.NewServer()
	podregistry.RegisterPodRegistryServer(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	c := dial(t, sock)
	idle := dial(t, sock)
	if _, err := idle.ListPods(within(t, 5*time.Second), &cniv1.ListPodsRequest{}); err != nil {
		t.Fatal(err)
	}
	answered := enrollAsync(within(t, 10*time.Second), c, "wait")
	<-svc.started
	stopped := async(srv.GracefulStop)
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with a call in progress")
	case <-time.After(100 * time.Millisecond):
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after GracefulStop: %v", err)
	}
	if nc, err := net.Dial("unix", sock); err == nil {
		nc.Close()
		t.Fatal("a new connection was accepted after GracefulStop")
	}
	close(svc.block)
	if err := <-answered; err != nil {
		t.Fatalf("the call in progress: %v", err)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("GracefulStop did not return after the last call")
	}
}

// Stop ends a call whose handler waits on its context (no deadline) and
// returns.
func TestStopCancelsCalls(t *testing.T) {
	svc := &service{started: make(chan struct{}, 1)}
	srv, sock := start(t, svc)
	c := dial(t, sock)
	answered := enrollAsync(context.Background(), c, "until-stopped")
	<-svc.started
	stopped := async(srv.Stop)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return with a handler waiting on its context")
	}
	if err := <-answered; err == nil {
		t.Fatal("the call succeeded after Stop")
	}
}

// raw opens a connection that speaks frames by hand.
type raw struct {
	t   *testing.T
	nc  net.Conn
	dec *h2.Decoder
}

func rawConn(t *testing.T, sock string) *raw {
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	return &raw{t: t, nc: nc}
}

func (r *raw) send(b []byte) {
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// goAway reads frames until GOAWAY and returns its error code; -1 if the
// connection ends without one.
func (r *raw) goAway() int {
	var buf []byte
	for {
		fh, p, err := h2.ReadFrame(r.nc, buf, 1<<20)
		if err != nil {
			return -1
		}
		if fh.Type == h2.FrameGoAway && len(p) >= 8 {
			return int(binary.BigEndian.Uint32(p[4:]))
		}
		buf = p
	}
}

func settings() []byte {
	return h2.AppendFrame([]byte(h2.Preface), h2.FrameSettings, 0, 0, func(p []byte) []byte { return p })
}

// Protocol errors end the connection with GOAWAY and the right code; a
// wrong preface ends it without a word; the server goes on serving.
func TestProtocolErrors(t *testing.T) {
	_, sock := start(t, &service{})
	none := func(p []byte) []byte { return p }
	for _, tc := range []struct {
		name  string
		bytes []byte
		code  int
	}{
		{"not HTTP/2", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), -1},
		{"DATA on stream 0", h2.AppendFrame(settings(), h2.FrameData, 0, 0, none), h2.ErrCodeProtocol},
		{"DATA on an idle stream", h2.AppendFrame(settings(), h2.FrameData, 0, 5, none), h2.ErrCodeProtocol},
		{"even stream", h2.AppendFrame(settings(), h2.FrameHeaders, h2.FlagEndHeaders, 2, none), h2.ErrCodeProtocol},
		{"frame too large", h2.AppendFrameBytes(settings(), h2.FramePing, 0, 0, make([]byte, 20000)), h2.ErrCodeFrameSize},
		{"short PING", h2.AppendFrameBytes(settings(), h2.FramePing, 0, 0, make([]byte, 7)), h2.ErrCodeFrameSize},
		{"bad HPACK", h2.AppendFrameBytes(settings(), h2.FrameHeaders, h2.FlagEndHeaders, 1, []byte{0xff, 0xff, 0xff}), 0x9},
		{"interleaved CONTINUATION", h2.AppendFrame(h2.AppendFrameBytes(settings(), h2.FrameHeaders, 0, 1, []byte{0x83}),
			h2.FramePing, 0, 0, func(p []byte) []byte { return append(p, 0, 0, 0, 0, 0, 0, 0, 0) }), h2.ErrCodeProtocol},
		{"window overflow", h2.AppendFrameBytes(settings(), h2.FrameWindowUpdate, 0, 0, []byte{0x7f, 0xff, 0xff, 0xff}), h2.ErrCodeFlowControl},
		{"PUSH_PROMISE", h2.AppendFrame(settings(), h2.FramePushPromise, h2.FlagEndHeaders, 1, none), h2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawConn(t, sock)
			r.send(tc.bytes)
			if got := r.goAway(); got != tc.code {
				t.Fatalf("GOAWAY code %d, want %d", got, tc.code)
			}
		})
	}
	if _, err := dial(t, sock).ListPods(within(t, 5*time.Second), &cniv1.ListPodsRequest{}); err != nil {
		t.Fatal(err)
	}
}

// A request that is not gRPC gets an HTTP status, and the connection
// goes on.
func TestNotGRPC(t *testing.T) {
	_, sock := start(t, &service{})
	r := rawConn(t, sock)
	for i, tc := range []struct{ method, ctype, want string }{
		{"POST", "text/plain", "415"},
		{"GET", "application/grpc", "405"},
		{"POST", "application/grpc+proto", "200"},
	} {
		b := h2.AppendHeader(nil, ":method", tc.method)
		b = h2.AppendHeader(b, ":path", "/kmesh.cni.v1.PodRegistry/ListPods")
		b = h2.AppendHeader(b, "content-type", tc.ctype)
		var out []byte
		if i == 0 {
			out = settings()
		}
		id := uint32(2*i + 1)
		out = h2.AppendFrameBytes(out, h2.FrameHeaders, h2.FlagEndHeaders, id, b)
		out = h2.AppendFrameBytes(out, h2.FrameData, h2.FlagEndStream, id, []byte{0, 0, 0, 0, 0})
		r.send(out)
		if got := r.status(id); got != tc.want {
			t.Fatalf("%s %s: :status %q, want %s", tc.method, tc.ctype, got, tc.want)
		}
	}
}

// status reads frames until stream id's first header block and returns
// its :status.
func (r *raw) status(id uint32) string {
	if r.dec == nil {
		r.dec = h2.NewDecoder(4096, 1<<20)
	}
	var buf []byte
	for {
		fh, p, err := h2.ReadFrame(r.nc, buf, 1<<20)
		if err != nil {
			r.t.Fatal(err)
		}
		buf = p
		if fh.Type != h2.FrameHeaders {
			continue
		}
		st := ""
		if err := r.dec.Decode(p, func(f h2.HeaderField) {
			if f.Name == ":status" {
				st = f.Value
			}
		}); err != nil {
			r.t.Fatal(err)
		}
		if fh.Stream == id && st != "" {
			return st
		}
	}
}

func request(path string) []byte {
	b := h2.AppendHeader(nil, ":method", "POST")
	b = h2.AppendHeader(b, ":path", path)
	return h2.AppendHeader(b, "content-type", "application/grpc")
}

// Trailers arriving on a stream the server has reset are dropped; the
// connection goes on.
func TestFramesAfterOurReset(t *testing.T) {
	_, sock := start(t, &service{})
	r := rawConn(t, sock)
	out := h2.AppendFrameBytes(settings(), h2.FrameHeaders, h2.FlagEndHeaders, 1, request("/kmesh.cni.v1.PodRegistry/ListPods"))
	out = h2.AppendFrameBytes(out, h2.FrameWindowUpdate, 0, 1, []byte{0, 0, 0, 0}) // a stream error: RST_STREAM
	out = h2.AppendFrameBytes(out, h2.FrameHeaders, h2.FlagEndHeaders|h2.FlagEndStream, 1, h2.AppendHeader(nil, "x-trailer", "late"))
	out = h2.AppendFrameBytes(out, h2.FrameHeaders, h2.FlagEndHeaders, 3, request("/kmesh.cni.v1.PodRegistry/ListPods"))
	out = h2.AppendFrameBytes(out, h2.FrameData, h2.FlagEndStream, 3, []byte{0, 0, 0, 0, 0})
	r.send(out)
	if got := r.status(3); got != "200" {
		t.Fatalf(":status %q", got)
	}
}

// A GOAWAY after GracefulStop's never names a later stream than it did.
func TestGoAwayNeverRaisesTheLastStream(t *testing.T) {
	svc := &service{block: make(chan struct{}), started: make(chan struct{}, 1)}
	srv, sock := start(t, svc)
	r := rawConn(t, sock)
	// Stream 1 waits in its handler; stream 3 is open, its request not
	// complete: the connection has work left after stream 1.
	call := h2.AppendFrameBytes(settings(), h2.FrameHeaders, h2.FlagEndHeaders, 1, request("/kmesh.cni.v1.PodRegistry/EnrollPod"))
	call = h2.AppendFrameBytes(call, h2.FrameHeaders, h2.FlagEndHeaders, 3, request("/kmesh.cni.v1.PodRegistry/ListPods"))
	// EnrollPodRequest{pod: {container_id: "wait"}}
	msg := []byte{0x0a, 0x06, 0x22, 0x04, 'w', 'a', 'i', 't'}
	body := append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
	r.send(h2.AppendFrameBytes(call, h2.FrameData, h2.FlagEndStream, 1, body))
	<-svc.started
	go srv.GracefulStop()
	// Stream 5 after the GOAWAY, then a malformed PING: a connection error.
	out := h2.AppendFrameBytes(nil, h2.FrameHeaders, h2.FlagEndHeaders, 5, request("/kmesh.cni.v1.PodRegistry/ListPods"))
	out = h2.AppendFrameBytes(out, h2.FramePing, 0, 0, make([]byte, 3))
	var last []uint32
	var buf []byte
	for len(last) < 2 {
		fh, p, err := h2.ReadFrame(r.nc, buf, 1<<20)
		if err != nil {
			t.Fatalf("after GOAWAYs %v: %v", last, err)
		}
		buf = p
		if fh.Type == h2.FrameGoAway {
			last = append(last, binary.BigEndian.Uint32(p)&0x7fffffff)
			if len(last) == 1 {
				r.send(out)
				close(svc.block)
			}
		}
	}
	if last[0] != 3 || last[1] > last[0] {
		t.Fatalf("GOAWAY last stream ids %v", last)
	}
}

// FuzzConn: any bytes after the preface end in an orderly way: no panic,
// no hang, and the server still serves.
//
//	go test ./internal/grpcunary -run '^$' -fuzz '^FuzzConn$' -fuzztime=30s
func FuzzConn(f *testing.F) {
	req := h2.AppendHeader(nil, ":method", "POST")
	req = h2.AppendHeader(req, ":path", "/kmesh.cni.v1.PodRegistry/ListPods")
	req = h2.AppendHeader(req, "content-type", "application/grpc")
	call := h2.AppendFrameBytes(nil, h2.FrameHeaders, h2.FlagEndHeaders, 1, req)
	call = h2.AppendFrameBytes(call, h2.FrameData, h2.FlagEndStream, 1, []byte{0, 0, 0, 0, 0})
	f.Add(call)
	f.Add(h2.AppendFrameBytes(call, h2.FrameWindowUpdate, 0, 1, []byte{0, 0, 0, 1}))
	f.Add(h2.AppendFrameBytes(nil, h2.FrameSettings, 0, 0, []byte{0, 4, 0, 0, 0, 0}))
	sock := ""
	var once sync.Once
	f.Fuzz(func(t *testing.T, b []byte) {
		once.Do(func() {
			// One server for the whole run; the fuzzer's workers each
			// make their own.
			dir, err := os.MkdirTemp("", "grpcunary-fuzz")
			if err != nil {
				t.Fatal(err)
			}
			sock = filepath.Join(dir, "s.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpcunary.NewServer()
			podregistry.RegisterPodRegistryServer(srv, &service{})
			go srv.Serve(l)
		})
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		read := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, nc)
			read <- err
		}()
		_, _ = nc.Write(append([]byte(h2.Preface), b...))
		_ = nc.(*net.UnixConn).CloseWrite()
		if err := <-read; err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("the server did not end the connection: %v", err)
		}
	})
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}
