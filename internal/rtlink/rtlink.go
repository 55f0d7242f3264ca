// Package rtlink looks up one network interface of the calling thread's
// network namespace over rtnetlink: its index, name, kind and the index
// of the link it is paired with (a veth's peer).
//
// It exists for kmesh-cni, a process per pod: the general netlink library
// allocates a fresh 64 KiB buffer for every answer it reads, which in a
// process that lives a few milliseconds is new memory, and so page faults,
// on every lookup. One lookup here is one request, one answer read into a
// buffer on the stack, and no statistics asked of the kernel.
package rtlink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Link is what kmesh reads of a network interface.
type Link struct {
	Index int
	Name  string
	// Kind is the driver's name from IFLA_INFO_KIND ("veth", "bridge"),
	// empty for a device without one (a physical NIC, lo).
	Kind string
	// Peer is IFLA_LINK: for a veth the index of its other end, which may
	// be in another namespace; 0 when there is none.
	Peer int
}

// ErrNotFound means there is no such interface.
var ErrNotFound = errors.New("no such network interface")

// timeout bounds the wait for the kernel's answer.
const timeout = 2 * time.Second

// buf receives answers: an interface's attributes without counters fit in
// a few KiB. One buffer for the process, reused.
var (
	bufMu sync.Mutex
	buf   [16 << 10]byte
)

// ByIndex returns the interface with index i.
func ByIndex(i int) (Link, error) {
	if i <= 0 {
		return Link{}, fmt.Errorf("interface index %d: %w", i, ErrNotFound)
	}
	return get(i, "")
}

// ByName returns the interface called name.
func ByName(name string) (Link, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return Link{}, fmt.Errorf("interface %q: %w", name, ErrNotFound)
	}
	return get(0, name)
}

// rtextFilterSkipStats asks the kernel to leave the counters out of the
// answer (linux/rtnetlink.h RTEXT_FILTER_SKIP_STATS).
const rtextFilterSkipStats = 1 << 3

func request(index int, name string) []byte {
	b := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg, 64)
	ne := binary.NativeEndian
	ne.PutUint16(b[4:], unix.RTM_GETLINK)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], 1) // sequence
	b[unix.SizeofNlMsghdr] = unix.AF_UNSPEC
	ne.PutUint32(b[unix.SizeofNlMsghdr+4:], uint32(int32(index)))
	b = appendAttr(b, unix.IFLA_EXT_MASK, binary.NativeEndian.AppendUint32(nil, rtextFilterSkipStats))
	if name != "" {
		b = appendAttr(b, unix.IFLA_IFNAME, append([]byte(name), 0))
	}
	ne.PutUint32(b[0:], uint32(len(b)))
	return b
}

func appendAttr(b []byte, typ uint16, payload []byte) []byte {
	n := unix.SizeofRtAttr + len(payload)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func get(index int, name string) (Link, error) {
	what := fmt.Sprintf("interface %d", index)
	if name != "" {
		what = fmt.Sprintf("interface %q", name)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return Link{}, fmt.Errorf("%s: netlink socket: %w", what, err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return Link{}, fmt.Errorf("%s: %w", what, err)
	}
	// Ask for the extended error messages, so a refusal says why.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	if err := unix.Sendto(fd, request(index, name), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Link{}, fmt.Errorf("%s: netlink request: %w", what, err)
	}
	bufMu.Lock()
	defer bufMu.Unlock()
	for {
		n, _, err := unix.Recvfrom(fd, buf[:], unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Link{}, fmt.Errorf("%s: netlink answer: %w", what, err)
		}
		if n > len(buf) {
			return Link{}, fmt.Errorf("%s: netlink answer of %d bytes is larger than %d", what, n, len(buf))
		}
		l, done, err := parse(buf[:n])
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return Link{}, fmt.Errorf("%s: %w", what, ErrNotFound)
			}
			return Link{}, fmt.Errorf("%s: %w", what, err)
		}
		if done {
			return l, nil
		}
	}
}

// parse reads the messages of one datagram; done says whether the answer
// was among them.
func parse(b []byte) (Link, bool, error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		n := int(ne.Uint32(b[0:]))
		typ := ne.Uint16(b[4:])
		if n < unix.SizeofNlMsghdr || n > len(b) {
			return Link{}, false, errors.New("malformed netlink message")
		}
		msg := b[unix.SizeofNlMsghdr:n]
		b = b[min(align(n), len(b)):]
		switch typ {
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return Link{}, false, errors.New("malformed netlink error")
			}
			errno := -int32(ne.Uint32(msg))
			switch unix.Errno(errno) {
			case 0:
				continue // an acknowledgement
			case unix.ENODEV:
				return Link{}, false, ErrNotFound
			default:
				return Link{}, false, unix.Errno(errno)
			}
		case unix.RTM_NEWLINK:
			l, err := parseLink(msg)
			return l, err == nil, err
		}
	}
	return Link{}, false, nil
}

func align(n int) int { return (n + 3) &^ 3 }

func parseLink(msg []byte) (Link, error) {
	ne := binary.NativeEndian
	if len(msg) < unix.SizeofIfInfomsg {
		return Link{}, errors.New("malformed link message")
	}
	l := Link{Index: int(int32(ne.Uint32(msg[4:])))}
	err := attrs(msg[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) error {
		switch typ {
		case unix.IFLA_IFNAME:
			l.Name = cstring(v)
		case unix.IFLA_LINK:
			if len(v) < 4 {
				return errors.New("malformed IFLA_LINK")
			}
			l.Peer = int(int32(ne.Uint32(v)))
		case unix.IFLA_LINKINFO:
			return attrs(v, func(typ uint16, v []byte) error {
				if typ == unix.IFLA_INFO_KIND {
					l.Kind = cstring(v)
				}
				return nil
			})
		}
		return nil
	})
	return l, err
}

// attrs calls fn for each attribute in b, nested flags masked off.
func attrs(b []byte, fn func(typ uint16, v []byte) error) error {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofRtAttr {
		n := int(ne.Uint16(b[0:]))
		typ := ne.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < unix.SizeofRtAttr || n > len(b) {
			return errors.New("malformed netlink attribute")
		}
		if err := fn(typ, b[unix.SizeofRtAttr:n]); err != nil {
			return err
		}
		b = b[min(align(n), len(b)):]
	}
	return nil
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
