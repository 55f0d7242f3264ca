package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakedaemon"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func TestRoundTrip(t *testing.T) {
	d := fakedaemon.Start(t, fakedaemon.Socket(t))
	c, err := registry.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pod := &registry.Pod{Name: "web", Namespace: "shop", ContainerID: "c1", NetnsCookie: 9, Enrolled: true}
	if enrolled, err := c.Enroll(ctx(t, 2*time.Second), pod); err != nil || !enrolled {
		t.Fatalf("enroll: %v %v", enrolled, err)
	}
	got, err := c.Pod(ctx(t, 2*time.Second), "c1", "")
	if err != nil || got.NetnsCookie != 9 {
		t.Fatalf("pod: %v %v", got, err)
	}
	if got, err := c.Pod(ctx(t, 2*time.Second), "other", ""); err != nil || got != nil {
		t.Fatalf("unknown pod: %v %v", got, err)
	}
	if d, err := c.Decide(ctx(t, 2*time.Second), "shop", "web", "u"); err != nil || d.Known {
		t.Fatalf("decide, not known: %+v %v", d, err)
	}
	d.Know("shop", "web", true, "namespace label")
	if d, err := c.Decide(ctx(t, 2*time.Second), "shop", "web", "u"); err != nil || !d.Known || !d.Enroll || d.Reason != "namespace label" {
		t.Fatalf("decide: %+v %v", d, err)
	}
	if st, err := c.Status(ctx(t, 2*time.Second)); err != nil || !st.Ready || st.Pods != 1 {
		t.Fatalf("status: %v %v", st, err)
	}
	if err := c.Release(ctx(t, 2*time.Second), "c1", "", 9); err != nil {
		t.Fatal(err)
	}
	if d.Pod("c1") != nil {
		t.Fatal("released pod still registered")
	}
}

func TestDaemonAbsentFailsAtOnce(t *testing.T) {
	c, err := registry.Dial(fakedaemon.Socket(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Enroll(ctx(t, 2*time.Second), &registry.Pod{ContainerID: "c"})
	if !errors.Is(err, registry.ErrUnreachable) || !strings.Contains(err.Error(), "is the kmesh daemon running") {
		t.Fatalf("error %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %v to notice there is no socket", took)
	}
}

func TestHungDaemonIsBoundedByTheContext(t *testing.T) {
	d := fakedaemon.Start(t, fakedaemon.Socket(t))
	d.SetDelay(time.Minute)
	c, err := registry.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Enroll(ctx(t, 200*time.Millisecond), &registry.Pod{ContainerID: "c"})
	if !errors.Is(err, registry.ErrUnreachable) {
		t.Fatalf("error %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %v, bound was 200ms", took)
	}
}

// daemonServer is a PodRegistry with scripted answers.
type daemonServer struct {
	podregistry.UnimplementedPodRegistryServer
	pods    []*cniv1.Pod
	timeout atomic.Int64 // the deadline the last call carried
}

func (s *daemonServer) ListPods(ctx context.Context, _ *cniv1.ListPodsRequest) (*cniv1.ListPodsResponse, error) {
	if dl, ok := ctx.Deadline(); ok {
		s.timeout.Store(int64(time.Until(dl)))
	}
	return &cniv1.ListPodsResponse{Pods: s.pods}, nil
}

func (s *daemonServer) ReleasePod(context.Context, *cniv1.ReleasePodRequest) (*cniv1.ReleasePodResponse, error) {
	return nil, status.Error(codes.FailedPrecondition, "détaché: 100% fini")
}

// serve serves impl with grpc-go's server, as the daemon does.
func serve(t testing.TB, impl podregistry.PodRegistryServer) string {
	sock := fakedaemon.Socket(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	podregistry.RegisterPodRegistryServer(g, impl)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return sock
}

func TestLargeAnswerDeadlineAndErrorStatus(t *testing.T) {
	s := &daemonServer{}
	for i := range 3000 {
		s.pods = append(s.pods, &cniv1.Pod{ContainerId: fmt.Sprintf("c%04d", i), Name: strings.Repeat("p", 60), Ips: []string{"10.0.0.1/24"}})
	}
	c, err := registry.Dial(serve(t, s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.Pod(ctx(t, 3*time.Second), "c2999", "")
	if err != nil || p == nil || p.Name != s.pods[2999].GetName() {
		t.Fatalf("pod: %v %v", p, err)
	}
	// The daemon lists a row per attachment: the one asked for is found,
	// whichever comes first.
	s.pods = append(s.pods,
		&cniv1.Pod{ContainerId: "multi", CniIfname: "eth0", HostVeth: "veth-a"},
		&cniv1.Pod{ContainerId: "multi", CniIfname: "net1", HostVeth: "veth-b"})
	for ifname, veth := range map[string]string{"eth0": "veth-a", "net1": "veth-b", "net9": "veth-a"} {
		if p, err := c.Pod(ctx(t, 3*time.Second), "multi", ifname); err != nil || p == nil || p.HostVeth != veth {
			t.Fatalf("attachment %s: %v %v, want the row of %s", ifname, p, err, veth)
		}
	}
	if d := time.Duration(s.timeout.Load()); d <= 0 || d > 3*time.Second {
		t.Fatalf("the daemon saw a deadline of %v, want up to 3s", d)
	}
	// A daemon without DecidePod (older than the plugin) does not know.
	if d, err := c.Decide(ctx(t, time.Second), "shop", "web", ""); err != nil || d.Known {
		t.Fatalf("decide on a daemon without the method: %+v %v", d, err)
	}
	err = c.Release(ctx(t, time.Second), "c1", "", 1)
	var se *registry.StatusError
	if errors.Is(err, registry.ErrUnreachable) || !errors.As(err, &se) || se.Code != int(codes.FailedPrecondition) || se.Message != "détaché: 100% fini" {
		t.Fatalf("error %v", err)
	}
}

// Connect opens the connection ahead of the first call; a daemon that
// restarts under a connection that served calls is called again on a new
// one (every method is idempotent).
func TestConnectAheadAndDaemonRestart(t *testing.T) {
	d := fakedaemon.Start(t, fakedaemon.Socket(t))
	c, err := registry.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Connect(time.Second)
	if _, err := c.Enroll(ctx(t, 2*time.Second), &registry.Pod{ContainerID: "a"}); err != nil {
		t.Fatal(err)
	}
	d.Stop()
	d.Serve(t)
	if _, err := c.Enroll(ctx(t, 2*time.Second), &registry.Pod{ContainerID: "b"}); err != nil {
		t.Fatalf("after the daemon restarted: %v", err)
	}
	if d.Pod("b") == nil {
		t.Fatal("the restarted daemon did not get the call")
	}
	// Connect to a daemon that is not there: the call says so.
	d.Stop()
	c2, _ := registry.Dial(d.Socket)
	defer c2.Close()
	c2.Connect(time.Second)
	if _, err := c2.Status(ctx(t, time.Second)); !errors.Is(err, registry.ErrUnreachable) {
		t.Fatalf("no daemon: %v", err)
	}
}
