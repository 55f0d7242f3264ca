package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMedianInterval(t *testing.T) {
	seq := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[n-1-i] = float64(i + 1) // reversed: the function sorts
		}
		return v
	}
	for _, c := range []struct {
		n      int
		lo, hi float64
		ok     bool
	}{
		// The order statistics of the standard sign-test interval.
		{5, 0, 0, false},
		{6, 1, 6, true},
		{9, 2, 8, true},
		{21, 6, 16, true},
	} {
		lo, hi, ok := medianInterval(seq(c.n))
		if ok != c.ok || lo != c.lo || hi != c.hi {
			t.Errorf("n=%d: got %v-%v ok=%v, want %v-%v ok=%v", c.n, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
	// Its coverage: the tail left out on each side is at most 2.5%.
	for n := 6; n <= 40; n++ {
		lo, _, _ := medianInterval(seq(n))
		k := int(lo)
		tail := 0.0
		for i := 0; i < k; i++ {
			tail += binom(n, i) * math.Pow(0.5, float64(n))
		}
		if tail > 0.025 {
			t.Errorf("n=%d: k=%d leaves %.4f below", n, k, tail)
		}
		if next := tail + binom(n, k)*math.Pow(0.5, float64(n)); next <= 0.025 {
			t.Errorf("n=%d: k=%d is not the largest (k+1 leaves %.4f)", n, k, next)
		}
	}
}

func binom(n, k int) float64 {
	r := 1.0
	for i := 0; i < k; i++ {
		r = r * float64(n-i) / float64(i+1)
	}
	return r
}

// Every sample is a line, in the order paths and measurements first came,
// with its run and its place in that run's order.
func TestWriteCSV(t *testing.T) {
	r := newResults()
	r.add("direct", "new conn c4", sample{qps: 10000, requests: 20000, p90: 930 * time.Microsecond, clientCPU: 1700 * time.Millisecond, run: 1, pos: 0})
	r.add("kmesh", "new conn c4", sample{qps: 9500, requests: 19000, failed: 2, meshCPU: 20 * time.Millisecond, run: 1, pos: 1})
	r.add("direct", "new conn c4", sample{qps: 9900, run: 2, pos: 1})
	name := filepath.Join(t.TempDir(), "s.csv")
	if err := r.writeCSV(name); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"run,pos,path,measurement,qps,requests,failed,p50_ms,p90_ms,p99_ms,client_cpu_ms,server_cpu_ms,proxy_cpu_ms,mesh_cpu_ms",
		"1,0,direct,new conn c4,10000.0,20000,0,0.0000,0.9300,0.0000,1700.0,0.0,0.0,0.0",
		"2,1,direct,new conn c4,9900.0,0,0,0.0000,0.0000,0.0000,0.0,0.0,0.0,0.0",
		"1,1,kmesh,new conn c4,9500.0,19000,2,0.0000,0.0000,0.0000,0.0,0.0,0.0,20.0",
	}
	if got := strings.Split(strings.TrimSpace(string(raw)), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("csv:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
