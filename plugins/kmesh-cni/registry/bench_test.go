package registry_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

// clientEnv makes the test binary a one-call client (see
// TestBenchServers): what kmesh-cni does on ADD, in a fresh process.
const clientEnv = "KMESH_REGISTRY_BENCH_SOCKET"

// TestBenchClientProcess is the client half of TestBenchServers; it does
// nothing in a normal run.
func TestBenchClientProcess(t *testing.T) {
	sock := os.Getenv(clientEnv)
	if sock == "" {
		t.Skip("the client process of TestBenchServers")
	}
	c, _ := registry.Dial(sock)
	defer c.Close()
	// As ADD: the connection is opened first, the call made ~0.7 ms
	// later (the netns visit and the manage entry in between).
	c.Connect(time.Second)
	time.Sleep(700 * time.Microsecond)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Enroll(ctx, &registry.Pod{Name: "p", Namespace: "n", ContainerID: "c", NetnsCookie: 1, Enrolled: true,
		IPs: []string{"10.0.0.2/24"}, NetnsPath: "/var/run/netns/x", HostVeth: "veth1"})
	took := time.Since(start)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Printf("took=%d\n", took.Microseconds())
}

// TestBenchServers times kmesh-cni's daemon call, made from a fresh
// process as ADD makes it, against the daemon's server (grpcunary) and
// grpc-go's, in rotation. It prints a table and asserts nothing.
//
//	KMESH_BENCH=1 go test ./plugins/kmesh-cni/registry -run TestBenchServers -v
func TestBenchServers(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: set KMESH_BENCH=1")
	}
	const n = 200
	servers := []string{"grpcunary (the daemon's)", "grpc-go"}
	socks := make([]string, len(servers))
	for i, name := range servers {
		socks[i] = serve(t, enrollServer{}, strings.Fields(name)[0])
	}
	took := make([][]time.Duration, len(servers))
	for range n {
		for i := range servers {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBenchClientProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), clientEnv+"="+socks[i])
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", servers[i], err, out)
			}
			_, v, ok := strings.Cut(string(out), "took=")
			if !ok {
				t.Fatalf("client said:\n%s", out)
			}
			us, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				t.Fatal(err)
			}
			took[i] = append(took[i], time.Duration(us)*time.Microsecond)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "kmesh-cni's EnrollPod call from a fresh process, %d each, servers in rotation:\n\n", n)
	fmt.Fprintln(&b, "| server | p50 | p90 | p99 |\n|---|---|---|---|")
	for i, name := range servers {
		ds := slices.Clone(took[i])
		slices.Sort(ds)
		q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000 }
		fmt.Fprintf(&b, "| %s | %.3f ms | %.3f ms | %.3f ms |\n", name, q(0.5), q(0.9), q(0.99))
	}
	t.Log("\n" + b.String())
}

// enrollServer answers EnrollPod at once.
type enrollServer struct {
	podregistry.UnimplementedPodRegistryServer
}

func (enrollServer) EnrollPod(context.Context, *cniv1.EnrollPodRequest) (*cniv1.EnrollPodResponse, error) {
	return &cniv1.EnrollPodResponse{Enrolled: true}, nil
}
