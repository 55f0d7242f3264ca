package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
)

// Handler serves one request; conn is what ServeConn was given for the
// connection (the proxy's connection state).
type Handler func(w http.ResponseWriter, r *http.Request, conn any)

// Server serves HTTP/1.x on connections the caller accepted.
type Server struct {
	Handler Handler
	// IdleTimeout closes a keep-alive connection with no new request
	// (0: none).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's line and headers (0: 1 MiB, as
	// net/http); beyond it the client gets 431.
	MaxHeaderBytes int
	// WatchAfter: a request still being handled this long after its body
	// was read gets a watcher that notices the client leaving (the
	// request's context is cancelled). 0: 50 ms. net/http watches every
	// request, with a goroutine and a read each; a fast request needs
	// none.
	WatchAfter time.Duration
	Logger     *slog.Logger
}

const (
	bufSize = 4 << 10
	// maxDiscard is how much of an unread request body is read away to
	// keep the connection (net/http's value).
	maxDiscard = 256 << 10
)

// limitedReader caps what the request parser may read (the header
// limit); the body reads through it unlimited.
type limitedReader struct {
	r         io.Reader
	remaining int64 // < 0: unlimited
	total     int64 // bytes read from the connection (WireBytes)
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.remaining == 0 {
		return 0, errHeaderTooLarge
	}
	if l.remaining > 0 && int64(len(p)) > l.remaining {
		p = p[:l.remaining]
	}
	n, err := l.r.Read(p)
	if l.remaining > 0 {
		l.remaining -= int64(n)
	}
	l.total += int64(n)
	return n, err
}

