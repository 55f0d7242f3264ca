// Package layout is the Go side of the structs and enums the BPF programs
// share with userspace. They are defined once, in
// bpf/src/include/km_types.h; types.go is generated from the compiled
// object's BTF by `make generate` (bpf/internal/layoutgen) and CI checks it
// is up to date, so Go and C cannot disagree. This file adds what C has no
// BTF for (a #define) and the conversions every user needs.
package layout

import (
	"encoding/binary"
	"net/netip"
)

// MaxPrio is the number of locality priority levels per service
// (KM_MAX_PRIO, the length of km_service_value.ep_count).
const MaxPrio = len(ServiceValue{}.EpCount)

// The kernel stores addresses as the bytes of the wire format in __u32
// words; Go sees those words in host order, so they are converted through
// their memory bytes.

// AddrFrom converts a netip.Addr into the kernel's 16-byte form; IPv4 is
// stored v4-mapped (::ffff:a.b.c.d), so one lookup serves both families.
func AddrFrom(a netip.Addr) Addr {
	b := a.As16()
	var out Addr
	for i := range out.A {
		out.A[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

// Netip converts back, unmapping IPv4.
func (a Addr) Netip() netip.Addr {
	var b [16]byte
	for i, w := range a.A {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

// IsZero reports whether no address is set.
func (a Addr) IsZero() bool { return a.A == [4]uint32{} }

func (a Addr) String() string {
	if a.IsZero() {
		return ""
	}
	return a.Netip().String()
}

// SetAddr records a workload's address of a's family (ip4 or ip6) and
// flags it present.
func (v *BackendValue) SetAddr(a netip.Addr) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v.IP4 = binary.NativeEndian.Uint32(b[:])
		v.Flags |= BeHasV4
		return
	}
	v.IP6 = AddrFrom(a).A
	v.Flags |= BeHasV6
}

// Reverse is the tuple as the other end sees it.
func (t Tuple) Reverse() Tuple {
	return Tuple{Local: t.Remote, Remote: t.Local, LocalPort: t.RemotePort, RemotePort: t.LocalPort}
}
