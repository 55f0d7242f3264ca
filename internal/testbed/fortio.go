package testbed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/internal/fortio"
)

// FortioVersion is the fortio release the benchmarks use.
const FortioVersion = fortio.Version

// Fortio finds the fortio binary (PATH, then ~/go/bin) or skips the test
// saying how to install it.
func Fortio(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("fortio"); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(home, "go", "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "fortio"); fileExists(p) {
			return p
		}
	}
	t.Skipf("fortio not found: go install fortio.org/fortio@%s", FortioVersion)
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// FortioServer runs `fortio server` in the pod (inside cg when not nil)
// until the test ends, and waits until port answers.
func (p *Pod) FortioServer(t testing.TB, cg *Cgroup, bin string, port uint16, args ...string) {
	t.Helper()
	cmd := p.Command(cg, bin, append([]string{"server", "-quiet"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fortio server in %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// The shell execs ip, which execs fortio: one process, ours.
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := p.Dial("tcp", fmt.Sprintf("%s:%d", p.IP4, port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("fortio server in %s exited: %s", p.Name, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("fortio server in %s not answering on %d: %v", p.Name, port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FortioResult is what a load run measured.
type FortioResult struct {
	QPS      float64
	Calls    int64
	Errors   int64
	P50, P99 time.Duration
	P90      time.Duration
}

// FortioLoad runs `fortio load` in the pod (inside cg when not nil) and
// reads its JSON result.
func (p *Pod) FortioLoad(t testing.TB, cg *Cgroup, bin string, args ...string) FortioResult {
	t.Helper()
	r, err := p.RunFortioLoad(cg, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// RunFortioLoad is FortioLoad for a goroutine other than the test's: it
// returns what went wrong instead of failing the test.
func (p *Pod) RunFortioLoad(cg *Cgroup, bin string, args ...string) (FortioResult, error) {
	// -r: 1 µs histogram resolution (the default, 1 ms, hides the difference).
	cmd := p.Command(cg, bin, append([]string{"load", "-quiet", "-json", "-", "-p", "50,90,99", "-r", "0.000001"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return FortioResult{}, fmt.Errorf("fortio load %v: %v\n%s", args, err, stderr.String())
	}
	var res struct {
		ActualQPS         float64
		DurationHistogram struct {
			Count       int64
			Percentiles []struct {
				Percentile float64
				Value      float64
			}
		}
		ErrorsDurationHistogram struct{ Count int64 }
		RetCodes                map[string]int64
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return FortioResult{}, fmt.Errorf("fortio load output: %v\n%s", err, stdout.String())
	}
	r := FortioResult{QPS: res.ActualQPS, Calls: res.DurationHistogram.Count, Errors: res.ErrorsDurationHistogram.Count}
	for code, n := range res.RetCodes {
		if code != "200" && code != "OK" {
			r.Errors += n
		}
	}
	for _, pc := range res.DurationHistogram.Percentiles {
		d := time.Duration(pc.Value * float64(time.Second))
		switch pc.Percentile {
		case 50:
			r.P50 = d
		case 90:
			r.P90 = d
		case 99:
			r.P99 = d
		}
	}
	return r, nil
}
