package nodebox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

// DaemonArgs are the flags that tie kmesh-daemon to this box: its cgroup,
// pins, CNI socket, admin address and state folder. Callers add the mesh
// source (--config-file, or --xds-* for istiod) and node identity.
func (b *Box) DaemonArgs() []string {
	return []string{
		"--cgroup-root", b.Cgroup,
		"--bpf-dir", b.PinDir,
		"--cni-socket", b.DaemonSocket,
		"--admin-address", b.AdminAddr,
		"--state-dir", b.path("daemon"),
	}
}

// StartDaemon runs kmesh-daemon inside the node namespace and the box's
// cgroup, with DaemonArgs plus extra, logging to daemon.log. The data path
// stays pinned when it stops, as on a node; Close removes the pins.
func (b *Box) StartDaemon(extra ...string) (*Proc, error) {
	argv := append([]string{b.cfg.Bins.Daemon}, b.DaemonArgs()...)
	argv = append(argv, extra...)
	return b.Start(ProcSpec{Name: "daemon", Argv: argv, InCgroup: true})
}

// WaitDaemonReady polls the daemon's /ready until it reports the first
// complete mesh state in the kernel, the process exits, or ctx ends.
func (b *Box) WaitDaemonReady(ctx context.Context, d *Proc) error {
	var last error
	for {
		code, body, err := b.Admin(ctx, "/ready")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%d %s", code, strings.TrimSpace(string(body)))
		}
		last = err
		if ok, werr := d.Exited(); ok {
			return fmt.Errorf("kmesh-daemon exited (%v) before it was ready; end of %s:\n%s", werr, d.LogPath, Tail(d.LogPath, 3000))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kmesh-daemon not ready: %v (%w); end of %s:\n%s", last, ctx.Err(), d.LogPath, Tail(d.LogPath, 3000))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Admin GETs path from the daemon's admin API inside the node namespace.
func (b *Box) Admin(ctx context.Context, path string) (int, []byte, error) {
	client := &http.Client{
		Transport: &http.Transport{DialContext: b.DialNode, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.AdminAddr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// AdminJSON GETs path and decodes its JSON into v.
func (b *Box) AdminJSON(ctx context.Context, path string, v any) error {
	code, body, err := b.Admin(ctx, path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, code, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

// Kmeshctl runs kmeshctl against the box's daemon (from inside the node
// namespace, where the admin API listens) and returns its output.
func (b *Box) Kmeshctl(ctx context.Context, args ...string) ([]byte, error) {
	return b.KmeshctlAt(ctx, b.AdminAddr, args...)
}

// KmeshctlAt runs kmeshctl in the node against another admin address (a
// waypoint pod's, for `kmeshctl waypoint ...`).
func (b *Box) KmeshctlAt(ctx context.Context, admin string, args ...string) ([]byte, error) {
	if b.cfg.Bins.Kmeshctl == "" {
		return nil, fmt.Errorf("kmeshctl was not built")
	}
	var out []byte
	var runErr error
	err := b.InNode(func() error {
		cmd := exec.CommandContext(ctx, b.cfg.Bins.Kmeshctl, append([]string{"-admin", admin}, args...)...)
		out, runErr = cmd.CombinedOutput()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if runErr != nil {
		return out, fmt.Errorf("kmeshctl %s: %w: %s", strings.Join(args, " "), runErr, out)
	}
	return out, nil
}

// Tail returns about the last n bytes of a file, from a line start.
func Tail(path string, n int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if int64(len(b)) <= n {
		return string(b)
	}
	s := string(b[int64(len(b))-n:])
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
