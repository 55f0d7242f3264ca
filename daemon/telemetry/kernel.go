package telemetry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/kmesh-go/kmesh/bpf/layout"
	"github.com/kmesh-go/kmesh/bpf/loader"
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
	t.mu.Lock()
	t.iter = it
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
	it := t.iter
	t.mu.Unlock()
	if it == nil {
		return errors.New("telemetry is not running")
	}
	t.mu.Lock()
	t.startSweep()
	t.mu.Unlock()
	start := monotonicNs()
	seen, err := t.readSnapshots(it)
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

// readSnapshots walks the connection records (in km_sock) once and
// applies every one.
func (t *Telemetry) readSnapshots(it *loader.ConnIter) (map[uint64]bool, error) {
	r, err := it.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	br := bufio.NewReaderSize(r, 64*recordSize)
	buf := make([]byte, recordSize)
	seen := map[uint64]bool{}
	var e layout.ConnEvent
	var servers []layout.ConnEvent
	for {
		if _, err := io.ReadFull(br, buf); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("read connection records: %w", err)
		}
		if err := decode(buf, &e); err != nil {
			return nil, err
		}
		seen[e.Conn.Cookie] = true
		if e.Conn.Role == layout.RoleServer {
			// After every client record: a server end new to the daemon
			// learns what its client dialled from the client's record.
			servers = append(servers, e)
			continue
		}
		t.mu.Lock()
		t.handle(&e)
		t.mu.Unlock()
	}
	t.mu.Lock()
	for i := range servers {
		t.handle(&servers[i])
	}
	t.mu.Unlock()
	return seen, nil
}
