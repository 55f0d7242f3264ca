package grpcunary

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kmesh-go/kmesh/internal/h2"
)

const (
	maxStreams    = 100     // SETTINGS_MAX_CONCURRENT_STREAMS we announce
	maxHeaderList = 1 << 20 // SETTINGS_MAX_HEADER_LIST_SIZE we announce
	// connWindow is the connection's receive window after our first
	// WINDOW_UPDATE: streams' own windows (the default 65535, given back
	// as their data is read) are what bound a peer.
	connWindow   = 1 << 30
	writeTimeout = 10 * time.Second
	// prefaceTimeout bounds how long a connection may take to say it
	// speaks HTTP/2 at all.
	prefaceTimeout = 10 * time.Second
	maxWindow      = 1<<31 - 1
)

// connError ends the connection with GOAWAY(code).
type connError struct {
	code uint32
	msg  string
}

func (e *connError) Error() string { return fmt.Sprintf("http2 error %d: %s", e.code, e.msg) }

func protocolError(format string, args ...any) error {
	return &connError{h2.ErrCodeProtocol, fmt.Sprintf(format, args...)}
}

// stream is one call. Only the connection's goroutine touches it.
type stream struct {
	id        uint32
	block     []byte // header block being read
	blockEnds bool   // its HEADERS frame had END_STREAM
	headers   bool   // the request headers are read
	refused   bool   // over the stream limit, or begun after GOAWAY
	ignored   bool   // a header block on a stream we ended: read, dropped
	method    string
	path      string
	ctype     string
	timeout   string
	encoding  string
	md        metadata.MD
	body      []byte
	recvWin   int64
	recvDone  bool // END_STREAM read
	sendWin   int64
	pending   []byte // answer DATA not yet sent (flow control)
	trailers  []byte // header block sent after pending
}

type conn struct {
	s   *Server
	nc  net.Conn
	r   *bufio.Reader
	dec *h2.Decoder

	ctx    context.Context // calls' contexts derive from it; ends with the connection
	cancel context.CancelFunc

	wmu sync.Mutex // writes: the connection's goroutine, drain's GOAWAY

	mu           sync.Mutex // below: shared with drain
	lastStream   uint32     // highest stream id the peer opened
	active       int        // streams not yet finished
	draining     bool
	goAway       uint32 // last stream id in our GOAWAY, once sent
	goAwaySent   bool
	settingsSent bool // our SETTINGS are out: GOAWAY may follow them
	prefaceRead  bool

	// The connection's goroutine only.
	streams    map[uint32]*stream
	cont       *stream // stream whose header block continues
	sendWin    int64   // connection send window
	peerWindow int64   // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame  int     // peer's SETTINGS_MAX_FRAME_SIZE
	recvWin    int64   // connection receive window left
	recvUsed   int64   // received since our last connection WINDOW_UPDATE
	order      []*stream
	out        []byte // frames to write once this frame is handled
	buf        []byte
	// reset holds the last streams we reset (RST_STREAM): a header block
	// still arriving on one is read (the HPACK table) and dropped, as
	// RFC 9113 5.1 asks, rather than ending the connection.
	reset  [16]uint32
	nreset int
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(s.ctx)
	return &conn{
		ctx: ctx, cancel: cancel,
		s: s, nc: nc, r: bufio.NewReaderSize(nc, 32<<10),
		dec:        h2.NewDecoder(4096, maxHeaderList),
		streams:    map[uint32]*stream{},
		sendWin:    h2.DefaultWindow,
		peerWindow: h2.DefaultWindow,
		peerFrame:  h2.DefaultMaxFrameSize,
		recvWin:    connWindow,
	}
}