// writeCounter is the connection as the response writes to it (through
// bw, and after a hijack): it counts what is written (WireBytes).
type writeCounter struct {
	net.Conn
	total int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	w.total += int64(n)
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

// conn is one connection being served.
type conn struct {
	s      *Server
	c      net.Conn
	lr     limitedReader
	wc     writeCounter
	br     *bufio.Reader
	bw     *bufio.Writer
	state  any
	parser Parser
	tmpl   *http.Request // the fields every request starts with (its context)
	ctx    context.Context
	cancel context.CancelFunc
	gone   ClientGone
	remote string
	w      response
	body   *requestBody // the current request's
	// inMark and outMark: the connection's bytes read and written before
	// the current request (WireBytes).
	inMark, outMark int64
	// inPos: the connection's bytes the request's head and body reads
	// have taken from br so far, stored by whichever goroutine read
	// (WireBytes reads it: lr and br are the reader's own, and the
	// watcher or a proxy's body writer may be reading them meanwhile).
	inPos atomic.Int64
	// watch: the client-gone watcher of the current request.
	watchT    *time.Timer
	watchMu   sync.Mutex
	watching  bool
	watchDone chan struct{}
	bodyDone  atomic.Bool
	served    atomic.Bool  // the handler returned
	hijacked  atomic.Bool  // the handler took the connection
	idleSet   atomic.Int64 // when the idle deadline was last moved (unix ns; body reads move it too)
	closing   atomic.Bool  // the deadline is in the past to wake a body reader: not to be moved
}

// ServeConn serves c until it closes, fails, asks to close or is
// hijacked, and says whether it was hijacked; br holds bytes already read
// from c (may be nil), and is not read again once ServeConn returns
// without a hijack. state is passed to the handler with every request.
func (s *Server) ServeConn(c net.Conn, br *bufio.Reader, state any) (hijacked bool) {
	c = Raw(c)
	cn := &conn{s: s, c: c, state: state, remote: c.RemoteAddr().String()}
	cn.lr.r = c
	if br != nil && br.Buffered() > 0 {
		cn.lr.r = &prefixed{br: br, cn: cn}
	}
	cn.br = readers.Get().(*bufio.Reader)
	cn.br.Reset(&cn.lr)
	cn.wc.Conn = c
	cn.bw = writers.Get().(*bufio.Writer)
	cn.bw.Reset(&cn.wc)
	cn.ctx, cn.cancel = context.WithCancel(context.WithValue(context.Background(), hookKey{}, &cn.gone))
	cn.gone.done = cn.ctx.Done()
	cn.tmpl = (&http.Request{RemoteAddr: cn.remote}).WithContext(cn.ctx)
	cn.w.c = cn
	cn.w.own = http.Header{}
	defer cn.cancel()
	hijacked = cn.serve()
	if !hijacked {
		c.Close()
		cn.release()
	}
	return hijacked
}

// A connection's buffers come from pools: a connection per request (no
// keep-alive) otherwise makes 8 KiB of garbage each, and at a few
// thousand connections a second the collector's work per connection
// passed the cost of serving its request.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

// release gives the buffers back once nothing can use them: the last
// request's body is shut to whoever still holds it (a transport's
// goroutine reads it through br) before br goes.
func (cn *conn) release() {
	if cn.body != nil {
		cn.body.shut()
	}
	cn.br.Reset(nil)
	readers.Put(cn.br)
	cn.bw.Reset(nil)
	writers.Put(cn.bw)
	cn.br, cn.bw = nil, nil
}

// prefixed reads what a bufio.Reader of the caller still holds, then
// hands the connection's reads back to the socket itself.
type prefixed struct {
	br *bufio.Reader
	cn *conn
}

func (p *prefixed) Read(b []byte) (int, error) {
	if p.br.Buffered() == 0 {
		p.cn.lr.r = p.cn.c
		return p.cn.c.Read(b)
	}
	return p.br.Read(b[:min(len(b), p.br.Buffered())])
}

func (s *Server) maxHeader() int64 {
	if s.MaxHeaderBytes > 0 {
		return int64(s.MaxHeaderBytes)
	}
	return 1 << 20
}

// serve is the request loop; it reports whether the connection was
// hijacked.
func (cn *conn) serve() bool {
	for {
		if cn.br.Buffered() == 0 {
			// The idle deadline moves at most once a second: a deadline
			// update per request is a cost for a bound this coarse. It
			// stays while the request is served (it is far off), moved on
			// by the body's reads (an upload may last longer).
			cn.moveIdleDeadline()
		}
		// The line and headers may use the limit plus what net/http
		// allows beyond it for the request line.
		cn.lr.remaining = cn.s.maxHeader() + 4096
		cn.inMark = cn.lr.total - int64(cn.br.Buffered())
		cn.outMark = cn.wc.total + int64(cn.bw.Buffered())
		req, err := cn.parser.ReadRequest(cn.br, cn.tmpl)
		cn.lr.remaining = -1
		cn.markRead()
		if err != nil {
			cn.badRequest(err)
			return false
		}
		if msg := validate(req); msg != "" {
			cn.reply(req, http.StatusBadRequest, msg)
			return false
		}
		if !cn.one(req) {
			return cn.w.hijacked
		}
	}
}

// validate applies the checks net/http's server makes beyond parsing.
func validate(req *http.Request) string {
	if req.ProtoMajor != 1 {
		return "unsupported protocol version"
	}
	if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != "CONNECT" {
		return "missing required Host header"
	}
	if !validHost(req.Host) {
		return "malformed Host header"
	}
	return ""
}

// validHost rejects a Host with bytes no authority has (as
// httpguts.ValidHostHeader does).
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c <= ' ' || c == 0x7f || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' || c == '{' || c == '|' || c == '}' {
			return false
		}
	}
	return true
}

