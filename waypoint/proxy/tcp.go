package proxy

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/telemetry"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

// DefaultTCPIdleTimeout is Envoy's tcp_proxy idle timeout.
const DefaultTCPIdleTimeout = time.Hour

// tcpIdleDefault is DefaultTCPIdleTimeout, shortened by tests.
var tcpIdleDefault = DefaultTCPIdleTimeout

// proxyTCP forwards a connection's bytes to an endpoint of the chain's
// cluster and back, passing half-closes on, until both directions are
// done, the idle timeout or the maximum duration.
//
// Bytes are copied in user space, not spliced: with the kernel's
// same-node acceleration a peer's data can sit where splice(2) does not
// look (see docs/datapath.md, same-node acceleration).
func (e *Engine) proxyTCP(c *proxiedConn, cs *connState, cfg *config, ch *chain) {
	start := time.Now()
	tp := ch.m.TCP
	defer c.Close()

	rec := tcpRecord{e: e, cfg: cfg, cs: cs, ch: ch, start: start}
	pick := upstream.PickOptions{OrigDst: cs.info.Destination}
	if tp.HashSourceIP && cs.info.Source.IsValid() {
		// As the HTTP path's hash on the source: the PROXY header's.
		pick.Hash, pick.HasHash = upstream.HashKey(cs.info.Source.Addr().String()), true
	}
	// Envoy's max_connect_attempts: a failed connect (refused, reset or
	// timed out) is tried again, the cluster and host picked again, until
	// the attempts are used up. The UF of a failed attempt stays on the
	// connection's record, as Envoy's response flag does.
	var cl *upstream.Cluster
	var up net.Conn
	for attempt := uint32(1); ; attempt++ {
		name := tp.Cluster
		if w := tp.Weighted; w != nil && len(w.Clusters) > 0 {
			name = w.Clusters[pickWeighted(w)].Name
		}
		rec.cluster, rec.cl, rec.host = name, nil, nil
		cl = cfg.clusters[name]
		if cl == nil {
			rec.flags |= flagNC
			rec.done(nil)
			return
		}
		rec.cl = cl
		host, err := cl.Pick(&pick)
		if err != nil {
			rec.flags |= flagUH
			rec.done(nil)
			return
		}
		rec.host = host
		up, err = cl.Dial(context.Background(), host)
		if err == nil {
			break
		}
		if errors.Is(err, upstream.ErrOverflow) {
			rec.flags |= flagUO
			rec.done(nil)
			return
		}
		cl.ReportLocal(host, upstream.ConnectFailed)
		rec.flags |= flagUF
		if attempt >= max(tp.MaxConnectAttempts, 1) {
			rec.done(nil)
			return
		}
	}
	// Envoy's tcp_proxy: a connection made is the whole exchange's success.
	cl.ReportLocal(rec.host, upstream.ConnectedFinal)
	defer up.Close()
	series := rec.series()
	series.Opened.Inc()

	idle := tp.IdleTimeout
	if idle == 0 {
		idle = tcpIdleDefault
	}
	wd := newWatchdog(idle, tp.MaxConnectionDuration, func() { c.Close(); up.Close() })
	defer wd.stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rec.received = pipe(up, c, wd, series.Received)
	}()
	rec.sent = pipe(c, up, wd, series.Sent)
	wg.Wait()
	rec.done(series)
}

// pipe copies src to dst until src ends, then half-closes dst (the FIN
// goes on); on an error both ends are closed. It returns the bytes copied,
// counted into bytes as they go: a long-lived connection's traffic shows
// in the metrics while it lasts (Istio reports open connections every
// tcp_reporting_duration; here the counter is always current).
func pipe(dst, src net.Conn, wd *watchdog, bytes interface{ Add(float64) }) int64 {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			wd.touch()
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			bytes.Add(float64(w))
			if werr != nil {
				src.Close()
				dst.Close()
				return n
			}
		}
		if rerr == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return n
			}
			dst.Close()
			return n
		}
		if rerr != nil {
			src.Close()
			dst.Close()
			return n
		}
	}
}

// watchdog closes a connection after idle time without a byte either way,
// or after its maximum duration; it wakes only at those deadlines, not per
// read. idle < 0 turns the idle check off; with no maximum either there is
// no watchdog at all (nil: its methods do nothing).
type watchdog struct {
	idle     time.Duration
	last     atomic.Int64
	maxUntil time.Time
	t        *time.Timer
	fire     func()
	mu       sync.Mutex
	stopped  bool
}

