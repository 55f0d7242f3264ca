package proxy

import (
	"errors"
	"io"
	"sync"
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
// goroutine); reads of the source hold mu, and what any attempt reads from
// the source is appended to the copy first, so the next attempt misses
// nothing.
type requestBody struct {
	src   io.ReadCloser
	keep  bool
	limit int
	onEOF func()

	mu       sync.Mutex
	buf      []byte
	n        int64
	overflow bool  // the copy was dropped: the body cannot be replayed
	eof      bool  // the source is done
	err      error // the source failed (the client went away)
}

var errAttemptClosed = errors.New("request body: attempt abandoned")

// attempt returns a reader of the whole body for one upstream attempt.
func (b *requestBody) attempt() *bodyReader { return &bodyReader{b: b} }

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
	closed bool
}

var errNotReplayable = errors.New("request body: not kept for another attempt")

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.closed {
		return 0, errAttemptClosed
	}
	if r.off < int64(len(b.buf)) {
		n := copy(p, b.buf[r.off:])
		r.off += int64(n)
		return n, nil
	}
	if r.off != b.n {
		// What this reader needs next was dropped from the copy (retries
		// never start from a dropped copy; this is an abandoned attempt).
		return 0, errNotReplayable
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.src.Read(p)
	b.n += int64(n)
	r.off += int64(n)
	if n > 0 && b.keep && !b.overflow {
		if len(b.buf)+n > b.limit {
			b.overflow, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	switch {
	case err == io.EOF:
		b.eof = true
		if b.onEOF != nil {
			b.onEOF()
		}
	case err != nil:
		b.err = err
	}
	return n, err
}

// Close ends this attempt's reading; the source stays open for others.
func (r *bodyReader) Close() error {
	r.b.mu.Lock()
	r.closed = true
	r.b.mu.Unlock()
	return nil
}
