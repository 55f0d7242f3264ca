//go:build !kmesh_grpc_client

package registry

import (
	"bufio"
	"bytes"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// What the client writes as HPACK literals is what the library (and so
// grpc-go's server) reads, lengths over the 7-bit prefix included.
func TestHeadersReadAsHPACK(t *testing.T) {
	want := []hpack.HeaderField{{Name: ":path", Value: "/kmesh.cni.v1.PodRegistry/EnrollPod"},
		{Name: "grpc-timeout", Value: "2000m"}, {Name: "x-long", Value: strings.Repeat("v", 127)},
		{Name: strings.Repeat("n", 300), Value: strings.Repeat("w", 20000)}, {Name: "empty", Value: ""}}
	var block []byte
	for _, f := range want {
		block = appendHeader(block, f.Name, f.Value)
	}
	d := hpack.NewDecoder(4096, nil)
	got, err := d.DecodeFull(block)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("decoded %v %v", got, err)
	}
}

// discardConn takes what readAnswer writes back (SETTINGS and PING
// acknowledgements); nothing else of the connection is used.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// The answer reader takes whatever the socket holds without panicking or
// reading past a bound; seeded with an answer as grpc-go's server writes
// it.
func FuzzReadAnswer(f *testing.F) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	headers := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return slices.Clone(hb.Bytes())
	}
	var seed []byte
	seed = appendFrame(seed, frameSettings, 0, 0, func(p []byte) []byte { return appendSetting(p, 0x5, 1<<20) })
	seed = appendFrame(seed, frameHeaders, flagEndHeaders, 1, func(p []byte) []byte {
		return append(p, headers(":status", "200", "content-type", "application/grpc")...)
	})
	seed = appendFrame(seed, frameData, 0, 1, func(p []byte) []byte { return append(p, 0, 0, 0, 0, 2, 8, 1) })
	seed = appendFrame(seed, frameHeaders, flagEndHeaders|flagEndStream, 1, func(p []byte) []byte {
		return append(p, headers("grpc-status", "0", "grpc-message", "")...)
	})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		h := &h2conn{c: discardConn{}, r: bufio.NewReader(bytes.NewReader(b)), dec: hpack.NewDecoder(4096, nil)}
		h.dec.SetMaxStringLength(maxHeaderList)
		if a, err := h.readAnswer(1); err == nil {
			_ = a.err()
		}
	})
}
