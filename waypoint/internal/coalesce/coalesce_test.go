package coalesce

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the write calls that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		client.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// The writes a goroutine makes before it blocks leave in one write call,
// in order (one P, so the flusher runs only when the writer blocks, as it
// mostly does with more).
func TestBurstLeavesInOneWrite(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	a, b := tcpPair(t)
	cc := &countingConn{Conn: a}
	c := New(cc)
	frames := [][]byte{[]byte("HEADERS|"), bytes.Repeat([]byte("d"), 1024), []byte("|TRAILERS")}
	var want []byte
	for _, f := range frames {
		if n, err := c.Write(f); n != len(f) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		want = append(want, f...)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(b, got); err != nil { // blocks: the flusher runs
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	if n := cc.writes.Load(); n != 1 {
		t.Fatalf("%d write calls for a burst of %d, want 1", n, len(frames))
	}
}

// Concurrent writers each get their bytes out whole and in their own
// order: nothing is lost, torn or duplicated.
func TestConcurrentWritersKeepTheirBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				rec := []byte{byte('a' + w), byte(i >> 8), byte(i), '\n'}
				if _, err := c.Write(rec); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	next := make([]int, writers)
	buf := make([]byte, 4)
	for range writers * each {
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatal(err)
		}
		w := int(buf[0] - 'a')
		if w < 0 || w >= writers || buf[3] != '\n' {
			t.Fatalf("torn record %q", buf)
		}
		if i := int(buf[1])<<8 | int(buf[2]); i != next[w] {
			t.Fatalf("writer %d: record %d after %d", w, i, next[w]-1)
		}
		next[w]++
	}
	wg.Wait()
}

// A writer far ahead of a peer that does not read waits: at most
// maxPending bytes are held, and all of it arrives once the peer reads.
func TestSlowPeerHoldsBoundedBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	const total = 8 << 20 // far more than the socket buffers take
	chunk := bytes.Repeat([]byte("x"), 16<<10)
	wrote := make(chan error, 1)
	var peak atomic.Int64
	go func() {
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				wrote <- err
				return
			}
			c.mu.Lock()
			if c.pending != nil {
				if n := int64(len(c.pending.b)); n > peak.Load() {
					peak.Store(n)
				}
			}
			c.mu.Unlock()
		}
		wrote <- nil
	}()
	select {
	case err := <-wrote:
		t.Fatalf("%d bytes written to a peer that reads nothing (err %v): Write never waited", total, err)
	case <-time.After(300 * time.Millisecond):
	}
	if p := peak.Load(); p > maxPending {
		t.Fatalf("%d bytes held, more than %d", p, maxPending)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b, total))
	if err != nil || n != total {
		t.Fatalf("peer read %d of %d: %v", n, total, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

// Close writes out what is held before closing: the peer reads every
// byte, then EOF.
func TestCloseWritesOutHeldBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	want := bytes.Repeat([]byte("goaway"), 1000)
	c.Write(want)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, want %d", len(got), len(want))
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// A write error (the peer reset the connection) comes back from a later
// Write, and Flush.
func TestWriteErrorReturnedLater(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	b.(*net.TCPConn).SetLinger(0)
	b.Close() // RST
	time.Sleep(50 * time.Millisecond)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.Write([]byte("frame"))
		if err == nil {
			err = c.Flush()
		}
	}
	if err == nil {
		t.Fatal("no error writing to a reset connection")
	}
	if _, werr := c.Write([]byte("again")); werr == nil {
		t.Fatal("the error did not stick")
	}
}

// Close returns at once, even with bytes held for a peer that does not
// read (its callers close connections one after another under their
// locks); a blocked Read ends as on a closed connection, and the socket
// itself closes within closeGrace.
func TestCloseDoesNotWaitForHeldBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	chunk := bytes.Repeat([]byte("x"), 16<<10)
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	time.Sleep(200 * time.Millisecond) // socket buffers full, the writer waiting
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > closeGrace/5 {
		t.Fatalf("Close took %v with a stuck peer", d)
	}
	select {
	case <-filled:
	case <-time.After(time.Second):
		t.Fatal("the waiting writer was not released by Close")
	}
	select {
	case err := <-read:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("a blocked Read was not ended by Close")
	}
	// The socket closes once the held bytes are given up on.
	time.Sleep(closeGrace + 100*time.Millisecond)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, b); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the peer's read ended with %v, not the connection's end", err)
	}
}

// A connection holds no buffer between bursts: many idle HTTP/2
// connections cost nothing here.
func TestIdleConnectionHoldsNoBuffer(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	msg := bytes.Repeat([]byte("f"), 3000)
	for range 3 {
		c.Write(msg)
		if _, err := io.ReadFull(b, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != nil || c.active {
		t.Fatalf("idle: pending %v, active %v", c.pending != nil, c.active)
	}
}

// CloseWrite sends the FIN after what is held: the peer reads it all,
// then EOF, and can still answer.
func TestCloseWriteAfterHeldBytes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a)
	want := bytes.Repeat([]byte("answer"), 2000)
	c.Write(want)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer read %d of %d bytes before EOF: %v", len(got), len(want), err)
	}
	b.Write([]byte("bye"))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "bye" {
		t.Fatalf("read after CloseWrite: %q %v", buf, err)
	}
}
