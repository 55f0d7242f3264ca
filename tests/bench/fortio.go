package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// kind is one measurement: fortio load arguments beyond the URL.
type kind struct {
	name  string
	group string // fixed, sat or newconn (the -measure flag); grpc
	args  []string
	grpc  bool // to the path's gRPC target (fortio's -grpc -ping)
}

const payload = "1024" // bytes POSTed and echoed back: 1 KiB each way

// measurements are the runs every path gets: the fixed rate Istio reports,
// saturation as Kmesh reports it, and a new connection per request, where a
// connect-time design does its work.
func measurements(fixed, sat, nc time.Duration) []kind {
	k := []kind{{
		name:  "fixed 1000qps c16",
		group: "fixed",
		args:  []string{"-qps", "1000", "-c", "16", "-t", fixed.String(), "-payload-size", payload},
	}}
	for _, c := range []int{1, 16, 64} {
		k = append(k, kind{
			name:  fmt.Sprintf("max qps c%d", c),
			group: "sat",
			args:  []string{"-qps", "0", "-c", strconv.Itoa(c), "-t", sat.String(), "-payload-size", payload},
		})
	}
	return append(k, kind{
		name:  "new conn c4",
		group: "newconn",
		args:  []string{"-qps", "0", "-c", "4", "-keepalive=false", "-t", nc.String(), "-payload-size", payload},
	})
}

// fortioResult is the part of fortio's JSON the tables use.
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	ErrorsDurationHistogram struct {
		Count int64
	}
	cpu time.Duration // the client's user+system time
}

func (r fortioResult) count() int64 { return r.DurationHistogram.Count }

// failed counts what did not end in 200 (HTTP) or SERVING (gRPC ping).
func (r fortioResult) failed() int64 { return r.count() - r.RetCodes["200"] - r.RetCodes["SERVING"] }

// percentile returns the p-th percentile latency.
func (r fortioResult) percentile(p float64) time.Duration {
	for _, x := range r.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return time.Duration(x.Value * float64(time.Second))
		}
	}
	return 0
}

// fortio runs `fortio load` from the client pod down a path: inside the
// box's cgroup for kmesh's paths, outside it for the others, so their
// sockets see no kmesh program at all.
func (b *bench) fortio(ctx context.Context, p *path, target string, args ...string) (fortioResult, error) {
	b.seq++
	out := filepath.Join(b.box.Dir, fmt.Sprintf("fortio-%d.json", b.seq))
	argv := append([]string{b.bins.Fortio, "load", "-quiet", "-json", out, "-p", "50,90,99"}, args...)
	argv = append(argv, target)
	spec := nodebox.ProcSpec{Name: "fortio-client", Argv: argv, Pod: b.client, InCgroup: p.inMesh}
	if !p.inMesh {
		spec.Cgroup = b.outside
	}
	proc, err := b.box.Start(spec)
	if err != nil {
		return fortioResult{}, err
	}
	select {
	case <-proc.Done():
	case <-ctx.Done():
		_ = proc.Kill()
		return fortioResult{}, ctx.Err()
	}
	if err := proc.Wait(); err != nil {
		return fortioResult{}, fmt.Errorf("fortio: %v; end of %s:\n%s", err, proc.LogPath, nodebox.Tail(proc.LogPath, 1500))
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return fortioResult{}, err
	}
	_ = os.Remove(out)
	var r fortioResult
	if err := json.Unmarshal(raw, &r); err != nil {
		return fortioResult{}, fmt.Errorf("fortio JSON: %w", err)
	}
	u, s, err := proc.CPU()
	if err != nil {
		return fortioResult{}, err
	}
	r.cpu = u + s
	return r, nil
}
