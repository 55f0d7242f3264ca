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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

// clientEnv makes the test binary a one-call client (see
// TestBenchClients): what kmesh-cni does on ADD, in a fresh process;
// clientKindEnv picks the client, ours or grpc-go's.
const (
	clientEnv     = "KMESH_REGISTRY_BENCH_SOCKET"
	clientKindEnv = "KMESH_REGISTRY_BENCH_CLIENT"
)

// TestBenchClientProcess is the client half of TestBenchClients; it does
// nothing in a normal run.
func TestBenchClientProcess(t *testing.T) {
	sock := os.Getenv(clientEnv)
	if sock == "" {
		t.Skip("the client process of TestBenchClients")
	}
	pod := &registry.Pod{Name: "p", Namespace: "n", ContainerID: "c", NetnsCookie: 1, Enrolled: true,
		IPs: []string{"10.0.0.2/24"}, NetnsPath: "/var/run/netns/x", HostVeth: "veth1"}
	// As ADD: the connection is opened first, the call made ~0.7 ms
	// later (the netns visit and the manage entry in between).
	var call func(ctx context.Context) error
	if os.Getenv(clientKindEnv) == "grpc-go" {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Connect()
		api := podregistry.NewPodRegistryClient(conn)
		call = func(ctx context.Context) error {
			_, err := api.EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: &cniv1.Pod{Name: pod.Name, Namespace: pod.Namespace,
				ContainerId: pod.ContainerID, NetnsCookie: pod.NetnsCookie, Enrolled: true, Ips: pod.IPs,
				NetnsPath: pod.NetnsPath, HostVeth: pod.HostVeth}})
			return err
		}
	} else {
		c, _ := registry.Dial(sock)
		defer c.Close()
		c.Connect(time.Second)
		call = func(ctx context.Context) error {
			_, err := c.Enroll(ctx, pod)
			return err
		}
	}
	time.Sleep(700 * time.Microsecond)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	took := time.Since(start)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Printf("took=%d\n", took.Microseconds())
}

// TestBenchClients times kmesh-cni's daemon call, made from a fresh
// process as ADD makes it, with kmesh-cni's client and with grpc-go's, in
// rotation, against grpc-go's server (the daemon's). Both run in this
// test binary, which links grpc-go either way: this is the call alone;
// what linking grpc-go costs a process is in the ADD benchmark
// (TestBenchChainAdd, kmesh-cni-grpc). It prints a table and asserts
// nothing.
//
//	KMESH_BENCH=1 go test ./plugins/kmesh-cni/registry -run TestBenchClients -v
func TestBenchClients(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" {
		t.Skip("benchmark: set KMESH_BENCH=1")
	}
	const n = 200
	clients := []string{"kmesh-cni's", "grpc-go"}
	sock := serve(t, enrollServer{})
	took := make([][]time.Duration, len(clients))
	for range n {
		for i, client := range clients {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBenchClientProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), clientEnv+"="+sock, clientKindEnv+"="+client)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", client, err, out)
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
	fmt.Fprintf(&b, "kmesh-cni's EnrollPod call from a fresh process, connection opened 0.7 ms ahead, %d each, clients in rotation, grpc-go's server:\n\n", n)
	fmt.Fprintln(&b, "| client | p50 | p90 | p99 |\n|---|---|---|---|")
	for i, name := range clients {
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
