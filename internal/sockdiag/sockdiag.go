// Package sockdiag lists the TCP sockets of a network namespace and
// destroys chosen ones (sock_diag over netlink). Call it from a thread that
// is in the namespace (podns.Do).
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// TCP states (include/net/tcp_states.h).
const (
	StateEstablished = 1
	StateSynRecv     = 3
	StateListen      = 10
)

const (
	sockDiagByFamily = 20
	sockDestroy      = 21
	reqLen           = 56 // inet_diag_req_v2
	msgLen           = 72 // inet_diag_msg
)

// Sock is one TCP socket.
type Sock struct {
	Family uint8
	State  uint8
	Local  netip.AddrPort
	Remote netip.AddrPort
	// id is the kernel's socket id (interface and cookie) for destroy.
	ifindex uint32
	cookie  [2]uint32
}

// Dump lists the TCP sockets of the current network namespace, both
// families, in every state.
func Dump() ([]Sock, error) {
	var out []Sock
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dump(fam)
		if err != nil {
			return nil, err
		}
		out = append(out, socks...)
	}
	return out, nil
}

// Destroy aborts a socket: the kernel sends a reset to the peer.
func Destroy(s Sock) error {
	fd, err := open()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	req := request(sockDestroy, unix.NLM_F_REQUEST|unix.NLM_F_ACK, s.Family, 0xffffffff, s)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag destroy: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("sock_diag destroy: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return fmt.Errorf("sock_diag destroy %s -> %s: %w", s.Local, s.Remote, syscall.Errno(-code))
			}
		}
	}
	return nil
}

func open() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("sock_diag socket: %w", err)
	}
	return fd, nil
}

func request(typ uint16, flags uint16, family uint8, states uint32, s Sock) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], 1)
	r := b[unix.NLMSG_HDRLEN:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], s.Local.Port())
	binary.BigEndian.PutUint16(id[2:], s.Remote.Port())
	putAddr(id[4:20], s.Local.Addr())
	putAddr(id[20:36], s.Remote.Addr())
	ne.PutUint32(id[36:], s.ifindex)
	ne.PutUint32(id[40:], s.cookie[0])
	ne.PutUint32(id[44:], s.cookie[1])
	return b
}

func putAddr(dst []byte, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if a.Is4() {
		v := a.As4()
		copy(dst, v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

func addrOf(family uint8, b []byte) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b[:16]))
}

func dump(family uint8) ([]Sock, error) {
	fd, err := open()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	req := request(sockDiagByFamily, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, family, 0xffffffff, Sock{})
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	var out []Sock
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
						return nil, fmt.Errorf("sock_diag dump: %w", syscall.Errno(-code))
					}
				}
				return nil, errors.New("sock_diag dump: error message")
			case sockDiagByFamily:
				if len(m.Data) < msgLen {
					continue
				}
				d := m.Data
				id := d[4:]
				s := Sock{
					Family:  d[0],
					State:   d[1],
					Local:   netip.AddrPortFrom(addrOf(d[0], id[4:20]), binary.BigEndian.Uint16(id[0:])),
					Remote:  netip.AddrPortFrom(addrOf(d[0], id[20:36]), binary.BigEndian.Uint16(id[2:])),
					ifindex: binary.NativeEndian.Uint32(id[36:]),
					cookie:  [2]uint32{binary.NativeEndian.Uint32(id[40:]), binary.NativeEndian.Uint32(id[44:])},
				}
				out = append(out, s)
			}
		}
	}
}
