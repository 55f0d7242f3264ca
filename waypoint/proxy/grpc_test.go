package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// testService is a grpc-go server's TestService: echoes, fails on
// request, streams both ways.
type testService struct {
	testpb.UnimplementedTestServiceServer
	unary atomic.Int64
}

func (s *testService) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.unary.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get("fail-first")) > 0 && n == 1 {
		return nil, status.Error(codes.Unavailable, "not yet")
	}
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t1"))
	return &testpb.SimpleResponse{Payload: in.GetPayload(), Username: strings.Join(md.Get("traceparent"), ",")}, nil
}

func (s *testService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			stream.SetTrailer(metadata.Pairs("x-count", "done"))
			return nil
		}
		if err != nil {
			return err
		}
		if string(in.GetPayload().GetBody()) == "fail" {
			return status.Error(codes.FailedPrecondition, "asked to fail")
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

func grpcBackend(t testing.TB) (netip.AddrPort, *testService) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, svc)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return mustAddrPort(ln.Addr().String()), svc
}

func grpcClient(t testing.TB, waypoint netip.AddrPort) testpb.TestServiceClient {
	t.Helper()
	d := dialer(waypoint, clientAddr, serviceVIP)
	cc, err := grpc.NewClient("passthrough:///test", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return d(ctx, "", "") }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func TestGRPCThroughWaypoint(t *testing.T) {
	be, svc := grpcBackend(t)
	r := retryRoute("grpc", retryOn(1, "unavailable"))
	r.Match.GRPC = true
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "grpc", Protocol: "http2", Endpoints: endpoints(be)}))
	c := grpcClient(t, te.addr("main"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unary with trailers and trace context", func(t *testing.T) {
		var trailer metadata.MD
		tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		out, err := c.UnaryCall(metadata.AppendToOutgoingContext(ctx, "traceparent", tp),
			&testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hi")}}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if string(out.GetPayload().GetBody()) != "hi" || out.GetUsername() != tp || strings.Join(trailer.Get("x-trailer"), "") != "t1" {
			t.Errorf("got %v, trailer %v", out, trailer)
		}
	})
	t.Run("unavailable is retried", func(t *testing.T) {
		svc.unary.Store(0)
		if _, err := c.UnaryCall(metadata.AppendToOutgoingContext(ctx, "fail-first", "1"), &testpb.SimpleRequest{}); err != nil {
			t.Errorf("after a retry: %v", err)
		}
		if svc.unary.Load() != 2 {
			t.Errorf("%d calls, want 2", svc.unary.Load())
		}
	})
	t.Run("bidirectional stream", func(t *testing.T) {
		st, err := c.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// One message out, its echo back, before the next: nothing on the
		// way may wait for the whole request.
		for _, m := range []string{"one", "two", "three"} {
			if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(m)}}); err != nil {
				t.Fatal(err)
			}
			got, err := st.Recv()
			if err != nil || string(got.GetPayload().GetBody()) != m {
				t.Fatalf("echo of %q: %v %v", m, got, err)
			}
		}
		st.CloseSend()
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
		if got := st.Trailer().Get("x-count"); len(got) != 1 || got[0] != "done" {
			t.Errorf("trailer %v", st.Trailer())
		}
	})
	t.Run("error status in trailers", func(t *testing.T) {
		st, _ := c.FullDuplexCall(ctx)
		st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("fail")}})
		_, err := st.Recv()
		if s, _ := status.FromError(err); s.Code() != codes.FailedPrecondition || s.Message() != "asked to fail" {
			t.Errorf("status %v", err)
		}
	})
	eventually(t, "the gRPC requests counted", func() bool {
		return strings.Contains(metricsText(t, te), `grpc_response_status="9"`)
	})
	text := metricsText(t, te)
	if !strings.Contains(text, `request_protocol="grpc"`) || !strings.Contains(text, `grpc_response_status="0"`) {
		t.Errorf("metrics:\n%s", grep(text, "istio_requests_total"))
	}
}

func TestGRPCNoRouteIsUnimplemented(t *testing.T) {
	te := newTestEngine(t, Options{})
	te.apply(httpSnapshot(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"other"}}}}, false))
	_, err := grpcClient(t, te.addr("main")).UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if s, _ := status.FromError(err); s.Code() != codes.Unimplemented {
		t.Errorf("no route: %v", err)
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v", err)
	}
}

// BenchmarkGRPCProxy is one unary gRPC call (1 KiB each way, as fortio's
// ping) through the engine on loopback, h2c both ways, grpc-go at both
// ends: their share is in ns/op too, so read the CPU profile for the
// engine's (-cpuprofile). First reading (2 cores, shared): 231 µs and 301
// allocations per call in all; strace: 11.3 writes, 22 reads (7 EAGAIN)
// and 10 epoll waits per call, 8 of every 10 write-time samples in
// net/http's HTTP/2 (the upstream request's headers and body flushed
// apart, answers to the backend's BDP pings, the response's frames as its
// serve loop drains them), stack growth of its per-stream goroutines ~5%.
// kmesh-bench's gRPC row (0.41x HAProxy's max qps) is this path.
func BenchmarkGRPCProxy(b *testing.B) {
	be, _ := grpcBackend(b)
	r := fwd("grpc")
	r.Match.GRPC = true
	te := newTestEngine(b, Options{AccessLog: io.Discard})
	te.apply(httpSnapshot(oneRoute(r), false, &model.Cluster{Name: "grpc", Protocol: "http2", Endpoints: endpoints(be)}))
	c := grpcClient(b, te.addr("main"))
	ctx := context.Background()
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
