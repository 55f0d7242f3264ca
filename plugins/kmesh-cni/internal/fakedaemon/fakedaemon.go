// Package fakedaemon is an in-test PodRegistry server on a unix socket: a
// stand-in for the kmesh daemon that records what kmesh-cni told it.
package fakedaemon

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
)

// Daemon is a running fake. Its zero value is not usable; call Start.
type Daemon struct {
	podregistry.UnimplementedPodRegistryServer
	Socket string

	mu   sync.Mutex
	pods map[string]*cniv1.Pod
	// decisions is what the daemon's watch of the API would say, by
	// "namespace/name"; a pod not in it is not known.
	decisions map[string]*cniv1.DecidePodResponse
	asked     int
	released  []string
	ready     bool
	// delay holds every call this long (a hung daemon).
	delay time.Duration
	srv   *grpc.Server
	done  chan struct{}
}

// Socket returns a fresh socket path in a test temporary directory.
// Unix socket paths are limited to 107 bytes, so it avoids long t.TempDir
// names.
func Socket(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmcni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "cni.sock")
}

// Start serves on socket until Stop or the end of the test.
func Start(t testing.TB, socket string) *Daemon {
	t.Helper()
	d := &Daemon{Socket: socket, pods: map[string]*cniv1.Pod{}, ready: true}
	d.Serve(t)
	return d
}

// Serve (re)starts serving on d.Socket, keeping what d knows unless it was
// Forget-ed: a daemon coming back.
func (d *Daemon) Serve(t testing.TB) {
	t.Helper()
	_ = os.Remove(d.Socket)
	l, err := net.Listen("unix", d.Socket)
	if err != nil {
		t.Fatalf("fake daemon: listen on %s: %v", d.Socket, err)
	}
	d.srv = grpc.NewServer() // as the daemon serves
	podregistry.RegisterPodRegistryServer(d.srv, d)
	d.done = make(chan struct{})
	go func(srv *grpc.Server, done chan struct{}) {
		_ = srv.Serve(l)
		close(done)
	}(d.srv, d.done)
	t.Cleanup(d.Stop)
}

// Stop stops serving and removes the socket; safe to call again.
func (d *Daemon) Stop() {
	if d.srv == nil {
		return
	}
	d.srv.Stop()
	<-d.done
	d.srv = nil
	_ = os.Remove(d.Socket)
}

// Forget drops every pod, as a restarted daemon would.
func (d *Daemon) Forget() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pods = map[string]*cniv1.Pod{}
}

// SetReady sets what Status reports.
func (d *Daemon) SetReady(ready bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready = ready
}

// SetDelay makes every call wait this long before it answers.
func (d *Daemon) SetDelay(delay time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delay = delay
}

// Pod returns the registered pod of a container, or nil.
func (d *Daemon) Pod(containerID string) *cniv1.Pod {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.pods[containerID]; ok {
		return proto.Clone(p).(*cniv1.Pod)
	}
	return nil
}

// SetEnrolled changes a registered pod's enrollment, as the daemon does
// when labels change after ADD.
func (d *Daemon) SetEnrolled(containerID string, enrolled bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.pods[containerID]; ok {
		p.Enrolled = enrolled
	}
}

// Released lists the container ids ReleasePod was called for, in order.
func (d *Daemon) Released() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.released)
}

// wait holds a call for the delay; a call whose deadline (the client's
// grpc-timeout) passes meanwhile fails, as with grpc-go's own servers'
// handlers that respect their context.
func (d *Daemon) wait(ctx context.Context) error {
	d.mu.Lock()
	delay := d.delay
	d.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	return nil
}

func (d *Daemon) EnrollPod(ctx context.Context, r *cniv1.EnrollPodRequest) (*cniv1.EnrollPodResponse, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := proto.Clone(r.GetPod()).(*cniv1.Pod)
	d.pods[p.GetContainerId()] = p
	return &cniv1.EnrollPodResponse{Enrolled: p.GetEnrolled()}, nil
}

func (d *Daemon) ReleasePod(ctx context.Context, r *cniv1.ReleasePodRequest) (*cniv1.ReleasePodResponse, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, known := d.pods[r.GetContainerId()]
	delete(d.pods, r.GetContainerId())
	d.released = append(d.released, r.GetContainerId())
	return &cniv1.ReleasePodResponse{Known: known}, nil
}

func (d *Daemon) ListPods(ctx context.Context, _ *cniv1.ListPodsRequest) (*cniv1.ListPodsResponse, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := &cniv1.ListPodsResponse{}
	for _, p := range d.pods {
		out.Pods = append(out.Pods, proto.Clone(p).(*cniv1.Pod))
	}
	return out, nil
}

func (d *Daemon) Status(ctx context.Context, _ *cniv1.StatusRequest) (*cniv1.StatusResponse, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &cniv1.StatusResponse{Ready: d.ready, Pods: uint32(len(d.pods))}
	if !d.ready {
		st.Message = "fake daemon set not ready"
	}
	for _, p := range d.pods {
		if p.GetEnrolled() {
			st.EnrolledPods++
		}
	}
	return st, nil
}

// Know makes DecidePod answer for the pod namespace/name (any uid) with
// the decision, as a daemon whose watch has seen it.
func (d *Daemon) Know(namespace, name string, enroll bool, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.decisions == nil {
		d.decisions = map[string]*cniv1.DecidePodResponse{}
	}
	d.decisions[namespace+"/"+name] = &cniv1.DecidePodResponse{Known: true, Enroll: enroll, Reason: reason}
}

// Asked counts DecidePod calls.
func (d *Daemon) Asked() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked
}

func (d *Daemon) DecidePod(ctx context.Context, r *cniv1.DecidePodRequest) (*cniv1.DecidePodResponse, error) {
	if err := d.wait(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	if a, ok := d.decisions[r.GetNamespace()+"/"+r.GetName()]; ok {
		return proto.Clone(a).(*cniv1.DecidePodResponse), nil
	}
	return &cniv1.DecidePodResponse{}, nil
}
