package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
