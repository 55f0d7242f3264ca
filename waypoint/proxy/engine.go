// Package proxy is kmesh-waypoint's engine: it runs a model.Snapshot.
//
// Connections arrive on the snapshot's listeners, redirected there by the
// kernel with a PROXY protocol v2 header naming the client and the
// destination it dialled. The engine reads the header (go-proxyproto),
// sniffs the protocol when the listener's chain selector needs it, picks
// a filter chain and runs it. HTTP chains: HTTP/1.x is served by package
// h1's server on the goroutine that accepted the connection, h2c (prior
// knowledge) by net/http's; one handler routes (package route), runs the
// fault and CORS filters (package filter) and forwards upstream with
// Envoy's retry, timeout and mirroring semantics (package upstream holds
// the clusters). TCP chains are proxied byte for byte. Deny chains are
// refused with their reason logged.
//
// Apply swaps the whole configuration at once. Listeners open and close
// to match the snapshot's addresses; clusters keep their runtime state by
// name; requests and connections in flight finish on the configuration
// they started with.
//
// The binary's use:
//
//	e := proxy.New(proxy.Options{Logger: log, AccessLog: w})
//	e.Register(registry)        // Istio's metrics and kmesh_waypoint_*
//	err := e.Apply(snapshot)    // every time the configuration changes
//	e.Ready(), e.Stats()        // for /ready and the admin pages
//	e.Close()                   // at shutdown
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/waypoint/filter"
	"github.com/kmesh-go/kmesh/waypoint/h1"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/telemetry"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

// DefaultHeaderTimeout bounds the wait for a connection's PROXY header
// and first bytes when the listener sets no HeaderTimeout.
const DefaultHeaderTimeout = 5 * time.Second

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// HeaderTimeout is the default of Listener.HeaderTimeout (0:
	// DefaultHeaderTimeout).
	HeaderTimeout time.Duration
	// AccessLog gets one JSON line per request and TCP connection; nil:
	// off.
	AccessLog io.Writer
	// MaxSeries caps label sets of the Istio metrics (0:
	// telemetry.DefaultMaxSeries).
	MaxSeries int
	// BufferLimit is how much of a request body is kept for retries and
	// mirrors (0: DefaultBufferLimit).
	BufferLimit int
	// Listen opens a listener (nil: listen, which turns TCP keep-alive
	// off on accepted connections). Tests use it to see binds.
	Listen func(network, addr string) (net.Listener, error)
	// NetHTTPUpstream sends HTTP/1.1 upstream through net/http's Transport
	// instead of the clusters' own pools, and NetHTTPServer serves HTTP/1
	// downstream with net/http's Server instead of package h1's: the
	// standard library's path, kept for comparison (see package h1 for
	// why it is not the default).
	NetHTTPUpstream bool
	NetHTTPServer   bool
}

// Engine runs snapshots. Its methods are safe for concurrent use.
type Engine struct {
	opts     Options
	log      *slog.Logger
	cfg      atomic.Pointer[config]
	gen      atomic.Uint64
	clusters *upstream.Set
	metrics  *telemetry.Metrics
	access   *telemetry.AccessLog
	faults   filter.Faults
	stats    *stats
	srv      *http.Server // h2c
	h1       *h1.Server   // HTTP/1.x
	handoff  *handoff
	warn     rateLimiter

	mu        sync.Mutex // serialises Apply and Close
	listeners map[string]*boundListener
	closed    atomic.Bool
	// draining: Drain was called; every HTTP/1 response is a
	// connection's last.
	draining atomic.Bool
	// conns are the connections Close must end (see trackConn).
	connsWG sync.WaitGroup
	connsMu sync.Mutex
	conns   map[net.Conn]struct{}
}

// boundListener is one listening socket and its accept loop.
type boundListener struct {
	key  string
	ln   net.Listener
	addr netip.AddrPort
	done chan struct{}
}

// New makes an engine with no configuration (not ready until Apply).
func New(o Options) *Engine {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.BufferLimit <= 0 {
		o.BufferLimit = DefaultBufferLimit
	}
	if o.Listen == nil {
		o.Listen = listen
	}
	e := &Engine{
		opts:      o,
		log:       o.Logger,
		clusters:  upstream.NewSet(o.Logger),
		metrics:   telemetry.NewMetrics(o.MaxSeries),
		access:    telemetry.NewAccessLog(o.AccessLog),
		stats:     newStats(),
		listeners: map[string]*boundListener{},
		conns:     map[net.Conn]struct{}{},
	}
	e.clusters.NetHTTP1 = o.NetHTTPUpstream
	e.handoff = newHandoff()
	e.srv = e.newServer()
	e.h1 = e.newH1Server()
	go func() {
		if err := e.srv.Serve(e.handoff); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			e.log.Error("waypoint HTTP server stopped", "err", err)
		}
	}()
	return e
}

