// Package registry is kmesh-cni's client of the daemon's PodRegistry
// (api/cni/v1) over its unix socket. Every call is bounded by the caller's
// context; a daemon that is not there fails at once instead of waiting.
//
// It speaks gRPC (unary calls: HTTP/2 POST, length-prefixed protobuf,
// grpc-status trailers) with a small HTTP/2 client of its own (h2.go) and
// messages encoded by hand (wire.go), not grpc-go and protobuf: kmesh-cni
// is a process per pod, and those two cost every run their package
// initialisation (~1.2 and ~0.5 ms) and a binary of 16.7 MB instead of
// 6.5 MB; a client of its own also opens the connection at the start of
// ADD, so the call itself is one round trip. grpc.go is the same client
// over grpc-go (-tags kmesh_grpc_client), which the tests run too and the
// ADD benchmarks run beside this one (kmesh-cni-grpc in
// TestBenchChainAdd; a binary of each in TestBenchCompareBinaries). On
// this 2-core machine under other builds' load, kmesh-cni's process took
// 2.3-4.5 ms more at p50 with grpc-go's client in each of eight
// interleaved runs; in the quietest (load ~7) 7.34 against 4.39 ms at
// p50, 13.54 against 7.59 ms at p99, and ADD's added p50 7.74 against
// 4.17 ms, over the 5 ms target. The call alone (TestBenchClients, from a
// fresh process) takes 0.25 against 0.65 ms at p50. So its ~1,100 lines
// stay while the budget is this tight. The daemon serves with grpc-go's
// server, which the tests run both clients against.
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

// pick finds the row of the attachment on ifname among the daemon's: it
// lists a row per attachment of a sandbox (a pod in several networks has
// one per network). A daemon that keeps one row per sandbox (older ones)
// has its newest attachment's, which is the sandbox's all the same.
func pick(pods []*Pod, containerID, ifname string) *Pod {
	var first *Pod
	for _, p := range pods {
		if p.ContainerID != containerID {
			continue
		}
		if p.CNIIfname == ifname {
			return p
		}
		if first == nil {
			first = p
		}
	}
	return first
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
