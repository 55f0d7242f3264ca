package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/kmesh-go/kmesh/internal/testbed"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// misbehavingH2C is an h2c endpoint that does to each stream what its
// path says (see TestH2StreamResetsClassified).
func misbehavingH2C(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testbed.Serve(t, ln, serveMisbehaving)
	return netip.MustParseAddrPort(ln.Addr().String())
}

func serveMisbehaving(c net.Conn) {
	br := bufio.NewReader(c)
	if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(c, br)
	fr.WriteSettings()
	var path string
	dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == ":path" {
			path = hf.Value
		}
	})
	headers := func(id uint32, end bool, fields ...string) {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndHeaders: true, EndStream: end})
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
			continue
		case *http2.HeadersFrame:
			dec.Write(f.HeaderBlockFragment())
		default:
			continue
		}
		id := f.Header().StreamID
		switch path {
		case "/ok":
			headers(id, true, ":status", "200")
		case "/refused":
			fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		case "/reset":
			fr.WriteRSTStream(id, http2.ErrCodeInternal)
		case "/goaway":
			fr.WriteGoAway(id-1, http2.ErrCodeNo, nil)
		case "/goaway-code":
			fr.WriteGoAway(id-1, http2.ErrCodeEnhanceYourCalm, nil)
		case "/goaway-processed":
			// This stream was taken, then the connection went: a
			// connection termination, not a refusal.
			fr.WriteGoAway(id, http2.ErrCodeNo, nil)
			return
		case "/mid-body":
			headers(id, false, ":status", "200")
			fr.WriteData(id, false, []byte("part"))
			fr.WriteRSTStream(id, http2.ErrCodeInternal)
		case "/no-status":
			headers(id, true, "x-a", "b")
		case "/conn-error":
			// DATA on stream 0: a connection error.
			fr.AllowIllegalWrites = true
			fr.WriteData(0, false, []byte("x"))
		case "/close":
			return
		}
	}
}

// Each way an HTTP/2 endpoint can end a stream early, provoked through
// the cluster's pool (net/http's client, of the Go in use) and told
// apart as Envoy's codec tells them: REFUSED_STREAM and a stream above a
// GOAWAY's last stream are refused streams, with or without the GOAWAY's
// error code (nghttp2 and oghttp2 close those with REFUSED_STREAM); an
// RST_STREAM with another code, before or during the answer, a remote
// reset; the client's own reset of a stream, or of the connection, for
// the endpoint breaking the protocol, a protocol error; a closed
// connection none of these. Several of these are known only by their
// text (net/http exports no value): this fails when a Go upgrade words
// them otherwise.
func TestH2StreamResetsClassified(t *testing.T) {
	addr := misbehavingH2C(t)
	_, c := one(t, &model.Cluster{Name: "c", Protocol: "http2", Endpoints: [][]model.Endpoint{{{Address: addr, Healthy: true}}}})
	h, _ := c.Pick(&PickOptions{})
	do := func(path string) (*http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.Cleanup(cancel)
		req, _ := http.NewRequest("GET", "http://"+h.Key+path, nil)
		return c.RoundTrip(ctx, req, h, true)
	}
	for _, tc := range []struct {
		paths []string // the last one's error is classified
		want  StreamReset
	}{
		{[]string{"/refused"}, RefusedStream},
		{[]string{"/reset"}, RemoteReset},
		{[]string{"/goaway"}, RefusedStream},             // stream 1
		{[]string{"/ok", "/goaway"}, RefusedStream},      // stream 3
		{[]string{"/ok", "/goaway-code"}, RefusedStream}, // stream 3
		{[]string{"/goaway-processed"}, NotReset},
		{[]string{"/mid-body"}, RemoteReset},
		{[]string{"/no-status"}, ProtocolError},
		{[]string{"/conn-error"}, ProtocolError},
		{[]string{"/close"}, NotReset},
	} {
		// A connection of its own for each case: close the pool's.
		c.pools.h2c.closeIdle(false)
		var err error
		for _, p := range tc.paths {
			var resp *http.Response
			resp, err = do(p)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
		}
		if err == nil {
			t.Errorf("%v: no error", tc.paths)
			continue
		}
		if got := ClassifyReset(err); got != tc.want {
			t.Errorf("%v: %v (%T) classified %d, want %d", tc.paths, err, err, got, tc.want)
		}
	}
}
