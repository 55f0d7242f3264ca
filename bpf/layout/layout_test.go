package layout

import (
	"net/netip"
	"testing"
	"unsafe"
)

// The kernel reads an address as its 16 wire bytes (IPv4 v4-mapped):
// whatever Go puts in the words, the memory must be those bytes.
func TestAddrMemoryIsTheWireBytes(t *testing.T) {
	for _, s := range []string{"10.96.0.10", "fd00:96::10", "::ffff:192.0.2.1", "::"} {
		a := netip.MustParseAddr(s)
		k := AddrFrom(a)
		if got := *(*[16]byte)(unsafe.Pointer(&k.A)); got != a.As16() {
			t.Errorf("%s: memory %x, want %x", s, got, a.As16())
		}
		if k.Netip() != a.Unmap() {
			t.Errorf("%s: back as %s", s, k.Netip())
		}
	}
	var v BackendValue
	v.SetAddr(netip.MustParseAddr("10.0.0.1"))
	v.SetAddr(netip.MustParseAddr("fd00::1"))
	if got := *(*[4]byte)(unsafe.Pointer(&v.IP4)); got != [4]byte{10, 0, 0, 1} || v.Flags != BeHasV4|BeHasV6 {
		t.Errorf("ip4 %x flags %d", got, v.Flags)
	}
	if got := *(*[16]byte)(unsafe.Pointer(&v.IP6)); got != netip.MustParseAddr("fd00::1").As16() {
		t.Errorf("ip6 %x", got)
	}
}
