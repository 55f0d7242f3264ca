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
// other file there is an error, never removed.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}
