package node

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/tests/kubenode"
)

// state is what kmesh and the kubelet keep per pod on the node, counted
// from the kernel and the files themselves.
type state struct {
	live               map[string]bool // UIDs of the pods the API has
	registry, enrolled int             // kmesh-daemon's registry
	records            []string        // pod UIDs of kmesh-cni's records
	manage, podTC      int             // entries of km_manage and km_pod_tc
	tcVeths            int             // host veths with a kmesh tc filter
	cgroups            []string        // pod cgroups, in any hierarchy
}

func nodeState(t *testing.T, n *kubenode.Node) state {
	t.Helper()
	ctx := context.Background()
	s := state{live: map[string]bool{}}
	pods, err := n.Clientset.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		s.live[string(p.UID)] = true
	}
	for _, p := range daemonPods(t, n) {
		s.registry++
		if p.Enrolled {
			s.enrolled++
		}
	}
	out, err := n.Exec(ctx, "sh", "-c", "cat /run/kmesh/cni/*.json 2>/dev/null; true")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var r struct {
			PodUID string `json:"podUID"`
		}
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("kmesh-cni record: %v", err)
		}
		s.records = append(s.records, r.PodUID)
	}
	slices.Sort(s.records)
	s.manage = mapEntries(t, n, "km_manage")
	s.podTC = mapEntries(t, n, "km_pod_tc")
	out, err = n.Exec(ctx, "sh", "-c", `for d in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
		echo "== $d"; tc filter show dev "$d" ingress; tc filter show dev "$d" egress; done`)
	if err != nil {
		t.Fatal(err)
	}
	for _, dev := range strings.Split(string(out), "== ")[1:] {
		if strings.Contains(dev, "km_") {
			s.tcVeths++
		}
	}
	s.cgroups = n.PodCgroups()
	slices.Sort(s.cgroups)
	return s
}

func (s state) String() string {
	return fmt.Sprintf("%d live pods; daemon registry %d (%d enrolled); %d kmesh-cni records; km_manage %d, km_pod_tc %d; %d veths with kmesh's tc filter; %d pod cgroups",
		len(s.live), s.registry, s.enrolled, len(s.records), s.manage, s.podTC, s.tcVeths, len(s.cgroups))
}

// mapEntries counts the entries of a pinned kmesh map with bpftool.
func mapEntries(t *testing.T, n *kubenode.Node, name string) int {
	t.Helper()
	out, err := n.Exec(context.Background(), "bpftool", "-j", "map", "dump", "pinned", "/sys/fs/bpf/kmesh/maps/"+name)
	if err != nil {
		t.Fatal(err)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool map dump %s: %v", name, err)
	}
	return len(entries)
}

// diff says how s differs from before, and what in s belongs to no live
// pod; "" when nothing.
func (s state) diff(before state) string {
	var d []string
	cmp := func(what string, now, was int) {
		if now != was {
			d = append(d, fmt.Sprintf("%s: %d, was %d", what, now, was))
		}
	}
	cmp("daemon registry", s.registry, before.registry)
	cmp("enrolled pods", s.enrolled, before.enrolled)
	cmp("kmesh-cni records", len(s.records), len(before.records))
	cmp("km_manage entries", s.manage, before.manage)
	cmp("km_pod_tc entries", s.podTC, before.podTC)
	cmp("veths with a kmesh tc filter", s.tcVeths, before.tcVeths)
	cmp("pod cgroups", len(s.cgroups), len(before.cgroups))
	for _, uid := range s.records {
		if !s.live[uid] {
			d = append(d, "kmesh-cni record of gone pod "+uid)
		}
	}
	for _, c := range s.cgroups {
		_, pod, _ := strings.Cut(c, ":")
		uid := strings.ReplaceAll(strings.TrimPrefix(pod, "pod"), "_", "-")
		if !s.live[uid] {
			d = append(d, "cgroup of gone pod "+c)
		}
	}
	return strings.Join(d, "; ")
}