// serve runs the connection until it ends.
func (c *conn) serve() {
	defer c.nc.Close()
	defer c.cancel()
	// Our preface goes out at once: the server may send it before the
	// client's arrives, and a client is waiting for it.
	c.out = h2.AppendFrame(c.out, h2.FrameSettings, 0, 0, func(p []byte) []byte {
		p = h2.AppendSetting(p, h2.SettingMaxConcurrentStreams, maxStreams)
		return h2.AppendSetting(p, h2.SettingMaxHeaderListSize, maxHeaderList)
	})
	c.out = h2.AppendFrame(c.out, h2.FrameWindowUpdate, 0, 0, func(p []byte) []byte {
		return binary.BigEndian.AppendUint32(p, connWindow-h2.DefaultWindow)
	})
	if c.flush() != nil {
		return
	}
	c.mu.Lock()
	c.settingsSent = true
	deadline := time.Now().Add(prefaceTimeout)
	if c.draining {
		// GracefulStop came before our SETTINGS went out: GOAWAY now,
		// and nothing to wait for.
		c.sendGoAway()
		deadline = time.Now()
	}
	_ = c.nc.SetReadDeadline(deadline)
	c.mu.Unlock()
	var pre [len(h2.Preface)]byte
	if _, err := io.ReadFull(c.r, pre[:]); err != nil || string(pre[:]) != h2.Preface {
		return
	}
	c.mu.Lock()
	c.prefaceRead = true
	if !c.draining {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	c.mu.Unlock()
	for {
		fh, p, err := h2.ReadFrame(c.r, c.buf, h2.DefaultMaxFrameSize)
		c.buf = p[:0]
		if err != nil {
			if errors.Is(err, h2.ErrFrameSize) {
				c.fail(&connError{h2.ErrCodeFrameSize, err.Error()})
			}
			return
		}
		if err := c.frame(fh, p); err != nil {
			var ce *connError
			if !errors.As(err, &ce) {
				ce = &connError{h2.ErrCodeInternal, err.Error()}
			}
			c.fail(ce)
			return
		}
		if c.flush() != nil {
			return
		}
		c.mu.Lock()
		done := c.draining && c.active == 0
		c.mu.Unlock()
		if done {
			return
		}
	}
}

// drain sends GOAWAY: streams the peer has opened are still served,
// later ones refused. An idle connection ends at once.
func (c *conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return
	}
	c.draining = true
	if c.settingsSent {
		c.sendGoAway()
	}
	if c.active == 0 || !c.prefaceRead {
		// Wake the reader, which has nothing left to wait for.
		_ = c.nc.SetReadDeadline(time.Now())
	}
}

// sendGoAway writes GOAWAY(NO_ERROR) with the last stream the peer
// opened. c.mu is held.
func (c *conn) sendGoAway() {
	c.goAway, c.goAwaySent = c.lastStream, true
	c.wmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, _ = c.nc.Write(h2.AppendFrame(nil, h2.FrameGoAway, 0, 0, func(p []byte) []byte {
		p = binary.BigEndian.AppendUint32(p, c.goAway)
		return binary.BigEndian.AppendUint32(p, h2.ErrCodeNo)
	}))
	c.wmu.Unlock()
}

// fail ends the connection on a protocol error, telling the peer why.
func (c *conn) fail(ce *connError) {
	c.mu.Lock()
	last := c.lastStream
	if c.goAwaySent {
		last = min(last, c.goAway) // a later GOAWAY may not raise it
	}
	c.mu.Unlock()
	c.out = h2.AppendFrame(c.out[:0], h2.FrameGoAway, 0, 0, func(p []byte) []byte {
		p = binary.BigEndian.AppendUint32(p, last)
		p = binary.BigEndian.AppendUint32(p, ce.code)
		return append(p, ce.msg...)
	})
	_ = c.flush()
}

func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.nc.Write(c.out)
	c.out = c.out[:0]
	return err
}

func (c *conn) rst(id, code uint32) {
	c.out = h2.AppendFrame(c.out, h2.FrameRSTStream, 0, id, func(p []byte) []byte {
		return binary.BigEndian.AppendUint32(p, code)
	})
	c.reset[c.nreset%len(c.reset)] = id
	c.nreset++
}

