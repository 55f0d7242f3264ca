// Package registry is kmesh-cni's client of the daemon's PodRegistry
// (api/cni/v1) over its unix socket. Every call is bounded by the caller's
// context; a daemon that is not there fails at once instead of waiting.
//
// It speaks gRPC (unary calls: HTTP/2 POST, length-prefixed protobuf,
// grpc-status trailers) with a small HTTP/2 client of its own (h2.go)
// rather than grpc-go: kmesh-cni is a process per pod, grpc-go's package
// initialisation alone costs it about 1.2 ms on every run, and a client
// of its own can open the connection at the start of ADD, so the call
// itself is one round trip. The messages are encoded by hand (wire.go)
// for the same reason: the protobuf runtime costs about 0.5 ms per run.
// The daemon serves with grpc-go's server, which the tests run this
// client against. grpc.go is the same client over grpc-go
// (-tags kmesh_grpc_client), which the ADD benchmark runs beside this
// one (TestBenchChainAdd, kmesh-cni-grpc), and the tests run too.
package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// ErrUnreachable wraps every failure to reach the daemon at all, as
// opposed to an answer it gave.
var ErrUnreachable = errors.New("kmesh daemon unreachable")

// gRPC status codes this client tells apart.
const (
	codeDeadlineExceeded = 4
	codeUnimplemented    = 12
	codeUnavailable      = 14
)

// StatusError is a gRPC error status the daemon answered with (or, with
// code Unavailable, a failure to get an answer).
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("rpc error: code = %d desc = %s", e.Code, e.Message)
}

// Interface is one interface of a pod's CNI result (message Interface).
type Interface struct {
	Name, Mac, Sandbox string
}

// Pod is the daemon's description of a pod sandbox (message Pod).
type Pod struct {
	Name        string
	Namespace   string
	UID         string
	ContainerID string
	NetnsPath   string
	NetnsCookie uint64
	IPs         []string
	Interfaces  []Interface
	HostVeth    string
	Enrolled    bool
	Reason      string
	CgroupPath  string
	CgroupID    uint64
	CNIIfname   string
}

// Status is the daemon's answer to Status (message StatusResponse).
type Status struct {
	Ready        bool
	Message      string
	Pods         uint32
	EnrolledPods uint32
	Version      string
	MeshSynced   bool
}

// Decision is the daemon's answer to DecidePod (message
// DecidePodResponse).
type Decision struct {
	Known, Enroll bool
	Reason        string
}

// wrap says which failures mean "no daemon" and how to fix them.
func (c *Client) wrap(op string, err error) error {
	if _, serr := os.Stat(c.socket); serr != nil {
		return fmt.Errorf("%w: %s: socket %s: %v (is the kmesh daemon running on this node?)", ErrUnreachable, op, c.socket, serr)
	}
	var se *StatusError
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &se) && (se.Code == codeUnavailable || se.Code == codeDeadlineExceeded) {
		return fmt.Errorf("%w: %s via %s: %v", ErrUnreachable, op, c.socket, err)
	}
	return fmt.Errorf("kmesh daemon: %s: %w", op, err)
}
