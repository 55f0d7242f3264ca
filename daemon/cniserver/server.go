package cniserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
)

// Readiness tells the plugin whether the data path has its first state.
type Readiness interface {
	Ready() bool
	LastError() string
}

// Server implements the PodRegistry gRPC service.
type Server struct {
	podregistry.UnimplementedPodRegistryServer
	reg     *Registry
	ready   Readiness
	version string
}

// NewServer serves reg.
func NewServer(reg *Registry, ready Readiness, version string) *Server {
	return &Server{reg: reg, ready: ready, version: version}
}

func (s *Server) EnrollPod(_ context.Context, req *cniv1.EnrollPodRequest) (*cniv1.EnrollPodResponse, error) {
	p := req.GetPod()
	if p.GetContainerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "pod.container_id is required")
	}
	if p.GetEnrolled() && p.GetNetnsCookie() == 0 {
		return nil, status.Error(codes.InvalidArgument, "an enrolled pod needs its netns_cookie")
	}
	enrolled, err := s.reg.Add(p)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "register pod %s/%s: %v", p.GetNamespace(), p.GetName(), err)
	}
	return &cniv1.EnrollPodResponse{Enrolled: enrolled}, nil
}

func (s *Server) ReleasePod(_ context.Context, req *cniv1.ReleasePodRequest) (*cniv1.ReleasePodResponse, error) {
	if req.GetContainerId() == "" && req.GetNetnsCookie() == 0 {
		return nil, status.Error(codes.InvalidArgument, "container_id or netns_cookie is required")
	}
	known, err := s.reg.Remove(req.GetContainerId(), req.GetNetnsCookie())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "release %s: %v", req.GetContainerId(), err)
	}
	return &cniv1.ReleasePodResponse{Known: known}, nil
}

func (s *Server) ListPods(context.Context, *cniv1.ListPodsRequest) (*cniv1.ListPodsResponse, error) {
	return &cniv1.ListPodsResponse{Pods: s.reg.Pods()}, nil
}

func (s *Server) Status(context.Context, *cniv1.StatusRequest) (*cniv1.StatusResponse, error) {
	pods := s.reg.Pods()
	enrolled := 0
	for _, p := range pods {
		if p.Enrolled {
			enrolled++
		}
	}
	resp := &cniv1.StatusResponse{Ready: s.ready.Ready(), Pods: uint32(len(pods)), EnrolledPods: uint32(enrolled), Version: s.version}
	if resp.Ready {
		resp.Message = "ready"
	} else {
		resp.Message = "waiting for the first complete mesh state"
		if e := s.ready.LastError(); e != "" {
			resp.Message += ": " + e
		}
	}
	return resp, nil
}

// Listen opens the unix socket at path, root-only (0600). A stale socket
// file from a previous run is replaced.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// Serve runs the gRPC service on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer()
	podregistry.RegisterPodRegistryServer(g, s)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	return g.Serve(l)
}
