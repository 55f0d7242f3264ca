package testbed

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// fatalTB records failures; Fatal ends the calling goroutine as
// testing.T's does, without failing the real test.
type fatalTB struct {
	testing.TB
	fatals, errors atomic.Int32
}

func (f *fatalTB) Helper()               {}
func (f *fatalTB) Errorf(string, ...any) { f.errors.Add(1) }
func (f *fatalTB) Fatal(...any)          { f.fatals.Add(1); runtime.Goexit() }
func (f *fatalTB) Fatalf(string, ...any) { f.fatals.Add(1); runtime.Goexit() }

// eofReader reports when the stream's reader reached its end.
type eofReader struct {
	r   io.Reader
	eof atomic.Bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		e.eof.Store(true)
	}
	return n, err
}

// A during that fails the test (t.Fatal, as a restart that cannot reopen
// the data path does) must not leave the stream running past the test:
// the writer would go on at full speed into the next tests and, once the
// fixture closes the connection, log on a finished test (a panic).
func TestStreamAcrossStopsWhenDuringFails(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	tb := &fatalTB{TB: t}
	r := &eofReader{r: s}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StreamAcross(tb, c.(*net.TCPConn), r, 4096, func() {
			time.Sleep(20 * time.Millisecond)
			tb.Fatal("restart failed")
		})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("StreamAcross did not return")
	}
	if tb.fatals.Load() != 1 {
		t.Fatalf("fatals %d, want the during's one", tb.fatals.Load())
	}
	// The writer half-closed and the reader got to the end before
	// StreamAcross gave the failure back.
	if !r.eof.Load() {
		t.Fatal("the stream is still running after during failed")
	}
}
