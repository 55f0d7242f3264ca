// Package h2 is the HTTP/2 wire (RFC 9113 frames, RFC 7541 HPACK) that
// kmesh-cni's gRPC client and the daemon's CNI socket server share: only
// what unary gRPC over a unix socket needs, written here rather than
// taken from golang.org/x/net so that a plugin run pays no package
// initialisation and the daemon answers a call on the goroutine that
// read it.
package h2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types.
const (
	FrameData         = 0x0
	FrameHeaders      = 0x1
	FramePriority     = 0x2
	FrameRSTStream    = 0x3
	FrameSettings     = 0x4
	FramePushPromise  = 0x5
	FramePing         = 0x6
	FrameGoAway       = 0x7
	FrameWindowUpdate = 0x8
	FrameContinuation = 0x9
)

// Frame flags.
const (
	FlagEndStream  = 0x1
	FlagAck        = 0x1
	FlagEndHeaders = 0x4
	FlagPadded     = 0x8
	FlagPriority   = 0x20
)

// Settings.
const (
	SettingHeaderTableSize      = 0x1
	SettingEnablePush           = 0x2
	SettingMaxConcurrentStreams = 0x3
	SettingInitialWindowSize    = 0x4
	SettingMaxFrameSize         = 0x5
	SettingMaxHeaderListSize    = 0x6
)

// Error codes (RST_STREAM, GOAWAY).
const (
	ErrCodeNo            = 0x0
	ErrCodeProtocol      = 0x1
	ErrCodeInternal      = 0x2
	ErrCodeFlowControl   = 0x3
	ErrCodeStreamClosed  = 0x5
	ErrCodeFrameSize     = 0x6
	ErrCodeRefusedStream = 0x7
)

const (
	// Preface is what a client sends first.
	Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// DefaultMaxFrameSize is the protocol's initial SETTINGS_MAX_FRAME_SIZE.
	DefaultMaxFrameSize = 16384
	// DefaultWindow is the protocol's initial flow-control window.
	DefaultWindow = 65535
)

// FrameHeader is a frame's 9-byte header.
type FrameHeader struct {
	Length int
	Type   byte
	Flags  byte
	Stream uint32
}

// ReadFrame reads one frame of at most max payload bytes, reusing buf's
// storage for the payload.
func ReadFrame(r io.Reader, buf []byte, max int) (FrameHeader, []byte, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return FrameHeader{}, buf, err
	}
	fh := FrameHeader{
		Length: int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2]),
		Type:   hdr[3],
		Flags:  hdr[4],
		Stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff,
	}
	if fh.Length > max {
		return fh, buf, fmt.Errorf("%w: frame of %d bytes over %d", ErrFrameSize, fh.Length, max)
	}
	if cap(buf) < fh.Length {
		buf = make([]byte, fh.Length)
	}
	buf = buf[:fh.Length]
	if _, err := io.ReadFull(r, buf); err != nil {
		return fh, buf, err
	}
	return fh, buf, nil
}

// ErrFrameSize is a frame larger than its reader allows.
var ErrFrameSize = errors.New("http2: frame too large")

// AppendFrame appends a frame whose payload payload appends.
func AppendFrame(b []byte, typ, flags byte, stream uint32, payload func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream&0x7fffffff)
	b = payload(b)
	n := len(b) - start - 9
	b[start], b[start+1], b[start+2] = byte(n>>16), byte(n>>8), byte(n)
	return b
}

// AppendFrameBytes appends a frame carrying p.
func AppendFrameBytes(b []byte, typ, flags byte, stream uint32, p []byte) []byte {
	b = append(b, byte(len(p)>>16), byte(len(p)>>8), byte(len(p)), typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream&0x7fffffff)
	return append(b, p...)
}

// AppendSetting appends one setting to a SETTINGS payload.
func AppendSetting(b []byte, id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(b, id), v)
}

// Unpad strips a padded frame's padding.
func Unpad(p []byte, flags byte) ([]byte, error) {
	if flags&FlagPadded == 0 {
		return p, nil
	}
	if len(p) < 1 || int(p[0]) >= len(p) {
		return nil, errors.New("http2: bad padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}
