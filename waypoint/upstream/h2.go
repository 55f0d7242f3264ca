package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
)

// h2Conns are a cluster's HTTP/2 (h2c prior knowledge) connections, per
// endpoint, each carrying many streams: net/http ClientConns made by the
// cluster's HTTP/2 Transport (its dial counts max_connections), with our
// own choice of connection per request.
//
// Why not the Transport's RoundTrip: it sends a request whose stream the
// endpoint refused (REFUSED_STREAM, or a stream beyond its GOAWAY) again
// by itself whenever the request has no body, with a backoff of 1 s,
// 2 s, 4 s... bounded only by the request's context, which a waypoint
// route often leaves without a timeout. A ClientConn's RoundTrip never
// resends, so the route's retry policy decides, as in Envoy
// (refused-stream, num_retries, other hosts).
type h2Conns struct {
	p     *pools
	mu    sync.Mutex
	hosts map[string]*h2Host

	// Requests pending at max_connections, every stream of the
	// connections taken: they wait for a stream or a connection slot to
	// free up, as Envoy's pool queues them (bounded by
	// max_pending_requests), rather than fail as an overflow. wake is
	// closed (and replaced) when a connection's state changes (a stream
	// ended, it went away, it closed) and someone watched it. Its own
	// lock: net/http runs a ClientConn's state hook synchronously from
	// Reserve and Close, which are called with mu held.
	wmu     sync.Mutex
	wake    chan struct{}
	watched bool
	waiters int64
}

type h2Host struct {
	conns []*http.ClientConn
	// dialing is the connection being opened: requests that find no free
	// stream meanwhile wait for it rather than each open a connection, as
	// Envoy's pool queues them.
	dialing *h2Dial
}

type h2Dial struct {
	done chan struct{} // closed when the connection is in conns, or failed
	// err: why it failed, for its waiters (Envoy fails a connection's
	// pending requests with it); nil when it failed only because the
	// request that opened it ended, which says nothing of the endpoint.
	err error
}

// roundTrip sends req to host on a connection with a free stream,
// opening one when none has.
func (h *h2Conns) roundTrip(ctx context.Context, req *http.Request, host string) (*http.Response, error) {
	for try := 0; ; try++ {
		cc, err := h.get(ctx, host)
		if err != nil {
			return nil, err
		}
		gotConn(ctx, try > 0)
		resp, err := cc.RoundTrip(req)
		if err != nil && try < 2 && notSent(err) {
			// The connection closed or got a GOAWAY between the
			// reservation and the send: nothing went out, so another
			// connection may take it (the HTTP/1.1 pool's stale
			// connection, here). The failed attempt closed the body
			// (unread): the next one needs it from its start.
			if req.Body != nil && req.Body != http.NoBody {
				b := rewind(req)
				if b == nil {
					return nil, err
				}
				r := *req
				r.Body = b
				req = &r
			}
			continue
		}
		return resp, err
	}
}

// notSent reports the error a ClientConn's RoundTrip gives before it
// wrote anything of the request (net/http has no exported value for
// it): no stream could be opened. Not "client conn is closed", which
// comes from the wait for flow control on the body, once the headers
// went out.
func notSent(err error) bool {
	return strings.HasSuffix(err.Error(), "client conn not usable")
}

