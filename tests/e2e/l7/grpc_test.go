package l7

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/kmesh-go/kmesh/tests/e2e/cluster"
)

// whoService is grpc-go's TestService answering which pod it is, on both
// of its unary methods (the route tells them apart by path).
type whoService struct {
	testpb.UnimplementedTestServiceServer
	name string
}

func (w *whoService) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: w.name, ServerId: "UnaryCall"}, nil
}

func (w *whoService) CacheableUnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: w.name, ServerId: "CacheableUnaryCall"}, nil
}

// serveGRPC runs a grpc-go server (HTTP/2 without TLS) in the pod.
func serveGRPC(p *cluster.Pod, port int) error {
	l, err := p.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, &whoService{name: p.Name})
	go func() { _ = srv.Serve(l) }()
	return nil
}

// grpcClient dials target from the client pod (HTTP/2 with prior
// knowledge, as grpc-go does without TLS).
func (s *suite) grpcClient(target string) (testpb.TestServiceClient, func(), error) {
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return s.client.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		return nil, nil, err
	}
	return testpb.NewTestServiceClient(cc), func() { cc.Close() }, nil
}