func newWatchdog(idle, maxDuration time.Duration, fire func()) *watchdog {
	if idle < 0 && maxDuration <= 0 {
		return nil
	}
	w := &watchdog{idle: idle, fire: fire}
	w.touch()
	first := idle
	if maxDuration > 0 {
		w.maxUntil = time.Now().Add(maxDuration)
		if first < 0 || maxDuration < first {
			first = maxDuration
		}
	}
	w.t = time.AfterFunc(first, w.check)
	return w
}

func (w *watchdog) touch() {
	if w != nil {
		w.last.Store(time.Now().UnixNano())
	}
}

func (w *watchdog) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	now := time.Now()
	if !w.maxUntil.IsZero() && !now.Before(w.maxUntil) {
		w.fire()
		return
	}
	next := w.maxUntil
	if w.idle >= 0 {
		next = time.Unix(0, w.last.Load()).Add(w.idle)
		if !now.Before(next) {
			w.fire()
			return
		}
		if !w.maxUntil.IsZero() && w.maxUntil.Before(next) {
			next = w.maxUntil
		}
	}
	w.t.Reset(next.Sub(now))
}

func (w *watchdog) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}

// tcpRecord accounts one proxied connection.
type tcpRecord struct {
	e              *Engine
	cfg            *config
	cs             *connState
	ch             *chain
	cl             *upstream.Cluster
	host           *upstream.Host
	cluster        string
	start          time.Time
	flags          flags
	sent, received int64
}

func (r *tcpRecord) key() telemetry.TCPKey {
	k := telemetry.TCPKey{Source: r.cfg.snap.Peers.Lookup(r.cs.peer.Addr()), Service: &r.ch.m.Service, Flags: r.flags.String()}
	if r.cl != nil {
		if m := r.cl.Model(); m.Service.Hostname != "" {
			k.Service = &m.Service
		}
	}
	if r.host != nil {
		k.Dest = r.cfg.snap.Peers.Lookup(r.host.Addr.Addr())
	}
	return k
}

func (r *tcpRecord) series() *telemetry.TCPSeries {
	k := r.key()
	return r.e.metrics.TCP(&k)
}

// done counts the connection closed (opened too when it never got an
// upstream; its bytes were counted by pipe) and writes its access log
// line.
func (r *tcpRecord) done(s *telemetry.TCPSeries) {
	if s == nil {
		s = r.series()
		s.Opened.Inc()
	}
	s.Closed.Inc()
	if r.e.access == nil {
		return
	}
	// No Protocol: Envoy's %PROTOCOL% is unset for a TCP connection.
	e := telemetry.Entry{Start: r.start, Flags: r.flags.String(), BytesReceived: r.received, BytesSent: r.sent,
		Duration: time.Since(r.start), UpstreamCluster: r.cluster, Downstream: r.cs.info.Source.String(), OriginalDst: r.cs.info.Destination.String()}
	if r.host != nil {
		e.UpstreamHost = r.host.Key
	}
	r.e.access.Write(&e)
}

// denyConn refuses a connection of a Deny chain: an HTTP client gets the
// Deny's status (the HTTP server answers it, see serveHTTP), anything else
// is closed. The reason is logged either way.
func (e *Engine) denyConn(c *proxiedConn, cs *connState, ch *chain) (handedOver bool) {
	if cs.info.Protocol == "" {
		// Not sniffed yet: look, so an HTTP client gets an answer rather
		// than a closed connection.
		c.SetReadDeadline(deadlineFrom(e.opts.HeaderTimeout))
		if c.br != nil {
			// Not detected in time: closed below like any non-HTTP client.
			cs.info.Protocol, c.br, _ = e.sniff(c.Conn, c.br, false)
		}
		c.SetReadDeadline(time.Time{})
	}
	switch cs.info.Protocol {
	case model.ProtocolHTTP1, model.ProtocolHTTP10, model.ProtocolHTTP2:
		return e.serveHTTPConn(c, cs)
	}
	e.stats.denied.WithLabelValues("chain").Inc()
	if ok, suppressed := e.warn.allow(); ok {
		e.log.Warn("waypoint: connection denied (fail closed)", "reason", ch.m.Deny.Reason, "peer", cs.peer,
			"destination", cs.info.Destination, "suppressed", suppressed)
	}
	c.Close()
	return false
}

// pickWeighted draws a cluster of a split by weight.
func pickWeighted(w *model.WeightedClusters) int {
	total := uint64(w.Total)
	if total == 0 {
		for _, c := range w.Clusters {
			total += uint64(c.Weight)
		}
	}
	if total == 0 {
		return 0
	}
	x := rand.Uint64N(total)
	for i, c := range w.Clusters {
		if x < uint64(c.Weight) {
			return i
		}
		x -= uint64(c.Weight)
	}
	// Total above the sum of weights: Envoy's remainder goes nowhere;
	// the last cluster takes it here.
	return len(w.Clusters) - 1
}