// frame handles one frame; an error ends the connection.
func (c *conn) frame(fh h2.FrameHeader, p []byte) error {
	if c.cont != nil && (fh.Type != h2.FrameContinuation || fh.Stream != c.cont.id) {
		return protocolError("frame type %d while the header block of stream %d continues", fh.Type, c.cont.id)
	}
	switch fh.Type {
	case h2.FrameData:
		return c.data(fh, p)
	case h2.FrameHeaders:
		return c.headers(fh, p)
	case h2.FrameContinuation:
		if c.cont == nil {
			return protocolError("CONTINUATION without HEADERS")
		}
		st := c.cont
		if st.block = append(st.block, p...); len(st.block) > maxHeaderList {
			return &connError{0xb, "header list too large"} // ENHANCE_YOUR_CALM
		}
		if fh.Flags&h2.FlagEndHeaders == 0 {
			return nil
		}
		c.cont = nil
		return c.headersDone(st)
	case h2.FrameSettings:
		return c.settings(fh, p)
	case h2.FramePing:
		if fh.Stream != 0 {
			return protocolError("PING on stream %d", fh.Stream)
		}
		if len(p) != 8 {
			return &connError{h2.ErrCodeFrameSize, "PING of " + strconv.Itoa(len(p)) + " bytes"}
		}
		if fh.Flags&h2.FlagAck == 0 {
			c.out = h2.AppendFrameBytes(c.out, h2.FramePing, h2.FlagAck, 0, p)
		}
	case h2.FrameWindowUpdate:
		if len(p) != 4 {
			return &connError{h2.ErrCodeFrameSize, "WINDOW_UPDATE of " + strconv.Itoa(len(p)) + " bytes"}
		}
		inc := int64(binary.BigEndian.Uint32(p) & 0x7fffffff)
		if fh.Stream == 0 {
			if inc == 0 {
				return protocolError("connection WINDOW_UPDATE of 0")
			}
			if c.sendWin += inc; c.sendWin > maxWindow {
				return &connError{h2.ErrCodeFlowControl, "connection window over 2^31-1"}
			}
		} else if st := c.streams[fh.Stream]; st != nil {
			if inc == 0 {
				c.rst(st.id, h2.ErrCodeProtocol)
				c.finish(st)
				return nil
			}
			if st.sendWin += inc; st.sendWin > maxWindow {
				c.rst(st.id, h2.ErrCodeFlowControl)
				c.finish(st)
				return nil
			}
		}
		c.sendPending()
	case h2.FrameRSTStream:
		if fh.Stream == 0 {
			return protocolError("RST_STREAM on stream 0")
		}
		if len(p) != 4 {
			return &connError{h2.ErrCodeFrameSize, "RST_STREAM of " + strconv.Itoa(len(p)) + " bytes"}
		}
		if st := c.streams[fh.Stream]; st != nil {
			c.finish(st)
		} else if fh.Stream > c.last() {
			return protocolError("RST_STREAM on idle stream %d", fh.Stream)
		}
	case h2.FramePriority:
		if fh.Stream == 0 {
			return protocolError("PRIORITY on stream 0")
		}
	case h2.FrameGoAway:
		if fh.Stream != 0 {
			return protocolError("GOAWAY on stream %d", fh.Stream)
		}
		// The peer opens nothing more; what it opened is still answered.
	case h2.FramePushPromise:
		return protocolError("PUSH_PROMISE from a client")
	}
	return nil // unknown frame types are ignored (RFC 9113 5.5)
}

func (c *conn) last() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastStream
}

