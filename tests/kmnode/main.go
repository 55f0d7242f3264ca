// kmnode brings a real Kubernetes node up on this machine (tests/kubenode)
// with kmesh installed through its DaemonSet, prints how to reach it, and
// removes everything on ^C. `make node` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

func main() {
	noKmesh := flag.Bool("no-kmesh", false, "leave kmesh out (the node's network is the CNI bridge alone)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, !*noKmesh); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, withKmesh bool) error {
	cfg, err := kubenode.Prepare(ctx, log.Printf)
	if err != nil {
		return err
	}
	n, err := kubenode.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		log.Printf("removing the node")
		if err := n.Close(); err != nil {
			log.Printf("close: %v", err)
		}
	}()
	if withKmesh {
		log.Printf("installing kmesh (kubectl apply of install/kubernetes)")
		if err := n.InstallKmesh(ctx); err != nil {
			return err
		}
	}
	// The waypoint of install/kubernetes/waypoint with istiod's address on
	// this node, for kubectl apply -n.
	waypoint := filepath.Join(n.Dir, "waypoint.yaml")
	m, err := n.WaypointManifest()
	if err != nil {
		return err
	}
	if err := os.WriteFile(waypoint, []byte(m), 0o644); err != nil {
		return err
	}
	kubectl := n.KubectlPath()
	fmt.Printf(`
The node %s (%s) is Ready%s. In another shell, as root:

  # kubectl, from the node's network namespace where the apiserver listens
  alias k='nsenter --net=%s -- %s --kubeconfig=%s'
  k get pods -A -o wide
  k create namespace demo && k label namespace demo istio.io/dataplane-mode=kmesh
  k -n demo create deployment echo --image=%s --port=8080
  k -n demo expose deployment echo --port=80 --target-port=8080
  # L7: a waypoint (install/kubernetes/waypoint, istiod's address adapted), echo opted in
  k apply -n demo -f %s
  k -n demo label service echo istio.io/use-waypoint=waypoint
  # a shell on the node: its /etc/cni/net.d, /opt/cni/bin, ctr -n k8s.io, bpftool
  nsenter --mount=%s --net=%s -- sh

Logs: %s
^C removes everything.
`, n.Name, n.IP, map[bool]string{true: " with kmesh installed", false: ""}[withKmesh],
		n.NetNSPath, kubectl, n.CP.Kubeconfig, kubenode.FortioImage, waypoint, n.MountNSPath(), n.NetNSPath, n.Dir)
	<-ctx.Done()
	return nil
}
