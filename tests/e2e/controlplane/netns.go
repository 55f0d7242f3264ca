package controlplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns add` keeps its bind mounts.
const netnsDir = "/var/run/netns"

// AddLoopbackNetNS creates the named network namespace with only its loopback
// interface, brought up, so whatever runs inside can reach nothing but itself.
// The returned function deletes it; call it even when a test fails.
func AddLoopbackNetNS(name string) (remove func() error, err error) {
	if err := run("ip", "netns", "add", name); err != nil {
		return nil, err
	}
	remove = func() error { return run("ip", "netns", "delete", name) }
	if err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		_ = remove()
		return nil, err
	}
	return remove, nil
}

// NetNSExists reports whether a named network namespace is there.
func NetNSExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// DialInNetNS connects to addr (an IP literal and port) from inside the named
// network namespace; an empty name dials from the caller's own. A socket stays
// in the namespace it was made in, so the connection can then be used from any
// goroutine. Only the dialling goroutine's OS thread switches namespace, and it
// is switched back before that thread runs anything else.
func DialInNetNS(ctx context.Context, name, network, addr string) (net.Conn, error) {
	if name == "" {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		conn, restored, err := dialLocked(ctx, name, network, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise the thread is still in the other namespace; leaving it
		// locked makes the runtime end the thread with this goroutine.
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}

// dialLocked runs on a locked OS thread. restored says whether the thread is
// back in its original network namespace.
func dialLocked(ctx context.Context, name, network, addr string) (conn net.Conn, restored bool, err error) {
	orig, err := netns.Get()
	if err != nil {
		return nil, true, fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return nil, true, fmt.Errorf("open network namespace %q: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, true, fmt.Errorf("enter network namespace %q: %w", name, err)
	}
	var d net.Dialer
	conn, err = d.DialContext(ctx, network, addr)
	if err != nil {
		err = fmt.Errorf("dial %s %s in network namespace %q: %w", network, addr, name, err)
	}
	if serr := netns.Set(orig); serr != nil {
		return conn, false, err
	}
	return conn, true, err
}

// run runs a short command and returns its output in the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
