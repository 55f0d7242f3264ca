package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestListenRootOnlyAndReplacesAStaleSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("folder mode %v, want 0700", di.Mode())
	}
	l.Close()
	// A socket left behind (a crash: the listener's file not unlinked).
	crashed, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	crashed.SetUnlinkOnClose(false)
	crashed.Close()
	l, err = Listen(path)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestListenNeverRemovesAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("listened over a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "not a socket" {
		t.Fatal("the file was touched")
	}
}

func TestPath(t *testing.T) {
	for addr, want := range map[string]string{"unix:/var/run/kmesh/admin.sock": "/var/run/kmesh/admin.sock", "127.0.0.1:15200": "", "unix:": ""} {
		if got, ok := Path(addr); got != want || ok != (want != "") {
			t.Errorf("Path(%q) = %q, %v", addr, got, ok)
		}
	}
}

// Two daemons on a node (a DaemonSet's rolling update, a daemon run by
// hand beside the pod): the second takes the path over, and the first,
// stopping, must leave the second's socket where it is; otherwise the
// CNI plugin and kmeshctl find no socket until the survivor restarts.
func TestCloseLeavesTheSocketThatReplacedIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	old, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// The path taken over under it, as a daemon of an earlier release
	// did: the socket removed and bound again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	cur, err := net.Listen("unix", path)
	if err != nil {
		old.Close()
		t.Fatal(err)
	}
	defer cur.Close()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := cur.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket is gone after the replaced listener closed: %v", err)
	}
	c.Close()
}

// A socket another process still serves on is not stale: a second daemon
// (a rolling update's new pod before the old one stopped, a daemon run by
// hand) must not take it over. The first would go on serving a path no
// client finds, and whichever stops first removes the socket the other
// needs.
func TestListenLeavesALiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	live, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() {
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("listened over a socket another listener serves on")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket is gone: %v", err)
	}
	c.Close()
	live.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the listener left its socket: %v", err)
	}
}

// Processes starting at once over a stale socket: one serves, the others
// are told another serves, and the socket at the path is the one that
// serves (without the lock, a second start could remove the first's new
// socket after both found the stale one, and both would listen).
func TestConcurrentStartsOverAStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	for round := 0; round < 200; round++ {
		stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		stale.SetUnlinkOnClose(false)
		stale.Close()

		const starts = 6
		var wg sync.WaitGroup
		got := make([]net.Listener, starts)
		errs := make([]error, starts)
		for i := range starts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], errs[i] = Listen(path)
			}()
		}
		wg.Wait()
		var winner net.Listener
		for i, l := range got {
			if errs[i] != nil {
				continue
			}
			if winner != nil {
				winner.Close()
				l.Close()
				t.Fatalf("round %d: two starts listen on %s", round, path)
			}
			winner = l
		}
		if winner == nil {
			t.Fatalf("round %d: no start listens: %v", round, errs)
		}
		accepted := make(chan error, 1)
		go func() {
			c, err := winner.Accept()
			if err == nil {
				c.Close()
			}
			accepted <- err
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			winner.Close()
			t.Fatalf("round %d: the socket at the path: %v", round, err)
		}
		c.Close()
		if err := <-accepted; err != nil {
			t.Fatal(err)
		}
		winner.Close()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Fatalf("round %d: the socket stayed after Close: %v", round, err)
		}
	}
}

// A lock held by a listener that is closed is released: the next start
// listens.
func TestListenAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	for range 3 {
		l, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		if l2, err := Listen(path); err == nil {
			l2.Close()
			l.Close()
			t.Fatal("a second listener while the first serves")
		}
		l.Close()
	}
}
