package proxy

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// BenchmarkProxyHeader is the cost of the PROXY v2 header per connection
// (the waypoint benchmark's client sends none; see wpbench): reading it
// from a connection's first bytes and the bufio.Reader the listener makes
// for it anyway.
func BenchmarkProxyHeader(b *testing.B) {
	for _, tc := range []struct {
		name     string
		src, dst string
	}{
		{"v4", "10.0.0.9:40000", "10.96.0.10:80"},
		{"v6", "[fd00::9]:40000", "[fd00::96:10]:80"},
	} {
		h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(mustAddrPort(tc.src)), net.TCPAddrFromAddrPort(mustAddrPort(tc.dst)))
		raw, err := h.Format()
		if err != nil {
			b.Fatal(err)
		}
		raw = append(raw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"...)
		b.Run(tc.name, func(b *testing.B) {
			rd := bytes.NewReader(raw)
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(raw)
				br := bufio.NewReaderSize(rd, sniffBufferSize)
				if _, dst, _, err := readProxyHeader(br, false); err != nil || !dst.IsValid() {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("none", func(b *testing.B) {
		raw := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		rd := bytes.NewReader(raw)
		b.ReportAllocs()
		for b.Loop() {
			rd.Reset(raw)
			br := bufio.NewReaderSize(rd, sniffBufferSize)
			if _, _, _, err := readProxyHeader(br, true); err != nil {
				b.Fatal(err)
			}
		}
	})
}