// one serves one request; false when the connection is done.
func (cn *conn) one(req *http.Request) bool {
	w := &cn.w
	w.reset(req)
	if ex := header.Get(req.Header, "Expect"); ex != "" {
		if !strings.EqualFold(ex, "100-continue") || !req.ProtoAtLeast(1, 1) {
			cn.reply(req, http.StatusExpectationFailed, "")
			return false
		}
		if req.ContentLength != 0 {
			w.cont = &expectContinue{rc: req.Body, w: w}
			req.Body = w.cont
		}
		req.Header.Del("Expect")
	}
	body := &requestBody{rc: req.Body, cn: cn}
	cn.body = body
	req.Body = body
	cn.bodyDone.Store(req.ContentLength == 0)
	w.req = req
	cn.startWatch()
	ok := cn.handle(req)
	cn.stopWatch()
	if w.hijacked {
		return false
	}
	if !ok {
		body.shut()
		return false
	}
	w.finish()
	if cn.bw.Buffered() > 0 {
		YieldBeforeWrite()
	}
	if err := cn.bw.Flush(); err != nil {
		return false
	}
	if w.closeAfter {
		if !cn.bodyDone.Load() {
			// No next request, so what is left of the body is not read
			// away. A reader still inside it (a proxy's upstream body
			// writer waiting for an upload the client holds back: no
			// 100 Continue came) is woken first; then the close lingers,
			// so the client's unread bytes do not reset the connection
			// before it has read the answer.
			cn.closing.Store(true)
			cn.c.SetReadDeadline(aLongTimeAgo)
			body.shut()
			cn.closeWriteAndWait()
		}
		return false
	}
	// Read away what the handler left of the body, as net/http does, so
	// the next request starts where it should.
	if !body.finish() {
		cn.closeWriteAndWait()
		return false
	}
	return cn.ctx.Err() == nil
}

// handle runs the handler; false when it aborted (panic).
func (cn *conn) handle(req *http.Request) (ok bool) {
	defer func() {
		cn.served.Store(true)
		if p := recover(); p != nil {
			ok = false
			if p != http.ErrAbortHandler && cn.s.Logger != nil {
				cn.s.Logger.Error("h1: handler panic", "panic", fmt.Sprint(p), "remote", cn.remote)
			}
		}
	}()
	cn.served.Store(false)
	cn.s.Handler(&cn.w, req, cn.state)
	return true
}

// reply answers a request the server itself refuses, in net/http's words,
// then the connection closes.
func (cn *conn) reply(req *http.Request, code int, msg string) {
	text := strconv.Itoa(code) + " " + http.StatusText(code)
	if msg != "" {
		text += ": " + msg
	}
	switch code {
	case http.StatusNotImplemented:
		// net/http's words for an unsupported transfer coding.
		fmt.Fprintf(cn.bw, "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nUnsupported transfer encoding")
	case http.StatusExpectationFailed:
		fmt.Fprintf(cn.bw, "HTTP/1.1 %s\r\nConnection: close\r\nContent-Length: 0\r\nDate: %s\r\n\r\n", text, date())
	default:
		fmt.Fprintf(cn.bw, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%s", text, text)
	}
	cn.bw.Flush()
	cn.closeWriteAndWait()
}

// closeWriteAndWait sends FIN and reads away what the client still sends
// for a moment, so closing with its bytes unread does not reset the
// connection before the client has read the answer (net/http does the
// same).
func (cn *conn) closeWriteAndWait() {
	if cw, ok := cn.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	cn.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, cn.c)
}

// badRequest answers a request that could not be parsed, unless the
// client simply went away or idled out.
func (cn *conn) badRequest(err error) {
	var ne net.Error
	var pe *ParseError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne) && ne.Timeout():
		return
	case errors.Is(err, errHeaderTooLarge):
		cn.reply(nil, http.StatusRequestHeaderFieldsTooLarge, "")
	case errors.As(err, &pe) && pe.Public:
		cn.reply(nil, pe.Status, pe.Msg)
	case errors.As(err, &pe):
		cn.reply(nil, pe.Status, "")
	case strings.Contains(err.Error(), "connection reset"):
	default:
		cn.reply(nil, http.StatusBadRequest, "")
	}
}

// startWatch arms the client-gone watcher of a request: after WatchAfter,
// if the body has been read, a goroutine waits for the connection to say
// something (EOF: the client left; bytes: a pipelined request, kept).
func (cn *conn) startWatch() {
	d := cn.s.WatchAfter
	if d <= 0 {
		d = 50 * time.Millisecond
	}
	if cn.watchT == nil {
		cn.watchT = time.AfterFunc(d, cn.watch)
		return
	}
	cn.watchT.Reset(d)
}

