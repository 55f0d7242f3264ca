package proxy

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBufferLimit is how much of a request body is kept for retries and
// mirrors (Envoy buffers up to the connection's buffer limit, 1 MiB by
// default); a longer body streams on and is neither retried nor mirrored.
const DefaultBufferLimit = 1 << 20

// requestBody is the downstream request body as upstream attempts read
// it: counted, EOF noticed (the route timeout starts when the request is
// complete, as Envoy's does), and when keep is set copied while it fits
// within limit, so a retry or a mirror can send it again.
//
// Attempts read through their own bodyReader. An abandoned attempt's
// transport may still be reading (its write loop runs on its own
// goroutine, possibly blocked in a read of a client stream that sends
// nothing more): one reader at a time reads the source (readMu), without
// holding mu, so the state stays readable by the request's goroutine; what
// any attempt reads from the source is appended to the copy first, so the
// next attempt misses nothing.
type requestBody struct {
	src   io.ReadCloser
	keep  bool
	limit int
	onEOF func()
	touch func() // activity, for the stream idle timeout (nil: none)

	readMu   sync.Mutex // held while reading the source
	mu       sync.Mutex // guards what follows, never held across a read
	buf      []byte
	pooled   *[]byte // buf's array, from bodyBufs
	sealed   bool    // released: no reader may touch buf any more
	n        int64
	overflow bool      // the copy was dropped: the body cannot be replayed
	eof      bool      // the source is done
	eofAt    time.Time // when it was
	err      error     // the source failed (the client went away)

	// first is the first attempt's reader, made with the body (most
	// requests make one attempt: an allocation saved per request).
	first     bodyReader
	firstUsed bool
}

var errAttemptClosed = errors.New("request body: attempt abandoned")

// bodyBufs hold the copies of small bodies (most): a 1 KiB request body
// kept for retries was a third of the bytes allocated per request.
var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 0, smallBody); return &b }}

const smallBody = 8 << 10

// reserve makes room for a body of known length n to be kept.
func (b *requestBody) reserve(n int64) {
	switch {
	case n <= 0 || n > int64(b.limit):
	case n <= smallBody:
		b.pooled = bodyBufs.Get().(*[]byte)
		b.buf = (*b.pooled)[:0]
	default:
		b.buf = make([]byte, 0, n)
	}
}

// release ends the body's life with its request: after it no reader (an
// abandoned attempt's transport, say) touches the copy, which goes back
// to its pool.
func (b *requestBody) release() {
	b.mu.Lock()
	b.sealed = true
	p := b.pooled
	b.buf, b.pooled = nil, nil
	b.mu.Unlock()
	if p != nil && cap(*p) == smallBody {
		*p = (*p)[:0]
		bodyBufs.Put(p)
	}
}

// attempt returns a reader of the whole body for one upstream attempt.
func (b *requestBody) attempt() *bodyReader {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.firstUsed {
		b.firstUsed = true
		b.first.b = b
		return &b.first
	}
	return &bodyReader{b: b}
}

// replayable reports whether everything read so far is in the copy.
func (b *requestBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.keep && !b.overflow && b.err == nil
}

// complete returns the whole body when it has been read to its end and
// kept.
func (b *requestBody) complete() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf, b.keep && b.eof && !b.overflow && b.err == nil
}

// readAll reads the rest of the source (for mirrors of a request whose
// upstream answered before reading all of it), up to the limit.
func (b *requestBody) readAll() {
	b.mu.Lock()
	r := &bodyReader{b: b, off: b.n}
	b.mu.Unlock()
	var scratch [4096]byte
	for {
		if _, err := r.Read(scratch[:]); err != nil {
			return
		}
		b.mu.Lock()
		stop := b.overflow
		b.mu.Unlock()
		if stop {
			return
		}
	}
}

func (b *requestBody) count() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// completeAt is when the source ended, zero until it has.
func (b *requestBody) completeAt() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eofAt
}

func (b *requestBody) failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

type bodyReader struct {
	b *requestBody
	// off is how much of the body this reader has delivered: from the copy
	// while off is within it, from the source once off reaches what the
	// source has given.
	off    int64
	closed atomic.Bool
}

var errNotReplayable = errors.New("request body: not kept for another attempt")

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.b
	for {
		if r.closed.Load() {
			return 0, errAttemptClosed
		}
		b.mu.Lock()
		if n, done, err := r.fromState(p); done {
			b.mu.Unlock()
			return n, err
		}
		b.mu.Unlock()

		b.readMu.Lock()
		b.mu.Lock()
		caughtUp := r.off == b.n && r.off >= int64(len(b.buf)) && !b.eof && b.err == nil
		b.mu.Unlock()
		if !caughtUp {
			// Another reader got data meanwhile: serve it from the state.
			b.readMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		if n > 0 && b.touch != nil {
			b.touch()
		}
		b.mu.Lock()
		b.n += int64(n)
		r.off += int64(n)
		if n > 0 && b.keep && !b.overflow && !b.sealed {
			if len(b.buf)+n > b.limit {
				b.overflow, b.buf = true, nil
			} else {
				b.buf = append(b.buf, p[:n]...)
			}
		}
		fire := false
		switch {
		case err == io.EOF:
			b.eof, fire = true, b.onEOF != nil
			b.eofAt = time.Now()
		case err != nil:
			b.err = err
		}
		b.mu.Unlock()
		b.readMu.Unlock()
		if fire {
			b.onEOF()
		}
		return n, err
	}
}

// fromState answers a read from the copy or the recorded end, when it can
// (done). Called with mu held.
func (r *bodyReader) fromState(p []byte) (int, bool, error) {
	b := r.b
	if b.sealed {
		return 0, true, errAttemptClosed
	}
	if r.off < int64(len(b.buf)) {
		n := copy(p, b.buf[r.off:])
		r.off += int64(n)
		return n, true, nil
	}
	if r.off != b.n {
		// What this reader needs next was dropped from the copy (retries
		// never start from a dropped copy; this is an abandoned attempt).
		return 0, true, errNotReplayable
	}
	if b.eof {
		return 0, true, io.EOF
	}
	if b.err != nil {
		return 0, true, b.err
	}
	return 0, false, nil
}

// Rewind is the body from its start for another attempt (package
// upstream's HTTP/1.1 client asks for it after a stale connection), when
// it is kept whole; nil otherwise.
func (r *bodyReader) Rewind() io.ReadCloser {
	if !r.b.replayable() {
		return nil
	}
	return r.b.attempt()
}

// Close ends this attempt's reading; the source stays open for others. It
// never waits (a read of this attempt may be blocked on the client).
func (r *bodyReader) Close() error {
	r.closed.Store(true)
	return nil
}
