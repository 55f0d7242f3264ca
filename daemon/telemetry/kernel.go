package telemetry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/internal/podns"
)

// drainTick is how long the ring buffer reader waits before it drains
// records the kernel queued without waking it (see km_events_wakeup).
const drainTick = 200 * time.Millisecond

// Run reads the data path's connection events and sweeps its open
// connections every interval until ctx ends.
func (t *Telemetry) Run(ctx context.Context, dp *loader.Datapath) error {
	rd, err := ringbuf.NewReader(dp.Map(loader.MapEvents))
	if err != nil {
		return fmt.Errorf("telemetry: open the event ring buffer: %w", err)
	}
	it, err := dp.NewConnIter()
	if err != nil {
		rd.Close()
		return fmt.Errorf("telemetry: %w", err)
	}
	defer it.Close()
	socks := dp.Map(loader.MapTCPSock)
	if socks == nil {
		rd.Close()
		return fmt.Errorf("telemetry: the data path has no %s", loader.MapTCPSock)
	}
	t.mu.Lock()
	t.iter = it
	t.socks = socks
	t.mu.Unlock()

	done := make(chan error, 1)
	go func() { done <- t.readEvents(rd) }()

	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			rd.Close()
			<-done
			t.mu.Lock()
			t.iter = nil
			t.expirePairs(^uint64(0))
			t.flush()
			t.mu.Unlock()
			return nil
		case err := <-done:
			return fmt.Errorf("telemetry: read events: %w", err)
		case <-tick.C:
			if err := t.Sweep(); err != nil {
				t.log.Warn("telemetry sweep failed", "err", err)
			}
		}
	}
}

// readEvents accounts records as they come. While the ring holds more
// records the reader keeps t.mu and its deadline (each costs a lock or a
// clock read per record otherwise, and a busy node sends tens of thousands
// a second); it lets go when the ring is drained, its next read may block.
func (t *Telemetry) readEvents(rd *ringbuf.Reader) error {
	var rec ringbuf.Record
	var e layout.ConnEvent
	batch := 0
	locked := false
	unlock := func() {
		if locked {
			t.mu.Unlock()
			locked = false
		}
	}
	defer unlock()
	rd.SetDeadline(time.Now().Add(drainTick))
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			if !locked {
				t.mu.Lock()
				locked = true
			}
			if derr := decode(rec.RawSample, &e); derr != nil {
				t.log.Warn("telemetry: bad record", "err", derr)
			} else {
				t.handle(&e)
				batch++
			}
			// Keep access log lines moving under a steady stream.
			if batch >= 256 {
				t.flush()
				batch = 0
				unlock()
			}
			if rec.Remaining == 0 {
				t.expireDue(t.lastEventNs)
				unlock()
				rd.SetDeadline(time.Now().Add(drainTick))
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			if !locked {
				t.mu.Lock()
				locked = true
			}
			t.expireDue(monotonicNs())
			t.flush()
			unlock()
			batch = 0
			rd.SetDeadline(time.Now().Add(drainTick))
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return err
		}
	}
}

// expireDue runs expirePairs at now (kernel clock) when there is
// something to expire and the last run is a while ago: a reader that keeps
// up drains the ring after every few records. While records flow, now is
// the newest record's time, which costs no clock read (monotonicNs is a
// system call, and the reader drains after every few records). Caller
// holds t.mu.
func (t *Telemetry) expireDue(now uint64) {
	if t.waitQ.len() == 0 && t.closedQ.len() == 0 {
		return
	}
	if now < t.lastExpire || now-t.lastExpire < uint64(expireEvery) {
		return
	}
	t.lastExpire = now
	t.expirePairs(now)
}

// expireEvery spaces the reader's expirePairs runs.
const expireEvery = 50 * time.Millisecond

// Fresh sweeps unless the last sweep is at most maxAge old.
func (t *Telemetry) Fresh(maxAge time.Duration) error {
	t.mu.Lock()
	age := time.Since(t.lastSweep)
	t.mu.Unlock()
	if age <= maxAge {
		return nil
	}
	return t.Sweep()
}