func (cn *conn) watch() {
	cn.watchMu.Lock()
	defer cn.watchMu.Unlock()
	if cn.watching || cn.served.Load() || cn.hijacked.Load() {
		return
	}
	if !cn.bodyDone.Load() {
		// The handler still reads the body: a client gone shows there.
		// Look again later.
		cn.watchT.Reset(cn.s.WatchAfter + 50*time.Millisecond)
		return
	}
	cn.watching = true
	cn.watchDone = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		_, err := cn.br.Peek(1)
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			cn.cancel()
			cn.gone.fire()
		}
	}(cn.watchDone)
}

// moveIdleDeadline pushes the read deadline IdleTimeout ahead, at most
// once a second (or a quarter of IdleTimeout, when shorter).
func (cn *conn) moveIdleDeadline() {
	if cn.s.IdleTimeout <= 0 || cn.closing.Load() {
		return
	}
	now := time.Now()
	if now.UnixNano()-cn.idleSet.Load() > int64(min(time.Second, cn.s.IdleTimeout/4)) {
		cn.c.SetReadDeadline(now.Add(cn.s.IdleTimeout))
		cn.idleSet.Store(now.UnixNano())
	}
}

// stopWatch ends the watcher before the connection is used again.
func (cn *conn) stopWatch() {
	cn.watchT.Stop()
	cn.watchMu.Lock()
	defer cn.watchMu.Unlock()
	if !cn.watching {
		return
	}
	cn.c.SetReadDeadline(aLongTimeAgo)
	<-cn.watchDone
	cn.c.SetReadDeadline(time.Time{})
	cn.idleSet.Store(0) // the idle deadline is to be set again
	cn.watching = false
}

var aLongTimeAgo = time.Unix(1, 0)

// ClientGone aborts what a request served here is waiting for when its
// client leaves. An upstream exchange registers its abort here instead of
// with context.AfterFunc, which costs two allocations per exchange.
type ClientGone struct {
	mu   sync.Mutex
	f    func()
	gone bool
	done <-chan struct{}

	resp Fields // see Response
}

// Response returns the connection's header space for the response to its
// current request (see Parser.ReadResponseInto): it is free again when
// the connection reads its next request, after this response is written
// out. Only the request's own goroutine may use it.
func (g *ClientGone) Response() *Fields { return &g.resp }

type hookKey struct{}

// Hook returns the ClientGone of a request's context, when ctx is that
// context itself (a context derived with its own deadline or cancel has
// other reasons to end: nil then, use context.AfterFunc).
func Hook(ctx context.Context) *ClientGone {
	g, _ := ctx.Value(hookKey{}).(*ClientGone)
	if g == nil || g.done != ctx.Done() {
		return nil
	}
	return g
}

// Set registers f to run if the client leaves (nil clears it). It returns
// false when the client has left already: f will not run, and a cleared
// f may have run.
func (g *ClientGone) Set(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.f = f
	return !g.gone
}

func (g *ClientGone) fire() {
	g.mu.Lock()
	g.gone = true
	f := g.f
	g.f = nil
	g.mu.Unlock()
	if f != nil {
		f()
	}
}

// requestBody notes the end of the body (the watcher waits for it) and
// shuts the handler out once it has returned: a transport the handler
// gave the body to may still be reading on a goroutine of its own, and
// the connection's next request must not be read from under it.
type requestBody struct {
	rc     io.ReadCloser
	cn     *conn
	mu     sync.Mutex
	eof    bool
	err    error
	closed bool
}

var errBodyClosed = errors.New("h1: request body read after its handler returned")

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	return b.read(p)
}

func (b *requestBody) read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	b.cn.moveIdleDeadline()
	n, err := b.rc.Read(p)
	b.cn.markRead()
	if err != nil {
		b.err = err
		if err == io.EOF {
			b.eof = true
			b.cn.bodyDone.Store(true)
		}
	}
	return n, err
}

