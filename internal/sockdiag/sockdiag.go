// Package sockdiag lists the TCP sockets of a network namespace and
// destroys chosen ones (sock_diag, SOCK_DESTROY: the kernel resets the
// peer). Call it from a thread that is in the namespace (podns.Do).
//
// The netlink library does the dump (both families) and the IPv4 destroy.
// Its SocketDestroy refuses IPv6 addresses (ErrNotImplemented as of
// v1.3.1), so an IPv6 socket is destroyed here with one request of our own
// through the library's request machinery: the same inet_diag_req_v2 with
// family AF_INET6 and the socket's 128-bit addresses. An IPv4 connection
// of a dual-stack listener is an AF_INET6 socket with v4-mapped
// addresses; the kernel finds it by its IPv4 tuple too, so it goes the
// library's way.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TCP states (include/net/tcp_states.h).
const (
	StateEstablished = 1
	StateSynRecv     = 3
	StateListen      = 10
)

// Sock is one TCP socket.
type Sock struct {
	State  uint8
	Local  netip.AddrPort
	Remote netip.AddrPort
	// cookie is the kernel's socket cookie: an IPv6 destroy names the
	// socket by it as well as by its tuple.
	cookie [2]uint32
}

// Dump lists the TCP sockets of the current network namespace, both
// families, in every state; IPv4 addresses are 4 bytes, v4-mapped ones
// too. A dump the kernel reports interrupted (sockets came or went
// meanwhile) is made again, then taken as it is.
func Dump() ([]Sock, error) {
	var out []Sock
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := netlink.SocketDiagTCP(family)
		for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 3; try++ {
			socks, err = netlink.SocketDiagTCP(family)
		}
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("sock_diag dump: %w", err)
		}
		for _, s := range socks {
			local, _ := netip.AddrFromSlice(s.ID.Source)
			remote, _ := netip.AddrFromSlice(s.ID.Destination)
			out = append(out, Sock{
				State:  s.State,
				Local:  netip.AddrPortFrom(local.Unmap(), s.ID.SourcePort),
				Remote: netip.AddrPortFrom(remote.Unmap(), s.ID.DestinationPort),
				cookie: s.ID.Cookie,
			})
		}
	}
	return out, nil
}

// Destroy aborts a socket: the kernel sends a reset to the peer.
func Destroy(s Sock) error {
	var err error
	if s.Local.Addr().Is4() {
		err = netlink.SocketDestroy(net.TCPAddrFromAddrPort(s.Local), net.TCPAddrFromAddrPort(s.Remote))
	} else {
		err = destroy6(s)
	}
	if err != nil {
		return fmt.Errorf("sock_diag destroy %s -> %s: %w", s.Local, s.Remote, err)
	}
	return nil
}

// destroy6 sends SOCK_DESTROY for an IPv6 socket.
func destroy6(s Sock) error {
	req := nl.NewNetlinkRequest(nl.SOCK_DESTROY, unix.NLM_F_ACK)
	req.AddData(destroy6Request(s))
	_, err := req.Execute(unix.NETLINK_INET_DIAG, 0)
	return err
}

// destroy6Request is struct inet_diag_req_v2 (linux/inet_diag.h) naming
// an IPv6 TCP socket.
type destroy6Request Sock

func (r destroy6Request) Len() int { return 56 }

func (r destroy6Request) Serialize() []byte {
	b := make([]byte, r.Len())
	b[0], b[1] = unix.AF_INET6, unix.IPPROTO_TCP
	id := b[8:] // struct inet_diag_sockid
	binary.BigEndian.PutUint16(id[0:], r.Local.Port())
	binary.BigEndian.PutUint16(id[2:], r.Remote.Port())
	local, remote := r.Local.Addr().As16(), r.Remote.Addr().As16()
	copy(id[4:20], local[:])
	copy(id[20:36], remote[:])
	binary.NativeEndian.PutUint32(id[40:], r.cookie[0])
	binary.NativeEndian.PutUint32(id[44:], r.cookie[1])
	return b
}
