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

	"github.com/kmesh-go/kmesh/internal/h2"
)

// This file is a unary gRPC client over one HTTP/2 connection (RFC 9113,
// prior knowledge, as gRPC over a unix socket is): the few frames a
// plugin run needs, written by itself so that the connection preface can
// go out at the start of ADD and a call is then one write and the reads
// of its answer. net/http's client pays the handshake and two goroutine
// hand-offs on the first call (~0.8 ms on a busy node); grpc-go also its
// package initialisation (~1.2 ms).

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
	dec *h2.Decoder
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
	h.dec = h2.NewDecoder(4096, maxHeaderList)
	b := []byte(h2.Preface)
	b = h2.AppendFrame(b, h2.FrameSettings, 0, 0, func(p []byte) []byte {
		p = h2.AppendSetting(p, h2.SettingEnablePush, 0)
		return h2.AppendSetting(p, h2.SettingInitialWindowSize, recvWindow)
	})
	b = h2.AppendFrame(b, h2.FrameWindowUpdate, 0, 0, func(p []byte) []byte {
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
		block = h2.AppendHeader(block, f[0], f[1])
	}
	if dl, ok := ctx.Deadline(); ok {
		// So the daemon gives up too; gRPC allows at most 8 digits.
		ms := min(max(time.Until(dl).Milliseconds(), 1), 99999999)
		block = h2.AppendHeader(block, "grpc-timeout", strconv.FormatInt(ms, 10)+"m")
	}
	if len(block) > h2.DefaultMaxFrameSize || len(body) > 65535 {
		// The server's initial flow-control window; our requests are a
		// few hundred bytes.
		return nil, fmt.Errorf("request of %d bytes is too large", len(body))
	}
	out := h2.AppendFrame(nil, h2.FrameHeaders, h2.FlagEndHeaders, id, func(p []byte) []byte { return append(p, block...) })
	for off := 0; ; off += h2.DefaultMaxFrameSize {
		end := min(off+h2.DefaultMaxFrameSize, len(body))
		flags := byte(0)
		if end == len(body) {
			flags = h2.FlagEndStream
		}
		out = h2.AppendFrame(out, h2.FrameData, flags, id, func(p []byte) []byte { return append(p, body[off:end]...) })
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
		case h2.FrameSettings:
			if flags&h2.FlagAck == 0 {
				if err := h.write(h2.AppendFrame(nil, h2.FrameSettings, h2.FlagAck, 0, func(p []byte) []byte { return p })); err != nil {
					return nil, err
				}
			}
			continue
		case h2.FramePing:
			if flags&h2.FlagAck == 0 {
				if err := h.write(h2.AppendFrame(nil, h2.FramePing, h2.FlagAck, 0, func(p []byte) []byte { return append(p, payload...) })); err != nil {
					return nil, err
				}
			}
			continue
		case h2.FrameGoAway:
			h.goAway = true
			if len(payload) >= 8 && binary.BigEndian.Uint32(payload)&0x7fffffff < id {
				return nil, fmt.Errorf("the daemon refused the call (GOAWAY, code %d)", binary.BigEndian.Uint32(payload[4:]))
			}
			continue
		case h2.FrameWindowUpdate:
			continue
		}
		if stream != id {
			if typ == h2.FrameHeaders || typ == h2.FrameContinuation {
				// Keep the decoder's table in step all the same.
				p := payload
				if typ == h2.FrameHeaders {
					var err error
					if p, err = h2.Unpad(payload, flags); err != nil {
						return nil, err
					}
					if flags&h2.FlagPriority != 0 && len(p) >= 5 {
						p = p[5:]
					}
					h.other = h.other[:0]
				}
				if h.other = append(h.other, p...); len(h.other) > maxHeaderList {
					return nil, errors.New("header list too large")
				}
				if flags&h2.FlagEndHeaders != 0 {
					if err := h.dec.Decode(h.other, func(h2.HeaderField) {}); err != nil {
						return nil, fmt.Errorf("decode headers: %w", err)
					}
				}
			}
			continue
		}
		switch typ {
		case h2.FrameRSTStream:
			code := uint32(0)
			if len(payload) >= 4 {
				code = binary.BigEndian.Uint32(payload)
			}
			return nil, fmt.Errorf("the daemon reset the call (HTTP/2 error %d)", code)
		case h2.FrameData:
			p, err := h2.Unpad(payload, flags)
			if err != nil {
				return nil, err
			}
			a.data = append(a.data, p...)
			if consumed += n; consumed > recvWindow/2 {
				return nil, errors.New("answer larger than the flow-control window")
			}
			if flags&h2.FlagEndStream != 0 {
				return a, nil
			}
		case h2.FrameHeaders, h2.FrameContinuation:
			p := payload
			if typ == h2.FrameHeaders {
				var err error
				if p, err = h2.Unpad(payload, flags); err != nil {
					return nil, err
				}
				if flags&h2.FlagPriority != 0 {
					if len(p) < 5 {
						return nil, errors.New("short HEADERS frame")
					}
					p = p[5:]
				}
				block = append(block[:0], p...)
				endStream = flags&h2.FlagEndStream != 0
			} else {
				block = append(block, p...)
			}
			if len(block) > maxHeaderList {
				return nil, errors.New("header list too large")
			}
			if flags&h2.FlagEndHeaders == 0 {
				continue
			}
			headersSeen++
			err := h.dec.Decode(block, func(f h2.HeaderField) {
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
			})
			if err != nil {
				return nil, fmt.Errorf("decode headers: %w", err)
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