func (c *conn) settings(fh h2.FrameHeader, p []byte) error {
	if fh.Stream != 0 {
		return protocolError("SETTINGS on stream %d", fh.Stream)
	}
	if fh.Flags&h2.FlagAck != 0 {
		if len(p) != 0 {
			return &connError{h2.ErrCodeFrameSize, "SETTINGS ack with a payload"}
		}
		return nil
	}
	if len(p)%6 != 0 {
		return &connError{h2.ErrCodeFrameSize, "SETTINGS of " + strconv.Itoa(len(p)) + " bytes"}
	}
	for ; len(p) > 0; p = p[6:] {
		id, v := binary.BigEndian.Uint16(p), binary.BigEndian.Uint32(p[2:])
		switch id {
		case h2.SettingEnablePush:
			if v > 1 {
				return protocolError("SETTINGS_ENABLE_PUSH %d", v)
			}
		case h2.SettingInitialWindowSize:
			if v > maxWindow {
				return &connError{h2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1"}
			}
			delta := int64(v) - c.peerWindow
			c.peerWindow = int64(v)
			for _, st := range c.streams {
				if st.sendWin += delta; st.sendWin > maxWindow {
					return &connError{h2.ErrCodeFlowControl, "a stream's window over 2^31-1"}
				}
			}
		case h2.SettingMaxFrameSize:
			if v < h2.DefaultMaxFrameSize || v > 1<<24-1 {
				return protocolError("SETTINGS_MAX_FRAME_SIZE %d", v)
			}
			c.peerFrame = int(v)
		}
	}
	c.out = h2.AppendFrame(c.out, h2.FrameSettings, h2.FlagAck, 0, func(p []byte) []byte { return p })
	c.sendPending()
	return nil
}

func (c *conn) data(fh h2.FrameHeader, p []byte) error {
	if fh.Stream == 0 {
		return protocolError("DATA on stream 0")
	}
	// Every DATA frame counts against the connection's window, whatever
	// becomes of its stream.
	n := int64(fh.Length)
	if c.recvWin -= n; c.recvWin < 0 {
		return &connError{h2.ErrCodeFlowControl, "the peer sent past the connection window"}
	}
	if c.recvUsed += n; c.recvUsed >= connWindow/2 {
		inc := c.recvUsed
		c.out = h2.AppendFrame(c.out, h2.FrameWindowUpdate, 0, 0, func(b []byte) []byte {
			return binary.BigEndian.AppendUint32(b, uint32(inc))
		})
		c.recvWin += inc
		c.recvUsed = 0
	}
	st := c.streams[fh.Stream]
	if st == nil || st.recvDone {
		if fh.Stream > c.last() {
			return protocolError("DATA on idle stream %d", fh.Stream)
		}
		if st != nil {
			c.rst(st.id, h2.ErrCodeStreamClosed)
			c.finish(st)
		}
		// Otherwise a stream we answered or reset early: its data is
		// dropped.
		return nil
	}
	if st.recvWin -= n; st.recvWin < 0 {
		return &connError{h2.ErrCodeFlowControl, fmt.Sprintf("the peer sent past stream %d's window", st.id)}
	}
	d, err := h2.Unpad(p, fh.Flags)
	if err != nil {
		return protocolError("stream %d: %v", st.id, err)
	}
	st.recvDone = fh.Flags&h2.FlagEndStream != 0
	if len(st.body)+len(d) > MaxRecvMsgSize+5 {
		// Answered now; done() tells the peer to stop sending.
		c.answerStatus(st, codes.ResourceExhausted, fmt.Sprintf("request larger than %d bytes", MaxRecvMsgSize))
		return nil
	}
	st.body = append(st.body, d...)
	if st.recvDone {
		c.call(st)
		return nil
	}
	if n > 0 {
		// Give the stream its window back: the request is read as it
		// comes, up to MaxRecvMsgSize.
		c.out = h2.AppendFrame(c.out, h2.FrameWindowUpdate, 0, st.id, func(b []byte) []byte {
			return binary.BigEndian.AppendUint32(b, uint32(n))
		})
		st.recvWin += n
	}
	return nil
}

func (c *conn) headers(fh h2.FrameHeader, p []byte) error {
	if fh.Stream == 0 {
		return protocolError("HEADERS on stream 0")
	}
	p, err := h2.Unpad(p, fh.Flags)
	if err != nil {
		return protocolError("stream %d: %v", fh.Stream, err)
	}
	if fh.Flags&h2.FlagPriority != 0 {
		if len(p) < 5 {
			return protocolError("stream %d: short HEADERS", fh.Stream)
		}
		p = p[5:]
	}
	st := c.streams[fh.Stream]
	switch {
	case st == nil:
		if fh.Stream%2 == 0 {
			return protocolError("client stream with even id %d", fh.Stream)
		}
		c.mu.Lock()
		if fh.Stream <= c.lastStream {
			c.mu.Unlock()
			if !c.wasReset(fh.Stream) {
				return &connError{h2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on closed stream %d", fh.Stream)}
			}
			// Trailers of a call we already ended: read for the HPACK
			// table, then dropped.
			st = &stream{id: fh.Stream, ignored: true}
			break
		}
		c.lastStream = fh.Stream
		st = &stream{id: fh.Stream, recvWin: h2.DefaultWindow, sendWin: c.peerWindow}
		st.refused = c.goAwaySent && fh.Stream > c.goAway || c.active >= maxStreams
		if !st.refused {
			c.active++
		}
		c.mu.Unlock()
		if !st.refused {
			c.streams[st.id] = st
		}
	case st.recvDone:
		return &connError{h2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on half-closed stream %d", st.id)}
	case st.headers && fh.Flags&h2.FlagEndStream == 0:
		return protocolError("stream %d: trailers without END_STREAM", st.id)
	}
	st.block = append(st.block[:0], p...)
	st.blockEnds = fh.Flags&h2.FlagEndStream != 0
	if len(st.block) > maxHeaderList {
		return &connError{0xb, "header list too large"}
	}
	if fh.Flags&h2.FlagEndHeaders == 0 {
		c.cont = st
		return nil
	}
	return c.headersDone(st)
}

// headersDone handles a complete header block: the request's headers or,
// rarely, its trailers.
func (c *conn) headersDone(st *stream) error {
	trailers := st.headers
	err := c.dec.Decode(st.block, func(f h2.HeaderField) {
		if trailers {
			return
		}
		switch f.Name {
		case ":method":
			st.method = f.Value
		case ":path":
			st.path = f.Value
		case "content-type":
			st.ctype = f.Value
		case "grpc-timeout":
			st.timeout = f.Value
		case "grpc-encoding":
			st.encoding = f.Value
		default:
			// The call's metadata, for metadata.FromIncomingContext: as
			// grpc-go, without the pseudo-headers and transport's own.
			if !strings.HasPrefix(f.Name, ":") && !transportHeader[f.Name] {
				if st.md == nil {
					st.md = metadata.MD{}
				}
				v := f.Value
				if strings.HasSuffix(f.Name, "-bin") {
					if b, err := decodeBinHeader(v); err == nil {
						v = string(b)
					}
				}
				st.md[f.Name] = append(st.md[f.Name], v)
			}
		}
	})
	st.block = st.block[:0]
	if err != nil {
		return &connError{0x9, err.Error()} // COMPRESSION_ERROR: the table is lost
	}
	st.headers = true
	if st.ignored {
		return nil
	}
	if st.refused {
		c.rst(st.id, h2.ErrCodeRefusedStream)
		return nil
	}
	if st.blockEnds {
		// A stream answered early is no longer in c.streams, so this one
		// has not been answered.
		st.recvDone = true
		c.call(st)
	}
	return nil
}

// call runs the method and queues its answer.
func (c *conn) call(st *stream) {
	switch {
	case st.method != "POST":
		c.answerHTTP(st, "405")
		return
	case !isGRPC(st.ctype):
		c.answerHTTP(st, "415")
		return
	case st.encoding != "" && st.encoding != "identity":
		c.answerStatus(st, codes.Unimplemented, "grpc-encoding "+st.encoding+" is not supported")
		return
	}
	m := c.s.methods[st.path]
	if m == nil {
		c.answerStatus(st, codes.Unimplemented, "unknown method "+st.path)
		return
	}
	b := st.body
	if len(b) < 5 || int(binary.BigEndian.Uint32(b[1:])) != len(b)-5 {
		c.answerStatus(st, codes.Internal, fmt.Sprintf("malformed request: %d bytes, not one length-prefixed message", len(b)))
		return
	}
	if b[0] != 0 {
		c.answerStatus(st, codes.Internal, "compressed request without grpc-encoding")
		return
	}
	ctx := c.ctx
	if md := st.md; len(md) > 0 {
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	if st.timeout != "" {
		d, ok := parseTimeout(st.timeout)
		if !ok {
			c.answerStatus(st, codes.Internal, "malformed grpc-timeout "+strconv.Quote(st.timeout))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	resp, err := run(ctx, m, b[5:])
	st.body = nil
	if err != nil {
		s, ok := status.FromError(err)
		if !ok {
			// A handler that returns ctx.Err() as it is, as grpc-go reads it.
			s = status.FromContextError(err)
		}
		c.answerError(st, s)
		return
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		c.answerStatus(st, codes.Internal, "encode answer: "+err.Error())
		return
	}
	data := make([]byte, 5, 5+len(out))
	binary.BigEndian.PutUint32(data[1:], uint32(len(out)))
	data = append(data, out...)
	hdr := h2.AppendHeader(nil, ":status", "200")
	hdr = h2.AppendHeader(hdr, "content-type", "application/grpc")
	c.appendBlock(st.id, hdr, false)
	st.pending = data
	st.trailers = h2.AppendHeader(nil, "grpc-status", "0")
	c.order = append(c.order, st)
	c.sendPending()
}

// run calls m, turning a panic into an Internal status: one bad request
// must not take the daemon down.
func run(ctx context.Context, m method, req []byte) (resp proto.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, status.Errorf(codes.Internal, "panic: %v", r)
		}
	}()
	return m(ctx, req)
}

func isGRPC(ctype string) bool {
	rest, ok := strings.CutPrefix(ctype, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// answerStatus answers with only trailers: status code and message.
func (c *conn) answerStatus(st *stream, code codes.Code, msg string, extra ...string) {
	b := h2.AppendHeader(nil, ":status", "200")
	b = h2.AppendHeader(b, "content-type", "application/grpc")
	b = h2.AppendHeader(b, "grpc-status", strconv.Itoa(int(code)))
	if msg != "" {
		b = h2.AppendHeader(b, "grpc-message", encodeMessage(msg))
	}
	for i := 0; i+1 < len(extra); i += 2 {
		b = h2.AppendHeader(b, extra[i], extra[i+1])
	}
	c.appendBlock(st.id, b, true)
	c.done(st)
}

// answerError answers with a handler's status, its details too.
func (c *conn) answerError(st *stream, s *status.Status) {
	if len(s.Proto().GetDetails()) == 0 {
		c.answerStatus(st, s.Code(), s.Message())
		return
	}
	details, err := proto.Marshal(s.Proto())
	if err != nil {
		c.answerStatus(st, codes.Internal, "encode status details: "+err.Error())
		return
	}
	c.answerStatus(st, s.Code(), s.Message(), "grpc-status-details-bin", base64.RawStdEncoding.EncodeToString(details))
}

// transportHeader names the headers that are the transport's, not the
// call's metadata.
var transportHeader = map[string]bool{
	"content-type": true, "user-agent": true, "te": true, "grpc-timeout": true,
	"grpc-encoding": true, "grpc-accept-encoding": true, "grpc-message-type": true,
	"connection": true,
}

// decodeBinHeader reads a -bin header: base64, padded or not.
func decodeBinHeader(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// answerHTTP answers a request that is not gRPC with an HTTP status.
func (c *conn) answerHTTP(st *stream, code string) {
	c.appendBlock(st.id, h2.AppendHeader(nil, ":status", code), true)
	c.done(st)
}

// appendBlock writes a header block as HEADERS and CONTINUATION frames of
// the peer's frame size.
func (c *conn) appendBlock(id uint32, block []byte, endStream bool) {
	typ, flags := byte(h2.FrameHeaders), byte(0)
	if endStream {
		flags = h2.FlagEndStream
	}
	for {
		n := min(len(block), c.peerFrame)
		f := flags
		if n == len(block) {
			f |= h2.FlagEndHeaders
		}
		c.out = h2.AppendFrameBytes(c.out, typ, f, id, block[:n])
		if block = block[n:]; len(block) == 0 {
			return
		}
		typ, flags = h2.FrameContinuation, 0
	}
}

// sendPending sends what the flow-control windows allow of the answers
// waiting, in the order they were made.
func (c *conn) sendPending() {
	kept := c.order[:0]
	for _, st := range c.order {
		if c.streams[st.id] != st {
			continue // reset meanwhile
		}
		for len(st.pending) > 0 && c.sendWin > 0 && st.sendWin > 0 {
			n := int(min(int64(len(st.pending)), c.sendWin, st.sendWin, int64(c.peerFrame)))
			c.out = h2.AppendFrameBytes(c.out, h2.FrameData, 0, st.id, st.pending[:n])
			st.pending = st.pending[n:]
			c.sendWin -= int64(n)
			st.sendWin -= int64(n)
		}
		if len(st.pending) > 0 {
			kept = append(kept, st)
			continue
		}
		c.appendBlock(st.id, st.trailers, true)
		st.pending, st.trailers = nil, nil
		c.done(st)
	}
	clear(c.order[len(kept):])
	c.order = kept
}

// done is the end of our side of a stream: if the peer is still sending,
// it is told to stop (RST_STREAM NO_ERROR, RFC 9113 8.1).
func (c *conn) done(st *stream) {
	if !st.recvDone {
		c.rst(st.id, h2.ErrCodeNo)
	}
	c.finish(st)
}

func (c *conn) wasReset(id uint32) bool {
	for _, r := range c.reset {
		if r == id {
			return true
		}
	}
	return false
}

// finish forgets a stream.
func (c *conn) finish(st *stream) {
	if c.streams[st.id] != st {
		return
	}
	delete(c.streams, st.id)
	c.mu.Lock()
	c.active--
	c.mu.Unlock()
}

// parseTimeout reads a grpc-timeout value: up to 8 digits and a unit.
func parseTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64(1<<63-1)/int64(unit) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// encodeMessage percent-encodes grpc-message as the gRPC spec asks: bytes
// outside printable ASCII, and '%'.
func encodeMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		ch := msg[i]
		if ch >= 0x20 && ch <= 0x7e && ch != '%' {
			b.WriteByte(ch)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", ch)
	}
	return b.String()
}
