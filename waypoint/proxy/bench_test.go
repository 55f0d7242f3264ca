package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kmesh-go/kmesh/waypoint/internal/synth"
	"github.com/kmesh-go/kmesh/waypoint/model"
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

// BenchmarkHTTP1Proxy is one proxied HTTP/1.1 request on a kept
// connection, shaped like fortio's (1 KiB POSTed, 1 KiB back), through the
// engine with a synthetic configuration of 1000 services, on loopback.
// Client and upstream are raw sockets that allocate nothing, so allocs/op
// is the engine's; ns/op is mostly loopback system calls (the CPU profile
// of the engine's own share is what to read: -cpuprofile).
func BenchmarkHTTP1Proxy(b *testing.B) {
	c, req := rawProxyRig(b, synth.Options{Services: 1000, ProxyProtocol: true, AllowWithoutProxyProtocol: true}, nil)
	buf := make([]byte, 16<<10)
	b.ReportAllocs()
	u0 := userTime()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if err := readMessage(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	// ns/op is mostly the kernel's loopback; the process's user time per
	// request (the engine's, plus the raw client's and upstream's little)
	// is what the engine's own work moves.
	b.ReportMetric(float64(userTime()-u0)/float64(b.N), "user-ns/op")
}

// rawProxyRig sets up BenchmarkHTTP1Proxy's path: a raw upstream that
// answers every 1 KiB POST with 1 KiB, the engine on a synthetic
// configuration (o, its listen and backend addresses filled in; edit, if
// given, changes the snapshot before it is applied) and a raw client
// connection to it. It returns the connection and the request to write;
// each answer is read with readMessage. Everything closes with tb.
func rawProxyRig(tb testing.TB, o synth.Options, edit func(*model.Snapshot)) (net.Conn, []byte) {
	tb.Helper()
	body := bytes.Repeat([]byte("x"), 1024)
	resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: application/octet-stream\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n"), body...)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 16<<10)
				// Every request is a 1 KiB POST: read its head and body.
				for readMessage(c, buf) == nil {
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	o.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	o.Backend = netip.MustParseAddrPort(up.Addr().String())
	snap := synth.Snapshot(o)
	if edit != nil {
		edit(snap)
	}
	e := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	tb.Cleanup(func() { e.Close() })
	if err := e.Apply(snap); err != nil {
		tb.Fatal(err)
	}
	c, err := net.Dial("tcp", e.ListenerAddrs()["waypoint"].String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	req := append([]byte("POST / HTTP/1.1\r\nHost: 10.96.0.30:80\r\nUser-Agent: fortio.org/fortio-1.66.5\r\nContent-Length: 1024\r\nContent-Type: application/octet-stream\r\n\r\n"), body...)
	return c, req
}

// userTime is the process's user CPU time so far.
func userTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano())
}

// readMessage reads one HTTP/1.1 message with a Content-Length from c.
func readMessage(c net.Conn, buf []byte) error {
	n := 0
	for {
		m, err := c.Read(buf[n:])
		if err != nil {
			return err
		}
		n += m
		head := bytes.Index(buf[:n], []byte("\r\n\r\n"))
		if head < 0 {
			continue
		}
		i := bytes.Index(buf[:head], []byte("Content-Length: "))
		if i < 0 {
			i = bytes.Index(buf[:head], []byte("content-length: "))
		}
		if i < 0 {
			return errors.New("no content length")
		}
		l := 0
		for _, d := range buf[i+16 : head] {
			if d < '0' || d > '9' {
				break
			}
			l = l*10 + int(d-'0')
		}
		for n < head+4+l {
			m, err := c.Read(buf[n:])
			if err != nil {
				return err
			}
			n += m
		}
		return nil
	}
}