// Sweep reports every open connection now (the periodic report; also used
// for a fresh /debug/connections).
func (t *Telemetry) Sweep() error {
	t.sweepMu.Lock()
	defer t.sweepMu.Unlock()
	t.mu.Lock()
	it, socks := t.iter, t.socks
	t.mu.Unlock()
	if it == nil {
		return errors.New("telemetry is not running")
	}
	t.mu.Lock()
	t.startSweep()
	t.mu.Unlock()
	start := monotonicNs()
	seen, err := t.readSnapshots(it, socks)
	if err != nil {
		t.mu.Lock()
		t.abortSweep()
		t.mu.Unlock()
		return err
	}
	t.mu.Lock()
	t.endSweep(seen, start)
	t.lastSweep = time.Now()
	t.mu.Unlock()
	return nil
}

// readSnapshots reads the open ends' records in every enrolled pod's
// namespace and applies them, then returns the ends the kernel has open
// (from km_tcp_sock, which holds every recorded end until its close
// callback: a namespace the sweep could not read hides none of them).
func (t *Telemetry) readSnapshots(it *loader.ConnIter, socks *ebpf.Map) (map[uint64]bool, error) {
	var servers []layout.ConnEvent
	var skipped int
	var firstErr error
	for _, ns := range t.namespaces() {
		var r io.ReadCloser
		open := func() error {
			var err error
			r, err = it.Open()
			return err
		}
		var err error
		if ns == "" {
			err = open()
		} else {
			err = podns.Do(ns, open)
		}
		if err != nil {
			// The pod went between listing and entering it, or its
			// namespace cannot be entered: its ends are reported at
			// their close, and are not taken for closed meanwhile
			// (openEnds does not depend on reaching them).
			if !errors.Is(err, os.ErrNotExist) {
				skipped++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", ns, err)
				}
			}
			continue
		}
		servers, err = t.applySnapshots(r, servers)
		r.Close()
		if err != nil {
			return nil, err
		}
	}
	if skipped > 0 {
		t.log.Warn("telemetry sweep skipped pod namespaces it could not read", "namespaces", skipped, "first", firstErr)
	}
	// After every client record: a server end new to the daemon learns
	// what its client dialled from the client's record.
	t.mu.Lock()
	for i := range servers {
		t.handle(&servers[i])
	}
	t.mu.Unlock()
	return openEnds(socks)
}

// namespaces lists the namespaces to sweep, each once ("" is the
// daemon's own).
func (t *Telemetry) namespaces() []string {
	if t.cfg.Namespaces == nil {
		return []string{""}
	}
	var out []string
	seen := map[string]bool{}
	for _, ns := range t.cfg.Namespaces() {
		if ns != "" && !seen[ns] {
			seen[ns] = true
			out = append(out, ns)
		}
	}
	return out
}

// applySnapshots applies one namespace's records as read, except server
// ends, which it appends to servers for later.
func (t *Telemetry) applySnapshots(r io.Reader, servers []layout.ConnEvent) ([]layout.ConnEvent, error) {
	br := bufio.NewReaderSize(r, 64*recordSize)
	buf := make([]byte, recordSize)
	var e layout.ConnEvent
	for {
		if _, err := io.ReadFull(br, buf); err != nil {
			if errors.Is(err, io.EOF) {
				return servers, nil
			}
			return servers, fmt.Errorf("read connection records: %w", err)
		}
		if err := decode(buf, &e); err != nil {
			return servers, err
		}
		if e.Conn.Role == layout.RoleServer {
			servers = append(servers, e)
			continue
		}
		t.mu.Lock()
		t.handle(&e)
		t.mu.Unlock()
	}
}

// openEnds returns the cookies of the recorded ends still open.
func openEnds(socks *ebpf.Map) (map[uint64]bool, error) {
	var cookie uint64
	var v layout.SockValue
	open := map[uint64]bool{}
	it := socks.Iterate()
	for it.Next(&cookie, &v) {
		if v.Conn.Cookie != 0 && v.Conn.Flags&layout.ConnTelemetry != 0 && v.Conn.Flags&layout.ConnClosed == 0 {
			open[cookie] = true
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("walk %s: %w", loader.MapTCPSock, err)
	}
	return open, nil
}
