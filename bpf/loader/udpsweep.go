package loader

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf/link"
)

// ProgUDPIter closes connected UDP sockets whose endpoint left their
// service (iter/udp with bpf_sock_destroy, see bpf/src/udp_iter.c).
const ProgUDPIter = "km_udp_iter"

// UDPSweeper runs km_udp_iter on demand.
type UDPSweeper struct {
	it *link.Iter
}

// NewUDPSweeper attaches the iterator program (nothing runs until Sweep).
func (d *Datapath) NewUDPSweeper() (*UDPSweeper, error) {
	prog := d.progs[ProgUDPIter]
	if prog == nil {
		return nil, fmt.Errorf("loader: object has no %s", ProgUDPIter)
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("loader: attach %s: %w", ProgUDPIter, err)
	}
	return &UDPSweeper{it: it}, nil
}

// Sweep closes the connected UDP sockets of the calling thread's network
// namespace whose endpoint is gone (the kernel walks the namespace the
// walk was opened in), and returns how many it closed. Each such socket's
// next receive fails with ECONNABORTED, its next send with EDESTADDRREQ.
func (u *UDPSweeper) Sweep() (int, error) {
	r, err := u.it.Open()
	if err != nil {
		return 0, fmt.Errorf("loader: open %s: %w", ProgUDPIter, err)
	}
	defer r.Close()
	// One socket cookie (8 bytes) per closed socket.
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return int(n / 8), fmt.Errorf("loader: read %s: %w", ProgUDPIter, err)
	}
	return int(n / 8), nil
}

// Close detaches the iterator.
func (u *UDPSweeper) Close() error { return u.it.Close() }