func (h *h2Conns) get(ctx context.Context, host string) (*http.ClientConn, error) {
	for {
		// Watched before the connections are looked at: a stream that
		// frees up after the look wakes this request.
		wake := h.watch()
		h.mu.Lock()
		if h.hosts == nil {
			h.hosts = map[string]*h2Host{}
		}
		hh := h.hosts[host]
		if hh == nil {
			hh = &h2Host{}
			h.hosts[host] = hh
		}
		live := hh.conns[:0]
		var pick *http.ClientConn
		for _, cc := range hh.conns {
			if cc.Err() != nil {
				cc.Close()
				continue
			}
			live = append(live, cc)
			if pick == nil && cc.Reserve() == nil {
				pick = cc
			}
		}
		clear(hh.conns[len(live):])
		hh.conns = live
		if pick != nil {
			h.mu.Unlock()
			return pick, nil
		}
		if d := hh.dialing; d != nil {
			h.mu.Unlock()
			select {
			case <-d.done:
				if d.err != nil {
					// Not each waiter again, one connect timeout after
					// another.
					return nil, d.err
				}
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		if st := h.p.c.state.Load(); h.p.c.connections.Load() >= st.limits.connections {
			// At max_connections. An idle connection to another endpoint
			// gives its slot up to this one; else wait as a pending
			// request.
			if victim := h.takeIdle(host); victim != nil {
				h.mu.Unlock()
				victim.Close()
				continue
			}
			h.mu.Unlock()
			if err := h.pend(ctx, wake, st.limits.pending); err != nil {
				return nil, err
			}
			continue
		}
		d := &h2Dial{done: make(chan struct{})}
		hh.dialing = d
		h.mu.Unlock()

		cc, err := h.p.c.Transport(true).NewClientConn(ctx, "http", host)
		h.mu.Lock()
		hh.dialing = nil
		overflow := errors.Is(err, ErrOverflow)
		if err != nil && ctx.Err() == nil && !overflow {
			d.err = err
		}
		close(d.done)
		if overflow {
			// Another request took the last slot meanwhile: pending, as
			// the others at the limit.
			h.mu.Unlock()
			continue
		}
		if err == nil {
			cc.SetStateHook(func(*http.ClientConn) { h.signal() })
			if rerr := cc.Reserve(); rerr != nil {
				cc.Close()
				err = rerr
			} else {
				hh.conns = append(hh.conns, cc)
			}
		}
		h.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return cc, nil
	}
}

// watch returns the channel the next change of a connection's state
// closes.
func (h *h2Conns) watch() chan struct{} {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if h.wake == nil {
		h.wake = make(chan struct{})
	}
	h.watched = true
	return h.wake
}

// signal wakes the requests watching the connections' state. It takes
// no lock but wmu (see h2Conns).
func (h *h2Conns) signal() {
	h.wmu.Lock()
	if h.watched {
		close(h.wake)
		h.wake, h.watched = make(chan struct{}), false
	}
	h.wmu.Unlock()
}

// pend waits, as one of at most max pending requests, for wake.
func (h *h2Conns) pend(ctx context.Context, wake chan struct{}, max int64) error {
	h.wmu.Lock()
	if h.waiters >= max {
		h.wmu.Unlock()
		h.p.c.overflows.Add(1)
		return fmt.Errorf("%w: max_pending_requests %d reached", ErrOverflow, max)
	}
	h.waiters++
	h.wmu.Unlock()
	defer func() {
		h.wmu.Lock()
		h.waiters--
		h.wmu.Unlock()
	}()
	select {
	case <-wake:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// takeIdle removes from the pool a connection to another endpoint than
// host with no stream in flight, for its caller to close. Called with mu
// held.
func (h *h2Conns) takeIdle(host string) *http.ClientConn {
	for other, hh := range h.hosts {
		if other == host {
			continue
		}
		for i, cc := range hh.conns {
			if cc.InFlight() == 0 {
				last := len(hh.conns) - 1
				hh.conns[i] = hh.conns[last]
				hh.conns[last] = nil
				hh.conns = hh.conns[:last]
				return cc
			}
		}
	}
	return nil
}

// closeIdle closes the connections with no stream in flight; with
// retire, the busy ones leave the pool too (no new stream goes to them)
// and close themselves once idle (the Transport's idle timeout).
func (h *h2Conns) closeIdle(retire bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for host, hh := range h.hosts {
		live := hh.conns[:0]
		for _, cc := range hh.conns {
			switch {
			case cc.InFlight() == 0 || cc.Err() != nil:
				cc.Close()
			case !retire:
				live = append(live, cc)
			}
		}
		clear(hh.conns[len(live):])
		hh.conns = live
		if len(live) == 0 && hh.dialing == nil {
			delete(h.hosts, host)
		}
	}
}
