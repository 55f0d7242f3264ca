package cniserver

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
)

// Health is what Status reports.
type Health interface {
	// Datapath is nil while the data path is loaded (its pins in place):
	// what a pod's network setup needs.
	Datapath() error
	// Synced reports whether the first complete mesh state is in the maps.
	Synced() bool
	// LastError is the mesh source's last error, if any.
	LastError() string
}

// Decider decides a pod's enrollment from a watch of the Kubernetes API;
// known is false when it cannot (not synced, pod or namespace not seen).
type Decider interface {
	Decide(namespace, name, uid string) (enroll bool, reason string, known bool)
}

// Server implements the PodRegistry gRPC service.
type Server struct {
	podregistry.UnimplementedPodRegistryServer
	reg     *Registry
	health  Health
	version string
	decider Decider // nil without Kubernetes access
}

// NewServer serves reg. decider may be nil: DecidePod then answers that it
// does not know, and the plugin reads the API itself.
func NewServer(reg *Registry, health Health, version string, decider Decider) *Server {
	return &Server{reg: reg, health: health, version: version, decider: decider}
}

func (s *Server) DecidePod(_ context.Context, req *cniv1.DecidePodRequest) (*cniv1.DecidePodResponse, error) {
	if req.GetNamespace() == "" || req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "namespace and name are required")
	}
	if s.decider == nil {
		return &cniv1.DecidePodResponse{}, nil
	}
	enroll, reason, known := s.decider.Decide(req.GetNamespace(), req.GetName(), req.GetUid())
	return &cniv1.DecidePodResponse{Known: known, Enroll: enroll, Reason: reason}, nil
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

// ListPods lists a row per attachment (a pod in several networks has
// one per network, each with its host veth); the plugin picks its own by
// container id and cni_ifname.
func (s *Server) ListPods(context.Context, *cniv1.ListPodsRequest) (*cniv1.ListPodsResponse, error) {
	return &cniv1.ListPodsResponse{Pods: s.reg.Attachments()}, nil
}

// Status is ready once the data path is loaded, not only after the first
// mesh sync: kmesh-cni's CNI STATUS follows it, and a runtime marks the
// node's network not ready (kubelet: NetworkReady=false, no new pods on
// the node) while STATUS fails. The mesh state is not needed to set a pod
// up: the plugin enrolls it in the kernel, and the maps keep the last
// state (or, before the first sync, pass connections through unchanged).
// Failing STATUS whenever istiod is unreachable would turn a control-plane
// outage into every node refusing pods. The sync state is reported beside
// it (mesh_synced, the message) and on the daemon's /ready.
func (s *Server) Status(context.Context, *cniv1.StatusRequest) (*cniv1.StatusResponse, error) {
	pods := s.reg.Pods()
	enrolled := 0
	for _, p := range pods {
		if p.Enrolled {
			enrolled++
		}
	}
	resp := &cniv1.StatusResponse{Pods: uint32(len(pods)), EnrolledPods: uint32(enrolled), Version: s.version,
		MeshSynced: s.health.Synced()}
	dpErr := s.health.Datapath()
	resp.Ready = dpErr == nil
	switch {
	case dpErr != nil:
		resp.Message = "data path not loaded: " + dpErr.Error()
	case resp.MeshSynced:
		resp.Message = "ready"
	default:
		resp.Message = "ready (data path loaded); mesh state not synced yet"
		if e := s.health.LastError(); e != "" {
			resp.Message += ": " + e
		}
	}
	return resp, nil
}

// Serve runs the gRPC service on l until ctx ends; calls in progress then
// finish (every handler answers from memory, DecidePod within 150 ms).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer()
	podregistry.RegisterPodRegistryServer(g, s)
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	return g.Serve(l)
}
