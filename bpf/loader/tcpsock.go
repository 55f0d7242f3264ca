package loader

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

// TCPSockJanitor removes the km_tcp_sock elements no callback will ever
// delete. The connect hook files a rewritten TCP socket's element before
// the kernel's own connect runs; when that fails before TCP starts (no
// route, no local port left), sockops never hears of the socket, and its
// element would stay. Every other element goes with its socket's close
// callback. An element qualifies when, at two sweeps in a row, its socket
// has neither started connecting nor been established: connect() does both
// in the same system call, so one sweep apart is plenty.
type TCPSockJanitor struct {
	m        *ebpf.Map
	suspects map[uint64]bool
	entries  atomic.Int64 // as of the last sweep
}

// NewTCPSockJanitor returns a janitor for d's km_tcp_sock.
func (d *Datapath) NewTCPSockJanitor() (*TCPSockJanitor, error) {
	m := d.maps[MapTCPSock]
	if m == nil {
		return nil, fmt.Errorf("loader: object has no %s", MapTCPSock)
	}
	return &TCPSockJanitor{m: m, suspects: map[uint64]bool{}}, nil
}

// orphaned tells whether no callback will come for the element's socket.
func orphaned(v *layout.SockValue) bool {
	return v.Flags&layout.SockConnecting == 0 && v.Conn.Cookie == 0
}

// Sweep walks km_tcp_sock once, deletes what was suspect last time and is
// still, and returns how many it deleted.
func (j *TCPSockJanitor) Sweep() (int, error) {
	var cookie uint64
	var v layout.SockValue
	next := map[uint64]bool{}
	var doomed []uint64
	n := 0
	it := j.m.Iterate()
	for it.Next(&cookie, &v) {
		n++
		if !orphaned(&v) {
			continue
		}
		if j.suspects[cookie] {
			doomed = append(doomed, cookie)
		} else {
			next[cookie] = true
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("loader: walk %s: %w", MapTCPSock, err)
	}
	j.suspects = next
	removed := 0
	defer func() { j.entries.Store(int64(n - removed)) }()
	for _, c := range doomed {
		// Look again: a socket whose first connect failed may have
		// connected since.
		if err := j.m.Lookup(c, &v); err != nil || !orphaned(&v) {
			continue
		}
		if err := j.m.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return removed, fmt.Errorf("loader: delete from %s: %w", MapTCPSock, err)
		}
		removed++
	}
	return removed, nil
}

// Usage returns the elements counted at the last sweep (less those it
// removed) and the map's capacity.
func (j *TCPSockJanitor) Usage() (int, int) {
	return int(j.entries.Load()), int(j.m.MaxEntries())
}
