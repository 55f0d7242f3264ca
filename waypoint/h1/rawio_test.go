package h1

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is a loopback connection: the client end through Raw, the
// server's end as it is.
func tcpPair(t *testing.T) (client, server net.Conn) {
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
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return Raw(c), s
}

// A held write goes out with the next read, not before, and the answer
// to it is read.
func TestHoldWrite(t *testing.T) {
	c, s := tcpPair(t)
	if !HoldWrite(c) {
		t.Fatal("a socket of Raw cannot hold its write")
	}
	if n, err := c.Write([]byte("ping\n")); n != 5 || err != nil {
		t.Fatalf("held write: %d %v", n, err)
	}
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var one [1]byte
	if _, err := s.Read(one[:]); !isTimeout(err) {
		t.Fatalf("the peer got bytes before the read (%v): the write was not held", err)
	}
	s.SetReadDeadline(time.Time{})
	go func() {
		b := make([]byte, 5)
		if _, err := io.ReadFull(s, b); err == nil && string(b) == "ping\n" {
			s.Write([]byte("pong"))
		}
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "pong" {
		t.Fatalf("answer %q %v", b, err)
	}
	// The hold was for one write: the next goes out at once.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, one[:]); err != nil || one[0] != 'x' {
		t.Fatalf("plain write after the held one: %q %v", one, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A held write larger than the socket takes at once: what is left goes
// out with a write that waits, then the answer is read.
func TestHoldWriteSocketFull(t *testing.T) {
	c, s := tcpPair(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	go func() {
		time.Sleep(50 * time.Millisecond) // the socket fills meanwhile
		n, _ := io.CopyN(io.Discard, s, int64(len(big)))
		if n == int64(len(big)) {
			s.Write([]byte("done"))
		}
	}()
	HoldWrite(c)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "done" {
		t.Fatalf("answer %q %v", b, err)
	}
}

// A peer that closed before the held write went out: the read ends with
// an error (its reset wakes the wait), it does not wait for an answer
// that cannot come.
func TestHoldWritePeerGone(t *testing.T) {
	c, s := tcpPair(t)
	s.Close()
	time.Sleep(20 * time.Millisecond) // the FIN is in before the wait starts
	HoldWrite(c)
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	var b [16]byte
	_, err := c.Read(b[:])
	if err == nil {
		t.Fatal("read from a closed peer succeeded")
	}
	if isTimeout(err) {
		t.Fatalf("the read waited for its deadline (%v): the closed peer was missed", time.Since(start))
	}
}

// Only Raw's sockets hold writes; anything else writes as usual.
func TestHoldWriteOtherConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if HoldWrite(a) {
		t.Fatal("a pipe claims to hold its write")
	}
}
