package telemetry

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
)

// logging reports whether anyone wants access log lines.
func (t *Telemetry) logging() bool { return t.out != nil || t.stream.active() }

// emit writes an access log line and hands it to followers. Caller holds
// t.mu, which keeps lines in order.
func (t *Telemetry) emit(e Entry) {
	line, err := json.Marshal(e)
	if err != nil {
		return
	}
	line = append(line, '\n')
	if t.out != nil {
		if err := t.out.write(line); err != nil && !t.out.failed {
			t.out.failed = true
			t.log.Error("access log write failed; lines are being lost", "err", err)
		}
	}
	t.stream.publish(line)
}

// flush pushes buffered access log lines out. Caller holds t.mu.
func (t *Telemetry) flush() {
	if t.out != nil {
		t.out.flush()
	}
}

// lineWriter buffers access log lines; the reader flushes whenever it has
// drained the ring, so a line is out within a drain tick.
type lineWriter struct {
	w      *bufio.Writer
	failed bool // the first error was logged
}

func newLineWriter(w io.Writer) *lineWriter {
	return &lineWriter{w: bufio.NewWriterSize(w, 64<<10)}
}

func (l *lineWriter) write(b []byte) error {
	_, err := l.w.Write(b)
	return err
}

func (l *lineWriter) flush() { _ = l.w.Flush() }

// stream keeps the most recent lines and fans new ones out to followers
// (/debug/accesslog?follow=1). A follower that cannot keep up loses lines
// (counted) rather than slowing the daemon.
type stream struct {
	mu     sync.Mutex
	recent [][]byte
	next   int
	full   bool
	subs   map[chan []byte]struct{}
	// on is set once anyone asked for lines (recent or followed): from then
	// on lines are built and kept even with no access log configured.
	on      atomic.Bool
	dropped atomic.Uint64
}

func newStream(n int) *stream {
	return &stream{recent: make([][]byte, n), subs: map[chan []byte]struct{}{}}
}

// active reports whether anyone reads the stream (or has asked for recent
// lines), so lines are not built for nobody.
func (s *stream) active() bool { return s.on.Load() }

func (s *stream) publish(line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recent[s.next] = line
	s.next = (s.next + 1) % len(s.recent)
	if s.next == 0 {
		s.full = true
	}
	for ch := range s.subs {
		select {
		case ch <- line:
		default:
			s.dropped.Add(1)
		}
	}
}

// Recent returns the last lines, oldest first.
func (t *Telemetry) Recent() [][]byte {
	s := t.stream
	s.on.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]byte
	if s.full {
		out = append(out, s.recent[s.next:]...)
	}
	out = append(out, s.recent[:s.next]...)
	return out
}

// Follow subscribes to new lines until cancel is called.
func (t *Telemetry) Follow() (lines <-chan []byte, cancel func()) {
	s := t.stream
	ch := make(chan []byte, 4096)
	s.on.Store(true)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}
