// kmesh-bench-node measures kmesh on a real node (tests/kubenode): pods made
// by the kubelet and containerd, kmesh installed with kubectl apply.
//
//  1. Pod start-up: the time from a pod's creation to its Ready condition,
//     one pod at a time, with kmesh-cni in the chain (the pod enrolled, or
//     in a namespace without the label) and without it (the DaemonSet
//     deleted, so the chain is the CNI bridge alone). Rounds alternate the
//     order, the DaemonSet is deleted and applied again between them, and
//     within a round plain and enrolled pods are taken in turn.
//  2. L4 through kubelet-made pods: fortio (kubectl exec in a client pod)
//     down each path, as tests/bench measures on namespaces: direct to the
//     pod IP, kube-proxy's DNAT rule, kmesh's connect-time rewrite of a VIP.
//
// It prints Markdown tables and never fails on a time. `make bench-node`.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

func main() {
	pods := flag.Int("pods", 50, "pods per chain for the start-up table")
	rounds := flag.Int("rounds", 10, "rounds the start-up pods are split into (the chains alternate between them)")
	l4 := flag.Bool("l4", true, "also measure the L4 paths")
	l4Runs := flag.Int("l4-runs", 3, "runs of every L4 path and measurement")
	l4Dur := flag.Duration("l4-duration", 5*time.Second, "length of one fortio run")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *pods, *rounds, *l4, *l4Runs, *l4Dur); err != nil {
		log.Fatal(err)
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func run(ctx context.Context, pods, rounds int, l4 bool, l4Runs int, l4Dur time.Duration) error {
	cfg, err := kubenode.Prepare(ctx, log.Printf)
	if err != nil {
		return err
	}
	n, err := kubenode.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := n.Close(); err != nil {
			log.Printf("close the node: %v", err)
		}
	}()
	for _, ns := range []string{"bench-plain", "bench-mesh"} {
		label := ""
		if ns == "bench-mesh" {
			label = "\n  labels: {istio.io/dataplane-mode: kmesh}"
		}
		if err := n.Apply(ctx, fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s%s\n", ns, label)); err != nil {
			return err
		}
		if err := n.CP.WaitServiceAccount(ctx, ns, "default"); err != nil {
			return err
		}
	}

	start := time.Now()
	load1 := loadavg()
	chains := []*chain{
		{name: "without kmesh in the chain (bridge alone)"},
		{name: "kmesh-cni in the chain, namespace not labelled", kmesh: true},
		{name: "kmesh-cni in the chain, pod enrolled", kmesh: true, enroll: true},
	}
	installed := false
	setKmesh := func(on bool) error {
		if on == installed {
			return nil
		}
		installed = on
		if on {
			return n.InstallKmesh(ctx)
		}
		return n.UninstallKmesh(ctx)
	}
	per := max(1, pods/rounds)
	seq := 0
	for r := range rounds {
		// Without kmesh, then with it (plain and enrolled pods taken in
		// turn), and the other way round in odd rounds: one reinstall per
		// round.
		phases := [][]*chain{{chains[0]}, {chains[1], chains[2]}}
		if r%2 == 1 {
			phases = [][]*chain{{chains[2], chains[1]}, {chains[0]}}
		}
		for _, phase := range phases {
			if err := setKmesh(phase[0].kmesh); err != nil {
				return err
			}
			// Let the daemon's start settle before timing pods.
			time.Sleep(2 * time.Second)
			var nss []string
			for _, c := range phase {
				nss = append(nss, c.namespace())
			}
			got, err := startupRound(ctx, n, nss, per, &seq)
			if err != nil {
				return fmt.Errorf("round %d: %w", r+1, err)
			}
			for _, c := range phase {
				c.samples = append(c.samples, got[c.namespace()]...)
				log.Printf("round %d/%d: %s: %d pods", r+1, rounds, c.name, len(got[c.namespace()]))
			}
		}
	}
	fmt.Printf("\n### Pod start-up on a real node: creation to Ready, one pod at a time\n\n")
	fmt.Printf("kubelet %s, containerd 1.6 (Debian), CNI bridge + host-local; %d rounds, chains alternating; load average %s before, %s after; %s.\n\n",
		"1.36 (pinned module)", rounds, load1, loadavg(), time.Since(start).Round(time.Second))
	printStartup(chains)
	if err := printCNITimes(ctx, n); err != nil {
		return err
	}

	if !l4 {
		return nil
	}
	if err := setKmesh(true); err != nil {
		return err
	}
	b, err := setUpL4(ctx, n)
	if err != nil {
		return err
	}
	return b.run(ctx, l4Runs, l4Dur)
}