func (b *requestBody) Close() error { return nil }

// shut closes the body to whoever still holds it, without reading on.
func (b *requestBody) shut() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

// finish closes the body to the handler and reads away what it left, up
// to maxDiscard; false if the connection cannot serve another request.
func (b *requestBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.err != nil && b.err != io.EOF {
		return false
	}
	if b.eof {
		return true
	}
	return b.discard()
}

// discard reads the rest of the body away (apart from finish: its buffer
// would otherwise be allocated for every request).
func (b *requestBody) discard() bool {
	bp := discardBufs.Get().(*[]byte)
	defer discardBufs.Put(bp)
	var n int64
	for !b.eof {
		m, err := b.read(*bp)
		n += int64(m)
		if err != nil && err != io.EOF || n > maxDiscard {
			return false
		}
	}
	return true
}

var discardBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// expectContinue sends "100 Continue" when the body is first read. That
// read may come from another goroutine than the handler's (a proxy's
// upstream body writer) while the handler writes an answer that came
// early (a 401 or 413 before the upload): mu orders the two writes to
// the connection, and once the final header or a hijack has come
// (done), no 100 goes out.
type expectContinue struct {
	rc   io.ReadCloser
	w    *response
	mu   sync.Mutex
	done bool // sent, or too late to send
	sent bool
}

func (e *expectContinue) Read(p []byte) (int, error) {
	e.mu.Lock()
	if !e.done {
		e.done, e.sent = true, true
		e.w.c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		e.w.c.bw.Flush()
	}
	e.mu.Unlock()
	return e.rc.Read(p)
}

// continueLock holds off a 100 Continue while the response writes to
// the connection; final says no 100 may follow (the final header, a
// hijack). A final answer before any 100 closes the connection after it
// (net/http's rule): the client may hold the body back for good, so it
// cannot be read away to reach a next request. It returns the unlock (a
// no-op without Expect).
func (w *response) continueLock(final bool) func() {
	e := w.cont
	if e == nil {
		return noop
	}
	e.mu.Lock()
	if final && !e.done {
		e.done = true
		w.closeAfter = true
	}
	return e.mu.Unlock
}

func noop() {}

// BodyWithheld reports whether the request expected 100-continue and was
// answered without one: its client may never send the body, so nothing
// should wait to read it.
func (w *response) BodyWithheld() bool {
	e := w.cont
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.done && !e.sent
}

func (e *expectContinue) Close() error { return e.rc.Close() }

// response is the http.ResponseWriter of the connection's current
// request (one per connection, reset per request).
type response struct {
	c           *conn
	req         *http.Request
	cont        *expectContinue // the request's, when it expects 100-continue
	header      http.Header
	own         http.Header // the connection's map, reused per request
	status      int
	wroteHeader bool
	hijacked    bool
	chunked     bool
	bodyless    bool  // HEAD, 204, 304, 1xx: no body whatever is written
	length      int64 // declared Content-Length, -1 none
	written     int64
	closeAfter  bool
}

func (w *response) reset(req *http.Request) {
	clear(w.own)
	w.header = w.own
	w.req, w.cont, w.status, w.wroteHeader, w.hijacked, w.chunked, w.bodyless = req, nil, 0, false, false, false, false
	w.length, w.written = -1, 0
	w.closeAfter = req.Close
}

func (w *response) Header() http.Header { return w.header }

// SetHeader makes h the response's header map, with what was set before
// merged in: a proxy hands over the upstream response's headers instead
// of copying them one by one. h is the response's from then on.
func (w *response) SetHeader(h http.Header) {
	if w.wroteHeader || w.hijacked {
		return
	}
	for k, v := range w.header {
		h[k] = v
	}
	w.header = h
}

