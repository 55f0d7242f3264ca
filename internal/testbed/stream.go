package testbed

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// StreamAcross writes from c to s, chunk bytes a write, for as long as
// during runs, then half-closes c and fails the test unless s read every
// byte c wrote, in order. It returns the bytes sent.
func StreamAcross(t testing.TB, c *net.TCPConn, s io.Reader, chunk int, during func()) int64 {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, got int64
	var recvErr error
	sendSum, recvSum := sha256.New(), sha256.New()
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, chunk)
		for i := 0; ; i++ {
			select {
			case <-stop:
				_ = c.CloseWrite()
				return
			default:
			}
			for j := range buf {
				buf[j] = byte(i + j)
			}
			n, err := c.Write(buf)
			if err != nil {
				t.Errorf("write: %v", err)
				return
			}
			sendSum.Write(buf[:n])
			sent += int64(n)
		}
	}()
	go func() {
		defer wg.Done()
		// Plain reads: the wrapper hides the connection's WriteTo.
		got, recvErr = io.Copy(recvSum, struct{ io.Reader }{s})
	}()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// A during that fails the test (t.Fatal ends this goroutine here) must
	// not leave the writer streaming into the tests that follow, nor
	// logging on this one once it has ended (a panic): the stream is
	// stopped and waited for on the way out too.
	halt := sync.OnceFunc(func() { close(stop) })
	checked := false
	defer func() {
		if !checked {
			halt()
			select {
			case <-finished:
			case <-time.After(20 * time.Second):
			}
		}
	}()
	during()
	checked = true
	halt()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream hung")
	}
	if recvErr != nil || got != sent || !bytes.Equal(sendSum.Sum(nil), recvSum.Sum(nil)) {
		t.Fatalf("sent %d, received %d (err %v), checksums equal %v", sent, got, recvErr, bytes.Equal(sendSum.Sum(nil), recvSum.Sum(nil)))
	}
	return sent
}
