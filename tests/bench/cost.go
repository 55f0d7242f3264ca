package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/tests/benchtab"
)

// The rate tables compare paths on a machine whose speed moves by more than
// kmesh costs; this pass says what kmesh itself spends, which does not move
// with the neighbours: the kernel's own account of each program's run time
// (helpers included) over one more new-connection run, and the daemon's CPU
// in that run. It runs after the rate runs because the kernel's accounting
// adds two clock reads to every program run.

// progCost is one program's runs and run time in the cost pass.
type progCost struct {
	name    string
	runs    uint64
	runtime time.Duration
}

// costResult is the cost pass's account.
type costResult struct {
	path        string
	connections int64
	progs       []progCost
	daemon      time.Duration
}

// meshPrograms opens the box's kmesh programs: those behind the daemon's
// pinned links (the socket hooks) and the pinned tc program kmesh-cni
// attaches to pod veths. Only this box's, so another kmesh on the machine
// does not count.
func (b *bench) meshPrograms() ([]*ebpf.Program, error) {
	var progs []*ebpf.Program
	links, err := filepath.Glob(filepath.Join(b.box.PinDir, "links", "*"))
	if err != nil {
		return nil, err
	}
	seen := map[ebpf.ProgramID]bool{}
	for _, pin := range links {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return closeAll(progs), fmt.Errorf("open %s: %w", pin, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return closeAll(progs), fmt.Errorf("%s: %w", pin, err)
		}
		if seen[info.Program] {
			continue
		}
		seen[info.Program] = true
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return closeAll(progs), fmt.Errorf("%s: %w", pin, err)
		}
		progs = append(progs, p)
	}
	tcs, err := filepath.Glob(filepath.Join(b.box.PinDir, "progs", "*"))
	if err != nil {
		return closeAll(progs), err
	}
	for _, pin := range tcs {
		p, err := ebpf.LoadPinnedProgram(pin, nil)
		if err != nil {
			return closeAll(progs), fmt.Errorf("open %s: %w", pin, err)
		}
		progs = append(progs, p)
	}
	if len(progs) == 0 {
		return nil, errors.New("no kmesh programs pinned in " + b.box.PinDir)
	}
	return progs, nil
}

func closeAll(progs []*ebpf.Program) []*ebpf.Program {
	for _, p := range progs {
		p.Close()
	}
	return nil
}

// costPass runs one new-connection measurement on a mesh path with the
// kernel's program statistics on.
func (b *bench) costPass(ctx context.Context, p *path, k kind) (*costResult, error) {
	if err := b.clientTC(true); err != nil {
		return nil, err
	}
	progs, err := b.meshPrograms()
	if err != nil {
		return nil, err
	}
	defer closeAll(progs)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()
	// The programs' counters and the daemon's CPU, before and after.
	snap := func() ([]ebpf.ProgramStats, time.Duration, error) {
		out := make([]ebpf.ProgramStats, len(progs))
		for i, p := range progs {
			s, err := p.Stats()
			if err != nil {
				return nil, 0, err
			}
			out[i] = *s
		}
		u, sy, err := b.daemon.CPU()
		return out, u + sy, err
	}
	before, cpu0, err := snap()
	if err != nil {
		return nil, err
	}
	r, err := b.fortio(ctx, p, p.url, k.args...)
	if err != nil {
		return nil, err
	}
	after, cpu1, err := snap()
	if err != nil {
		return nil, err
	}
	if r.failed() > 0 || r.count() == 0 {
		return nil, fmt.Errorf("%d of %d requests failed", r.failed(), r.count())
	}
	c := &costResult{path: p.key, connections: r.count(), daemon: cpu1 - cpu0}
	for i, p := range progs {
		runs := after[i].RunCount - before[i].RunCount
		if runs == 0 {
			continue
		}
		name := fmt.Sprintf("prog %d", i)
		if info, err := p.Info(); err == nil {
			name = info.Name
		}
		c.progs = append(c.progs, progCost{name: name, runs: runs, runtime: after[i].Runtime - before[i].Runtime})
	}
	slices.SortFunc(c.progs, func(x, y progCost) int { return int(y.runtime - x.runtime) })
	return c, nil
}

// print shows the cost pass as a table.
func (c *costResult) print() {
	n := float64(c.connections)
	fmt.Printf("\n5. What kmesh itself spends per new connection (path %s, one more run of %d connections with the\n", c.path, c.connections)
	fmt.Println("   kernel's BPF run-time statistics on: each program's own time, helpers and map work included;")
	fmt.Println("   the accounting itself adds ~20-40 ns to every run; the daemon's from /proc)")
	fmt.Println()
	t := &benchtab.Table{Header: []string{"where", "runs per connection", "ns per run", "ns per connection"}}
	var total time.Duration
	for _, p := range c.progs {
		total += p.runtime
		t.Rows = append(t.Rows, []string{p.name, fmt.Sprintf("%.2f", float64(p.runs)/n),
			fmt.Sprintf("%.0f", float64(p.runtime.Nanoseconds())/float64(p.runs)),
			fmt.Sprintf("%.0f", float64(p.runtime.Nanoseconds())/n)})
	}
	t.Rows = append(t.Rows, []string{"all kmesh programs", "", "", fmt.Sprintf("%.0f", float64(total.Nanoseconds())/n)})
	t.Rows = append(t.Rows, []string{"kmesh-daemon (user+system)", "", "", fmt.Sprintf("%.0f", float64(c.daemon.Nanoseconds())/n)})
	t.Print()
}