// Apply makes s the running configuration. It opens the listeners s has
// that are not open yet, swaps the configuration, then closes the
// listeners s no longer has. On error (an invalid snapshot, an address
// that cannot be bound) nothing changes.
func (e *Engine) Apply(s *model.Snapshot) error {
	cfg, err := compile(s)
	if err != nil {
		return fmt.Errorf("snapshot %q: %w", versionOf(s), err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return errors.New("engine closed")
	}
	// Bind first: a failure leaves everything as it was.
	var opened []*boundListener
	for key := range cfg.listeners {
		if e.listeners[key] != nil {
			continue
		}
		ln, err := e.opts.Listen("tcp", key)
		if err != nil {
			for _, b := range opened {
				b.ln.Close()
			}
			return fmt.Errorf("snapshot %q: listen on %s: %w", versionOf(s), key, err)
		}
		addr, _ := netip.ParseAddrPort(ln.Addr().String())
		opened = append(opened, &boundListener{key: key, ln: ln, addr: addr, done: make(chan struct{})})
	}
	cfg.clusters = e.clusters.Update(s.Clusters)
	cfg.gen = e.gen.Add(1)
	e.cfg.Store(cfg)
	e.metrics.Reset()
	for _, b := range opened {
		e.listeners[b.key] = b
		go e.acceptLoop(b)
	}
	for key, b := range e.listeners {
		if _, keep := cfg.listeners[key]; !keep {
			b.ln.Close()
			<-b.done
			delete(e.listeners, key)
		}
	}
	e.stats.applied(len(s.Unsupported))
	e.log.Info("waypoint configuration applied", "version", s.Version, "listeners", len(cfg.listeners), "clusters", len(cfg.clusters))
	return nil
}

func versionOf(s *model.Snapshot) string {
	if s == nil {
		return ""
	}
	return s.Version
}

// Ready reports whether a snapshot runs and its listeners are open.
func (e *Engine) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	cfg := e.cfg.Load()
	if cfg == nil || e.closed.Load() || e.draining.Load() {
		return false
	}
	for key := range cfg.listeners {
		if e.listeners[key] == nil {
			return false
		}
	}
	return true
}

// Snapshot is the running snapshot (nil before the first Apply).
func (e *Engine) Snapshot() *model.Snapshot {
	if cfg := e.cfg.Load(); cfg != nil {
		return cfg.snap
	}
	return nil
}

// ListenerAddrs maps each listener's name to the address it is bound to
// (the port the system chose for a configured port 0).
func (e *Engine) ListenerAddrs() map[string]netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]netip.AddrPort{}
	cfg := e.cfg.Load()
	if cfg == nil {
		return out
	}
	for key, lc := range cfg.listeners {
		if b := e.listeners[key]; b != nil {
			out[lc.m.Name] = b.addr
		}
	}
	return out
}

// Clusters lists the clusters with runtime state.
func (e *Engine) Clusters() []string { return e.clusters.Names() }

// ClusterStats are the breaker counters of each cluster.
func (e *Engine) ClusterStats() map[string]upstream.Stats {
	cfg := e.cfg.Load()
	out := map[string]upstream.Stats{}
	if cfg == nil {
		return out
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.clusters)) {
		out[name] = cfg.clusters[name].Stats()
	}
	return out
}

// Register adds the engine's metrics (Istio's and kmesh_waypoint_*) to
// reg.
func (e *Engine) Register(reg prometheus.Registerer) error {
	if err := e.metrics.Register(reg); err != nil {
		return err
	}
	return e.stats.register(reg, e)
}

// Drain is the start of a graceful stop (a pod's SIGTERM): the listeners
// close, so the kernel's next connects go to another waypoint pod; each
// HTTP/1 connection gets Connection: close on its next response, h2c ones
// a GOAWAY, and TCP connections run to their end. It returns when no
// connection is left or ctx ends; Close then ends whatever remains.
func (e *Engine) Drain(ctx context.Context) {
	e.draining.Store(true)
	e.mu.Lock()
	for key, b := range e.listeners {
		b.ln.Close()
		<-b.done
		delete(e.listeners, key)
	}
	e.mu.Unlock()
	h2done := make(chan struct{})
	go func() {
		defer close(h2done)
		_ = e.srv.Shutdown(ctx)
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		e.connsMu.Lock()
		n := len(e.conns)
		e.connsMu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	select {
	case <-h2done:
	case <-ctx.Done():
	}
}

// Close stops listening, closes every connection and the pools.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed.Swap(true) {
		e.mu.Unlock()
		return nil
	}
	for key, b := range e.listeners {
		b.ln.Close()
		<-b.done
		delete(e.listeners, key)
	}
	e.mu.Unlock()
	err := e.srv.Close()
	e.connsMu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.connsMu.Unlock()
	e.connsWG.Wait()
	e.clusters.Close()
	return err
}

// trackConn registers a connection that is not net/http's (before its
// header, HTTP/1, TCP proxy) so Close can end it.
func (e *Engine) trackConn(c net.Conn) bool {
	e.connsMu.Lock()
	defer e.connsMu.Unlock()
	if e.closed.Load() {
		return false
	}
	e.conns[c] = struct{}{}
	e.connsWG.Add(1)
	return true
}

func (e *Engine) untrackConn(c net.Conn) {
	e.connsMu.Lock()
	delete(e.conns, c)
	e.connsMu.Unlock()
	e.connsWG.Done()
}

// rateLimiter lets one log line through per interval and counts the
// others, so a flood of bad connections cannot flood the log.
type rateLimiter struct {
	last       atomic.Int64
	suppressed atomic.Int64
}

const logInterval = time.Second

// allow reports whether to log now, and how many lines were suppressed
// since the last one.
func (r *rateLimiter) allow() (bool, int64) {
	now := time.Now().UnixNano()
	last := r.last.Load()
	if now-last < int64(logInterval) || !r.last.CompareAndSwap(last, now) {
		r.suppressed.Add(1)
		return false, 0
	}
	return true, r.suppressed.Swap(0)
}

// listen opens a listening socket whose accepted connections get no TCP
// keep-alive, as Envoy's listeners by default: net.Listen's turn it on
// with four setsockopt calls on every connection accepted (measured: a
// new connection per request, see the engine's README). A departed client
// is noticed by its idle timeout.
func listen(network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), network, addr)
}
