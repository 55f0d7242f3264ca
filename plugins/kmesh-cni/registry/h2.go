//go:build !kmesh_grpc_client

package registry

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
)

// This file is a unary gRPC client over one HTTP/2 connection (RFC 9113,
// prior knowledge, as gRPC over a unix socket is): the few frames a
// plugin run needs, written by itself so that the connection preface can
// go out at the start of ADD and a call is then one write and the reads
// of its answer. net/http's client pays the handshake and two goroutine
// hand-offs on the first call (~0.8 ms on a busy node); grpc-go also its
// package initialisation (~1.2 ms). The server's header blocks are
// decoded with golang.org/x/net/http2/hpack (its initialisation and the
// Huffman table it builds on first use: ~0.05 ms); ours go out as
// literals that never touch the server's table.

// HTTP/2 frame types, flags and settings this client uses.
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingEnablePush        = 0x2
	settingInitialWindowSize = 0x4

	preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// maxFrameSize is the protocol's initial SETTINGS_MAX_FRAME_SIZE,
	// which we never raise.
	maxFrameSize = 16384
)

const (
	// The server may send this much before we must say we read it: far
	// more than a plugin run ever reads.
	recvWindow    = 1 << 30
	maxHeaderList = 1 << 20
)

// h2conn is one HTTP/2 connection carrying calls one after the other.
type h2conn struct {
	c   net.Conn
	r   *bufio.Reader
	dec *hpack.Decoder
	// other is a header block of another stream being continued (read to
	// keep the decoder's table in step).
	other  []byte
	stream uint32 // the last stream id used
	goAway bool
	used   bool // a call completed on it
}

// dialH2 connects and sends the connection preface and our settings; it
// does not wait for the server's.
func dialH2(ctx context.Context, socket string) (*h2conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	h := &h2conn{c: c, r: bufio.NewReaderSize(c, 32<<10)}
	h.dec = hpack.NewDecoder(4096, nil)
	h.dec.SetMaxStringLength(maxHeaderList)
	b := []byte(preface)
	b = appendFrame(b, frameSettings, 0, 0, func(p []byte) []byte {
		p = appendSetting(p, settingEnablePush, 0)
		return appendSetting(p, settingInitialWindowSize, recvWindow)
	})
	b = appendFrame(b, frameWindowUpdate, 0, 0, func(p []byte) []byte {
		return binary.BigEndian.AppendUint32(p, recvWindow-65535)
	})
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(dl)
	}
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

func (h *h2conn) Close() error { return h.c.Close() }

// answer is what came back for one call.
type answer struct {
	status  string // :status
	ctype   string // content-type
	gstatus string // grpc-status (trailers, or the headers of an error)
	gmsg    string // grpc-message
	data    []byte
}

// unary sends one request (path, a length-prefixed message) and reads its
// answer, within ctx's deadline.
func (h *h2conn) unary(ctx context.Context, path string, body []byte) (*answer, error) {
	if h.goAway {
		return nil, errors.New("the daemon closed the connection (GOAWAY)")
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = h.c.SetDeadline(dl)
	} else {
		_ = h.c.SetDeadline(time.Time{})
	}
	h.stream += 2
	if h.stream == 2 {
		h.stream = 1
	}
	id := h.stream

	var block []byte
	for _, f := range [...][2]string{
		{":method", "POST"},
		{":scheme", "http"},
		{":path", path},
		{":authority", "kmesh-daemon"},
		{"content-type", "application/grpc"},
		{"te", "trailers"},
		{"user-agent", "kmesh-cni"},
	} {
		block = appendHeader(block, f[0], f[1])
	}
	if dl, ok := ctx.Deadline(); ok {
		// So the daemon gives up too; gRPC allows at most 8 digits.
		ms := min(max(time.Until(dl).Milliseconds(), 1), 99999999)
		block = appendHeader(block, "grpc-timeout", strconv.FormatInt(ms, 10)+"m")
	}
	if len(block) > maxFrameSize || len(body) > 65535 {
		// The server's initial flow-control window; our requests are a
		// few hundred bytes.
		return nil, fmt.Errorf("request of %d bytes is too large", len(body))
	}
	out := appendFrame(nil, frameHeaders, flagEndHeaders, id, func(p []byte) []byte { return append(p, block...) })
	for off := 0; ; off += maxFrameSize {
		end := min(off+maxFrameSize, len(body))
		flags := byte(0)
		if end == len(body) {
			flags = flagEndStream
		}
		out = appendFrame(out, frameData, flags, id, func(p []byte) []byte { return append(p, body[off:end]...) })
		if end == len(body) {
			break
		}
	}
	if _, err := h.c.Write(out); err != nil {
		return nil, err
	}
	return h.readAnswer(id)
}

