package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// TestBenchCompareBinaries runs the chain's ADD with each kmesh-cni binary
// named in KMESH_BENCH_BINARIES (comma-separated paths, e.g. one built from
// main and one from a change), without kmesh-cni, and with the empty Go
// plugin in its place (the control: what any Go plugin's exec, start and
// exit cost), pod after pod in rotation, so every variant sees the same
// spells of a noisy machine. It prints each variant's chain and process
// times and its processes' CPU time, each beside the empty plugin's; it
// asserts nothing.
//
//	KMESH_KERNEL_TESTS=1 KMESH_BENCH=1 KMESH_BENCH_BINARIES=/tmp/old,/tmp/new \
//	  go test ./plugins/kmesh-cni -run TestBenchCompareBinaries -v
func TestBenchCompareBinaries(t *testing.T) {
	if os.Getenv("KMESH_BENCH") != "1" || os.Getenv("KMESH_BENCH_BINARIES") == "" {
		t.Skip("benchmark: set KMESH_BENCH=1 and KMESH_BENCH_BINARIES")
	}
	bins := strings.Split(os.Getenv("KMESH_BENCH_BINARIES"), ",")
	e := newEnv(t)
	dir := t.TempDir()
	lists := []*libcni.NetworkConfigList{e.conflist(netOpts{noKmesh: true}), e.conflist(netOpts{emptyPlugin: true})}
	names := []string{"chain without kmesh-cni", "chain with the empty plugin"}
	for i, bin := range bins {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		// A link of another name: the conflist's type picks the binary,
		// and perf sees the real file.
		typ := fmt.Sprintf("kmesh-cni-%c", 'a'+i)
		if err := os.Symlink(abs, filepath.Join(dir, typ)); err != nil {
			t.Fatal(err)
		}
		l := e.conflist(netOpts{defaultEnroll: true, logLevel: "info"})
		for _, p := range l.Plugins {
			if p.Network.Type == "kmesh-cni" {
				p.Bytes = []byte(strings.Replace(string(p.Bytes), `"type":"kmesh-cni"`, `"type":"`+typ+`"`, 1))
				p.Network.Type = typ
			}
		}
		lists = append(lists, l)
		names = append(names, fmt.Sprintf("chain with %s (%s)", typ, bin))
	}
	te := &timedExec{took: map[string][]time.Duration{}}
	e.cni = libcni.NewCNIConfigWithCacheDir(append([]string{dir}, pluginPaths(t)...), filepath.Join(e.dir, "cache"), te)

	const n = 100
	for i := range 3 { // warm the page cache and the data path
		for j, l := range lists {
			e.mustAdd(l, e.newPod(fmt.Sprintf("warm%d-%d", j, i)))
		}
	}
	te.took, te.cpu = map[string][]time.Duration{}, map[string][]time.Duration{}
	took := make([][]time.Duration, len(lists))
	for i := range n {
		for k := range lists {
			j := (i + k) % len(lists)
			p := e.newPod(fmt.Sprintf("p%d-%d", j, i))
			start := time.Now()
			e.mustAdd(lists[j], p)
			took[j] = append(took[j], time.Since(start))
		}
	}

	pc := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(q*float64(len(s)-1)+0.5)].Microseconds()) / 1000
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nCNI ADD, %d pods per variant in rotation:\n\n| | p50 | p90 | p99 | added p50 | added p99 |\n|---|---|---|---|---|---|\n", n)
	for j := range lists {
		fmt.Fprintf(&b, "| %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms |\n", names[j],
			pc(took[j], .5), pc(took[j], .9), pc(took[j], .99), pc(took[j], .5)-pc(took[0], .5), pc(took[j], .99)-pc(took[0], .99))
	}
	// The processes themselves, each beside the empty plugin's: in the
	// last two columns the difference of p50s and of p99s (the target is
	// the wall time's p99 difference; CPU time leaves out the waits for a
	// CPU that another job on the machine causes).
	procs := []string{emptyPluginName}
	for i := range bins {
		procs = append(procs, fmt.Sprintf("kmesh-cni-%c", 'a'+i))
	}
	for _, m := range []struct {
		what string
		ds   map[string][]time.Duration
	}{{"process %s (exec to exit)", te.took}, {"CPU time of %s (user + system)", te.cpu}} {
		base := m.ds[emptyPluginName]
		for _, typ := range procs {
			ds := m.ds[typ]
			fmt.Fprintf(&b, "| "+m.what+" | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms |\n", typ, pc(ds, .5), pc(ds, .9), pc(ds, .99),
				pc(ds, .5)-pc(base, .5), pc(ds, .99)-pc(base, .99))
		}
	}
	if ds := te.took["loopback"]; len(ds) > 0 {
		fmt.Fprintf(&b, "| process loopback (exec to exit) | %.2f ms | %.2f ms | %.2f ms | | |\n", pc(ds, .5), pc(ds, .9), pc(ds, .99))
	}
	fmt.Fprintf(&b, "\n(In the process and CPU rows the last two columns are beyond the empty plugin's, not the chain's.)\n")
	t.Log(b.String())
}
