package loader

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/bpf/layout"
)

// Programs beside the socket-address hooks.
const (
	// ProgSockops records TCP connections and fills the sockhash; attached
	// to the cgroup with the other socket programs.
	ProgSockops = "km_sockops"
	// ProgSkMsg redirects data between sockets in the sockhash; attached to
	// the sockhash by a pinned link.
	ProgSkMsg = "km_sk_msg"
	// ProgWpMsg writes the PROXY v2 header on a waypoint-bound client's
	// first bytes; attached to km_wp_sock by a pinned link.
	ProgWpMsg = "km_wp_msg"
	// ProgConnIter walks the connection records in km_tcp_sock for the
	// daemon's periodic reports.
	ProgConnIter = "km_conn_iter"
)

// keepSockhash reports whether a pinned sockhash (km_sockhash or
// km_wp_sock) can stay in service under spec: same kind of map, same key
// and value.
func keepSockhash(spec *ebpf.MapSpec, m *ebpf.Map) bool {
	return m.Type() == spec.Type && m.KeySize() == spec.KeySize && m.ValueSize() == spec.ValueSize
}

// attachSkMsg attaches an sk_msg program to its sockhash through a pinned
// link. On a restart with the sockhash reused, the link is switched to the
// new program atomically; sockets already in the map keep the program they
// were given until they leave it (same maps, same behaviour), new ones get
// the new one. A link to a sockhash that was replaced is dropped.
func (d *Datapath) attachSkMsg(progName, mapName string, reused bool) error {
	prog, hash := d.progs[progName], d.maps[mapName]
	if prog == nil || hash == nil {
		return fmt.Errorf("loader: object has no %s or %s", progName, mapName)
	}
	path := d.linkPin(progName)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		if reused {
			if err := old.Update(prog); err != nil {
				old.Close()
				return fmt.Errorf("loader: switch pinned link %s to the new program: %w", progName, err)
			}
			d.links[progName] = old
			return nil
		}
		_ = old.Unpin()
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(path)
	}
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: hash.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		return fmt.Errorf("loader: attach %s to %s (sockmap links need Linux 6.10): %w", progName, mapName, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("loader: pin link %s: %w", progName, err)
	}
	d.links[progName] = l
	return nil
}

// ConnIter walks the open connections' records on demand: the TCP
// sockets of one network namespace at a time, each with its record in
// km_tcp_sock.
type ConnIter struct {
	it *link.Iter
}

// NewConnIter attaches the iterator program (iter/tcp).
func (d *Datapath) NewConnIter() (*ConnIter, error) {
	prog := d.progs[ProgConnIter]
	if prog == nil {
		return nil, fmt.Errorf("loader: object has no %s", ProgConnIter)
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("loader: attach %s: %w", ProgConnIter, err)
	}
	return &ConnIter{it: it}, nil
}

// Open starts one walk over the TCP sockets of the calling thread's
// network namespace (the kernel takes it when the reader is created;
// reading may happen anywhere). Reading returns layout.ConnEvent records.
func (c *ConnIter) Open() (io.ReadCloser, error) { return c.it.Open() }

// Close detaches the iterator.
func (c *ConnIter) Close() error { return c.it.Close() }

// SetFeatures switches kernel-side functions at run time (km_config). New
// connections see the change; established ones keep what they started with.
// The waypoint port and the rest of km_config stay as they are.
func (d *Datapath) SetFeatures(f Features) error {
	m := d.maps[MapConfig]
	var v layout.ConfigValue
	if err := m.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("loader: read %s: %w", MapConfig, err)
	}
	v.Features = f.bits()
	if err := m.Put(uint32(0), v); err != nil {
		return fmt.Errorf("loader: write %s: %w", MapConfig, err)
	}
	return nil
}