// readAnswer reads frames until stream id ends, answering the
// connection's SETTINGS and PINGs on the way.
func (h *h2conn) readAnswer(id uint32) (*answer, error) {
	a := &answer{}
	var hdr [9]byte
	var block []byte   // a header block being continued
	endStream := false // the HEADERS frame of that block ends the stream
	headersSeen := 0
	consumed := 0
	for {
		if _, err := io.ReadFull(h.r, hdr[:]); err != nil {
			return nil, err
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags := hdr[3], hdr[4]
		stream := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
		if n > 1<<24 {
			return nil, fmt.Errorf("frame of %d bytes", n)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(h.r, payload); err != nil {
			return nil, err
		}
		switch typ {
		case frameSettings:
			if flags&flagAck == 0 {
				if err := h.write(appendFrame(nil, frameSettings, flagAck, 0, func(p []byte) []byte { return p })); err != nil {
					return nil, err
				}
			}
			continue
		case framePing:
			if flags&flagAck == 0 {
				if err := h.write(appendFrame(nil, framePing, flagAck, 0, func(p []byte) []byte { return append(p, payload...) })); err != nil {
					return nil, err
				}
			}
			continue
		case frameGoAway:
			h.goAway = true
			if len(payload) >= 8 && binary.BigEndian.Uint32(payload)&0x7fffffff < id {
				return nil, fmt.Errorf("the daemon refused the call (GOAWAY, code %d)", binary.BigEndian.Uint32(payload[4:]))
			}
			continue
		case frameWindowUpdate:
			continue
		}
		if stream != id {
			if typ == frameHeaders || typ == frameContinuation {
				// Keep the decoder's table in step all the same.
				p := payload
				if typ == frameHeaders {
					var err error
					if p, err = unpad(payload, flags); err != nil {
						return nil, err
					}
					if flags&flagPriority != 0 && len(p) >= 5 {
						p = p[5:]
					}
					h.other = h.other[:0]
				}
				if h.other = append(h.other, p...); len(h.other) > maxHeaderList {
					return nil, errors.New("header list too large")
				}
				if flags&flagEndHeaders != 0 {
					if _, err := h.dec.DecodeFull(h.other); err != nil {
						return nil, fmt.Errorf("decode headers: %w", err)
					}
				}
			}
			continue
		}
		switch typ {
		case frameRSTStream:
			code := uint32(0)
			if len(payload) >= 4 {
				code = binary.BigEndian.Uint32(payload)
			}
			return nil, fmt.Errorf("the daemon reset the call (HTTP/2 error %d)", code)
		case frameData:
			p, err := unpad(payload, flags)
			if err != nil {
				return nil, err
			}
			a.data = append(a.data, p...)
			if consumed += n; consumed > recvWindow/2 {
				return nil, errors.New("answer larger than the flow-control window")
			}
			if flags&flagEndStream != 0 {
				return a, nil
			}
		case frameHeaders, frameContinuation:
			p := payload
			if typ == frameHeaders {
				var err error
				if p, err = unpad(payload, flags); err != nil {
					return nil, err
				}
				if flags&flagPriority != 0 {
					if len(p) < 5 {
						return nil, errors.New("short HEADERS frame")
					}
					p = p[5:]
				}
				block = append(block[:0], p...)
				endStream = flags&flagEndStream != 0
			} else {
				block = append(block, p...)
			}
			if len(block) > maxHeaderList {
				return nil, errors.New("header list too large")
			}
			if flags&flagEndHeaders == 0 {
				continue
			}
			headersSeen++
			fields, err := h.dec.DecodeFull(block)
			if err != nil {
				return nil, fmt.Errorf("decode headers: %w", err)
			}
			for _, f := range fields {
				switch f.Name {
				case ":status":
					if headersSeen == 1 {
						a.status = f.Value
					}
				case "content-type":
					a.ctype = f.Value
				case "grpc-status":
					a.gstatus = f.Value
				case "grpc-message":
					a.gmsg = f.Value
				}
			}
			// Trailers (or an error's only headers) end the stream.
			if endStream {
				return a, nil
			}
		}
	}
}

func (h *h2conn) write(b []byte) error {
	_, err := h.c.Write(b)
	return err
}

// err is the call's outcome: nil, or a StatusError.
func (a *answer) err() error {
	if a.status != "200" {
		return &StatusError{Code: codeUnavailable, Message: "HTTP status " + a.status}
	}
	if !strings.HasPrefix(a.ctype, "application/grpc") {
		return &StatusError{Code: codeUnavailable, Message: fmt.Sprintf("answer of content-type %q", a.ctype)}
	}
	msg := a.gmsg
	if m, err := url.PathUnescape(msg); err == nil {
		msg = m
	}
	code, err := strconv.Atoi(a.gstatus)
	if err != nil {
		return &StatusError{Code: codeUnavailable, Message: fmt.Sprintf("answer without a grpc-status (%q)", a.gstatus)}
	}
	if code != 0 {
		return &StatusError{Code: code, Message: msg}
	}
	return nil
}

// appendFrame appends a frame whose payload payload appends.
func appendFrame(b []byte, typ, flags byte, stream uint32, payload func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream&0x7fffffff)
	b = payload(b)
	n := len(b) - start - 9
	b[start], b[start+1], b[start+2] = byte(n>>16), byte(n>>8), byte(n)
	return b
}

// appendSetting appends one setting to a SETTINGS payload.
func appendSetting(b []byte, id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(b, id), v)
}

// unpad strips a padded frame's padding.
func unpad(p []byte, flags byte) ([]byte, error) {
	if flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) < 1 || int(p[0]) >= len(p) {
		return nil, errors.New("http2: bad padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}

// appendHeader appends a field as an HPACK literal without indexing
// (RFC 7541 6.2.2), name and value as plain strings: the server's table is
// never touched.
func appendHeader(b []byte, name, value string) []byte {
	b = append(b, 0)
	b = appendHpackInt(b, uint64(len(name)))
	b = append(b, name...)
	b = appendHpackInt(b, uint64(len(value)))
	return append(b, value...)
}

// appendHpackInt appends a string length: a 7-bit prefix, Huffman bit
// clear (RFC 7541 5.1).
func appendHpackInt(b []byte, v uint64) []byte {
	const mask = 1<<7 - 1
	if v < mask {
		return append(b, byte(v))
	}
	b = append(b, mask)
	for v -= mask; v >= 0x80; v >>= 7 {
		b = append(b, byte(v)|0x80)
	}
	return append(b, byte(v))
}
