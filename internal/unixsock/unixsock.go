// Package unixsock serves on a unix socket only root can reach: the
// daemon's CNI API and its admin API. Both sit on a node where every
// host-network pod shares the loopback, so a loopback TCP port would be
// open to all of them; a socket file in a root-only folder is not.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Prefix marks an address as a unix socket path ("unix:/var/run/x.sock").
const Prefix = "unix:"

// Path returns the socket path of an address written "unix:/path", and
// whether it is one.
func Path(addr string) (string, bool) {
	p, ok := strings.CutPrefix(addr, Prefix)
	if !ok || p == "" {
		return "", false
	}
	return p, true
}

// Listen listens on a unix socket at path, mode 0600 in a folder made
// 0700 if missing. A stale socket left by an earlier run is removed; any
// other file there is an error, never removed, and so is a socket another
// process still serves on: a second daemon on the node (a DaemonSet's new
// pod before the old one stopped, a daemon run by hand) waits for the
// first instead of leaving it serving a path no client finds. Close removes
// the file only while it is still the listener's own socket.
//
// The listener holds an exclusive lock on path+".lock" for its life (the
// kernel drops it when the process dies, so a crash leaves nothing to
// clean): two processes starting at once would otherwise both find the
// stale socket, and the second's removal could take the first's new one.
// The lock file stays; removing it would let a third process lock a new
// file while the second still holds the old one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	lock, err := lockFor(path)
	if err != nil {
		return nil, err
	}
	l, err := listenLocked(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	l.lock = lock
	return l, nil
}

// lockFor takes path+".lock" without waiting.
func lockFor(path string) (*os.File, error) {
	// Read-only is enough for flock; no link is followed.
	f, err := os.OpenFile(path+".lock", os.O_RDONLY|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: already served, by this process or another (another kmesh-daemon?): %s.lock is held", path, path)
		}
		return nil, fmt.Errorf("lock %s.lock: %w", path, err)
	}
	return f, nil
}

func listenLocked(path string) (*listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		// Stale only if nothing listens: a refused connect. A listener
		// that does not answer in time (its queue full) is still alive.
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("%s: another process serves on it (another kmesh-daemon?)", path)
		case errors.Is(err, syscall.ECONNREFUSED):
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
			}
		case errors.Is(err, fs.ErrNotExist):
			// Removed meanwhile.
		default:
			return nil, fmt.Errorf("%s: another process may serve on it (another kmesh-daemon?): %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// net's own unlink on Close removes whatever is at the path by then,
	// which after a takeover is the other daemon's live socket.
	ul.SetUnlinkOnClose(false)
	l := &listener{UnixListener: ul, path: path}
	if l.file, err = os.Lstat(path); err != nil {
		ul.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// listener is a unix listener that removes its socket file on Close only
// if the path still names that file.
type listener struct {
	*net.UnixListener
	path   string
	file   fs.FileInfo
	lock   *os.File
	unlink sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.unlink.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			_ = os.Remove(l.path)
		}
		// Released after the file is gone, so the next holder never finds
		// this listener's socket.
		if l.lock != nil {
			l.lock.Close()
		}
	})
	return err
}
