package h1

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// tcpPair is a connected loopback pair: ours wrapped by Raw, theirs plain.
func tcpPair(t *testing.T) (ours, theirs net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return Raw(c), s
}

// A kept write goes out from the next Read, which then returns the
// answer; the peer sees exactly the bytes, in order.
func TestDeferWriteSendsFromTheRead(t *testing.T) {
	ours, theirs := tcpPair(t)
	if !DeferWrite(ours) {
		t.Fatal("a socket refused DeferWrite")
	}
	req := []byte("ping")
	if n, err := ours.Write(req); n != 4 || err != nil {
		t.Fatalf("write %d %v", n, err)
	}
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 4)
		io.ReadFull(theirs, b)
		got <- string(b)
		theirs.Write([]byte("pong"))
	}()
	select {
	case s := <-got:
		t.Fatalf("the peer got %q before the read", s)
	case <-time.After(50 * time.Millisecond):
	}
	b := make([]byte, 16)
	n, err := ours.Read(b)
	if err != nil || string(b[:n]) != "pong" {
		t.Fatalf("read %q %v", b[:n], err)
	}
	if s := <-got; s != "ping" {
		t.Fatalf("the peer got %q", s)
	}
	// The next exchange is an ordinary one.
	go theirs.Write([]byte("again"))
	if n, err = ours.Read(b); err != nil || string(b[:n]) != "again" {
		t.Fatalf("read %q %v", b[:n], err)
	}
}

// More than the socket takes at once: the rest is sent waiting for room,
// then the answer read.
func TestDeferWriteFullSocket(t *testing.T) {
	ours, theirs := tcpPair(t)
	big := bytes.Repeat([]byte("x"), 16<<20)
	DeferWrite(ours)
	ours.Write(big)
	go func() {
		io.CopyN(io.Discard, theirs, int64(len(big)))
		theirs.Write([]byte("done"))
	}()
	ours.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 16)
	n, err := ours.Read(b)
	if err != nil || string(b[:n]) != "done" {
		t.Fatalf("read %q %v", b[:n], err)
	}
}

// A peer that is gone: the send fails and the Read says so (a reset or
// broken pipe, which the upstream client retries as a stale connection),
// or the read meets the close; it never hangs.
func TestDeferWritePeerGone(t *testing.T) {
	ours, theirs := tcpPair(t)
	theirs.(*net.TCPConn).SetLinger(0)
	theirs.Close()
	time.Sleep(20 * time.Millisecond)
	DeferWrite(ours)
	ours.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	ours.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := ours.Read(make([]byte, 16))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the peer left: %v", err)
	}
	if s := err.Error(); err != io.EOF && !strings.Contains(s, "reset") && !strings.Contains(s, "broken pipe") {
		t.Errorf("error %v, want EOF, a reset or a broken pipe", err)
	}
}

// A deadline still ends the wait for an answer that never comes.
func TestDeferWriteDeadline(t *testing.T) {
	ours, theirs := tcpPair(t)
	DeferWrite(ours)
	ours.Write([]byte("ping"))
	ours.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := ours.Read(make([]byte, 16))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %v, want the deadline", err)
	}
	b := make([]byte, 4)
	theirs.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(theirs, b); err != nil || string(b) != "ping" {
		t.Fatalf("the peer got %q %v", b, err)
	}
}
