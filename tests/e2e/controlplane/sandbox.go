package controlplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

var sandboxSeq atomic.Int64

// Sandbox gives a test a network namespace with only loopback up and a work
// folder, both named "<prefix>-<pid>-<n>", and removes both when the test ends,
// pass or fail. A run that was killed (or hit go test's -timeout, which skips
// cleanups) leaves them behind; Sandbox first removes such leftovers of this
// prefix whose process is gone. A missing prerequisite fails the test.
func Sandbox(t testing.TB, prefix string) (netNS, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("network namespaces need root")
	}
	removeStaleSandboxes(t, prefix)

	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), sandboxSeq.Add(1))
	dir = filepath.Join(os.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create work folder: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	remove, err := AddLoopbackNetNS(name)
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := remove(); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return name, dir
}

// removeStaleSandboxes deletes namespaces and folders named by Sandbox for a
// process that no longer exists.
func removeStaleSandboxes(t testing.TB, prefix string) {
	t.Helper()
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if sandboxOwnerGone(e.Name(), prefix) {
				t.Logf("deleting network namespace %s left by an earlier run", e.Name())
				if err := run("ip", "netns", "delete", e.Name()); err != nil {
					t.Logf("%v", err)
				}
			}
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && sandboxOwnerGone(e.Name(), prefix) {
				path := filepath.Join(os.TempDir(), e.Name())
				t.Logf("removing %s left by an earlier run", path)
				if err := os.RemoveAll(path); err != nil {
					t.Logf("remove %s: %v", path, err)
				}
			}
		}
	}
}

// sandboxOwnerGone reports whether name is "<prefix>-<pid>-<n>" for a PID
// that is not running.
func sandboxOwnerGone(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return false
	}
	pidStr, seq, ok := strings.Cut(rest, "-")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return false
	}
	if _, err := strconv.Atoi(seq); err != nil {
		return false
	}
	return syscall.Kill(pid, 0) == syscall.ESRCH
}