func (w *response) WriteHeader(code int) {
	if w.wroteHeader || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	bw := w.c.bw
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An interim response (103 Early Hints): its headers, then wait
		// for the real one.
		defer w.continueLock(false)()
		if code == http.StatusContinue && w.cont != nil {
			// The handler says continue itself: the body's first read
			// must not say it again, and it is said once at most.
			if w.cont.sent {
				return
			}
			w.cont.done, w.cont.sent = true, true
		}
		writeStatus(bw, w.req.ProtoMinor, code)
		// A 1xx has no body: the final answer's framing fields, which a
		// handler may have set already, are not its own (RFC 9110 8.6,
		// net/http leaves them out too).
		for k, vs := range w.header {
			if k == "Content-Length" || k == "Transfer-Encoding" || strings.HasPrefix(k, http.TrailerPrefix) {
				continue
			}
			for _, v := range vs {
				writeField(bw, k, v)
			}
		}
		bw.WriteString("\r\n")
		bw.Flush()
		return
	}
	w.continueLock(true)()
	w.wroteHeader, w.status = true, code
	h := w.header
	w.bodyless = w.req.Method == "HEAD" || code == 204 || code == 304 || code < 200
	if cl := header.Get(h, "Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.length = n
		} else {
			h.Del("Content-Length")
		}
	}
	if strings.EqualFold(header.Get(h, "Connection"), "close") {
		w.closeAfter = true
	}
	switch {
	case w.bodyless || w.length >= 0:
		delete(h, "Transfer-Encoding")
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		h.Set("Transfer-Encoding", "chunked")
	default:
		// HTTP/1.0 and no length: the end of the body is the end of the
		// connection.
		w.closeAfter = true
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{date()}
	}
	// An HTTP/1.0 request keeps its connection only when it asked to
	// (req.Close says so since parsing: the handler may have removed the
	// request's Connection field, as a proxy removes hop-by-hop fields).
	keepAlive10 := !w.req.ProtoAtLeast(1, 1) && !w.closeAfter
	if !w.req.ProtoAtLeast(1, 1) && !keepAlive10 {
		w.closeAfter = true
	}
	switch {
	case keepAlive10:
		h.Set("Connection", "keep-alive")
	case w.closeAfter && w.req.ProtoAtLeast(1, 1):
		// (HTTP/1.0 closes unless told otherwise: nothing to say.)
		h.Set("Connection", "close")
	}
	switch {
	case code == http.StatusNotModified:
		// As net/http: a 304 describes no body of its own.
		delete(h, "Content-Type")
		delete(h, "Content-Length")
	case code == http.StatusNoContent || code < 200:
		// A 204 (or a 101) never has a length (RFC 9110 8.6): one relayed
		// from an endpoint would have a client that trusts it read the
		// next response as this one's body. net/http's server drops it,
		// Envoy's codec refuses a non-zero one from the endpoint.
		delete(h, "Content-Length")
	}
	writeStatus(bw, w.req.ProtoMinor, code)
	writeHeaders(bw, h, true)
	bw.WriteString("\r\n")
}

func (w *response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.bodyless {
		return 0, http.ErrBodyNotAllowed
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	bw := w.c.bw
	if w.chunked {
		if len(p) == 0 {
			return 0, nil
		}
		writeInt(bw, int64(len(p)), 16)
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	w.written += int64(n)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	return n, err
}

// finish ends the response: the last chunk and the trailers, or the
// connection closes when fewer bytes than declared were written.
func (w *response) finish() {
	if !w.wroteHeader {
		if _, ok := w.header["Content-Length"]; !ok {
			w.header.Set("Content-Length", "0")
		}
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked {
		bw := w.c.bw
		bw.WriteString("0\r\n")
		for k, vs := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vs {
					writeField(bw, name, v)
				}
			}
		}
		bw.WriteString("\r\n")
	}
	if w.length >= 0 && w.written < w.length && !w.bodyless {
		w.closeAfter = true
	}
}

func (w *response) Flush() { w.FlushError() }

func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.c.bw.Flush()
}

// SetReadDeadline bounds the reads of the connection (the request body;
// http.ResponseController's), from any goroutine.
func (w *response) SetReadDeadline(t time.Time) error { return w.c.c.SetReadDeadline(t) }

// EnableFullDuplex: this server always lets a handler read the request
// body while it writes the response.
func (w *response) EnableFullDuplex() error { return nil }

func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHeader {
		return nil, nil, errors.New("h1: hijack after the response started")
	}
	// No watcher from here on: one the timer starts while this runs would
	// read the connection the handler now owns.
	w.c.hijacked.Store(true)
	w.c.stopWatch()
	// The connection is the handler's now: no idle deadline of ours.
	w.c.c.SetReadDeadline(time.Time{})
	w.continueLock(true)()
	w.hijacked = true
	return &w.c.wc, bufio.NewReadWriter(w.c.br, w.c.bw), nil
}

// markRead notes what the connection's reads have consumed so far; only
// the goroutine reading br calls it.
func (cn *conn) markRead() { cn.inPos.Store(cn.lr.total - int64(cn.br.Buffered())) }

// WireBytes are the bytes of the current request and of its response on
// the connection so far, as they are on the wire: the head, the body
// with its chunk framing, and after an upgrade what either side sent
// (what Envoy's downstream bytes meter counts, and Istio's
// istio_request_bytes and istio_response_bytes report). A response not
// finished yet counts the end finish will write (a chunked body's last
// chunk and trailers) when ends says it will be finished (false: the
// handler aborts it, or its client is gone). ok is false when w is not
// this server's.
func WireBytes(w http.ResponseWriter, ends bool) (in, out int64, ok bool) {
	r, ok := w.(*response)
	if !ok || r.c.br == nil {
		return 0, 0, false
	}
	cn := r.c
	if r.hijacked {
		// The handler's own reads now (through the hijack's reader),
		// done by the time it asks.
		in = cn.lr.total - int64(cn.br.Buffered()) - cn.inMark
	} else {
		in = cn.inPos.Load() - cn.inMark
	}
	// A 100 Continue another goroutine's body read sends writes under
	// this lock.
	unlock := r.continueLock(false)
	out = cn.wc.total + int64(cn.bw.Buffered()) - cn.outMark
	unlock()
	if !r.wroteHeader && !r.hijacked {
		// finish writes a head; what it will be is not known yet.
		return in, out, true
	}
	if r.chunked && ends {
		out += int64(len("0\r\n\r\n"))
		for k, vs := range r.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vs {
					if writable(name, v) {
						out += int64(len(name) + len(": ") + len(v) + len("\r\n"))
					}
				}
			}
		}
	}
	return in, out, true
}

func writeStatus(bw *bufio.Writer, minor, code int) {
	if minor == 0 {
		bw.WriteString("HTTP/1.0 ")
	} else {
		bw.WriteString("HTTP/1.1 ")
	}
	writeInt(bw, int64(code), 10)
	bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	bw.WriteString(text)
	bw.WriteString("\r\n")
}

// writeHeaders writes fields; trailer declarations (TrailerPrefix) are
// skipped when skipTrailers.
func writeHeaders(bw *bufio.Writer, h http.Header, skipTrailers bool) {
	for k, vs := range h {
		if skipTrailers && strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
}

// writeField writes one header field. A value with CR or LF (the parsers
// on the way in refuse those, so only configuration could bring one) is
// dropped rather than let it split the header.
func writeField(bw *bufio.Writer, k, v string) {
	if !writable(k, v) {
		return
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// writable: writeField writes the field.
func writable(k, v string) bool {
	return strings.IndexByte(v, '\n') < 0 && strings.IndexByte(v, '\r') < 0 && validName(k)
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !isTokenChar(k[i]) {
			return false
		}
	}
	return true
}

func hasToken(v, token string) bool {
	for _, t := range strings.Split(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// date is the Date header value, formatted once a second.
func date() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.sec == now {
		return d.s
	}
	d := &dateValue{sec: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateValue struct {
	sec int64
	s   string
}

var cachedDate atomic.Pointer[dateValue]
