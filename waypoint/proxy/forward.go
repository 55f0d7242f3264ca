package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/filter"
	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/route"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

var (
	errRouteTimeout   = errors.New("route timeout")
	errPerTryTimeout  = errors.New("per-try timeout")
	errRequestTimeout = errors.New("request timeout")
	errStreamIdle     = errors.New("stream idle timeout")
)

// forward is the router filter: it sends the request to the route's
// cluster, retrying as the route's policy says, and streams the answer
// back.
func (q *request) forward() {
	f := q.rt.Model.Forward
	cl := q.cluster
	if cl == nil {
		q.flags |= flagNC
		status := http.StatusServiceUnavailable
		if f.ClusterNotFoundStatus != 0 {
			status = f.ClusterNotFoundStatus
		}
		q.localReply(status, "cluster not found", "cluster_not_found")
		return
	}
	if !cl.StartRequest() {
		q.flags |= flagUO
		q.localReply(http.StatusServiceUnavailable, bodyOverflow, "upstream_overflow")
		return
	}
	defer cl.EndRequest()

	r := q.r
	upgrade := isUpgrade(r)
	q.stripHopByHop(upgrade)
	var hash uint64
	hasHash := false
	if cl.Hashed() {
		// Only a hashing load balancer asks (so only then is a cookie
		// made). Envoy's router picks the host before it applies the
		// route's header operations and path rewrite
		// (finalizeRequestHeaders): the hash reads the request as the
		// client sent it.
		hash, hasHash = q.hashKey()
	}
	q.applyHeaderOps()
	path, rewritten := q.rt.RewritePathOK(q.path)
	if rewritten && !q.ch.hcm.SuppressEnvoyHeaders {
		// Envoy's router keeps the path as it came (before the rewrite)
		// for the endpoint and for logs (Istio's default access log
		// format reads it); a regex rewrite that failed (left nothing)
		// rewrote nothing, and Envoy adds no header for it.
		r.Header["X-Envoy-Original-Path"] = []string{q.path}
	}
	authority := q.authority
	// Envoy sets the weighted cluster's host first, then the route's over
	// it: the route's rewrite wins when both are there.
	if f.HostRewrite != "" {
		authority = f.HostRewrite
		if f.AppendXForwardedHost {
			appendForwardedHost(r.Header, q.authority)
		}
	} else if q.whost != "" {
		authority = q.whost
	}
	// The response's header operations read the rewritten :path and
	// :authority (Envoy rewrites the request's own headers, after the
	// request's header operations).
	v := q.vars()
	v.Path, v.Authority = path, authority

	policy := f.Retry
	if policy == nil && q.vh != nil {
		policy = q.vh.Model.Retry
	}
	retry := filter.NewRetry(policy)
	var perTry time.Duration
	if policy != nil {
		perTry = policy.PerTryTimeout
	}
	if upgrade {
		retry, perTry = nil, 0
	}
	mirrors := q.mirrorTargets()

	timeout := q.routeTimeout()
	hcm := q.ch.hcm
	idle := f.IdleTimeout
	if idle <= 0 {
		idle = hcm.StreamIdleTimeout
	}
	requestTimeout := hcm.RequestTimeout
	var eof *eofTimers // timers started (or stopped) by the end of the request body
	if timeout > 0 || perTry > 0 || requestTimeout > 0 {
		eof = &eofTimers{}
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		q.body = &requestBody{src: r.Body, keep: retry != nil || len(mirrors) > 0, limit: q.e.opts.BufferLimit}
		if q.body.keep {
			q.body.reserve(r.ContentLength)
		}
		if eof != nil {
			q.body.onEOF = eof.fire
		}
		if r.ProtoMajor == 1 {
			// Stream the answer while the request body still comes in (a
			// gRPC or other bidirectional stream over HTTP/1.1).
			http.NewResponseController(q.w).EnableFullDuplex()
		}
	} else {
		if !upgrade {
			// An upgrade request is never complete: its stream goes on
			// after the 101 (Envoy's HTTP/1 codec does not end it).
			q.complete = time.Now()
		}
		if eof != nil {
			eof.fire()
		}
	}

	ctx := r.Context()
	if timeout > 0 || idle > 0 || requestTimeout > 0 && q.body != nil {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		if timeout > 0 {
			q.routeTimer = &deadline{d: timeout, cancel: cancel, cause: errRouteTimeout}
			defer q.routeTimer.stop()
			eof.add(q.routeTimer)
		}
		if requestTimeout > 0 && q.body != nil {
			// Envoy's request_timeout: the whole request must have come in
			// by then (it stops at the end of the body or when the answer
			// starts).
			cut := cancel
			if rd, ok := q.w.(interface{ SetReadDeadline(time.Time) error }); ok {
				// A read of the client's body is waiting on the client:
				// end it too.
				cut = func(cause error) {
					cancel(cause)
					rd.SetReadDeadline(time.Unix(1, 0))
				}
			}
			q.requestTimer = &deadline{d: requestTimeout, cancel: cut, cause: errRequestTimeout}
			defer q.requestTimer.stop()
			q.requestTimer.arm()
			eof.stopAtEnd(q.requestTimer)
		}
		if idle > 0 {
			// Envoy's stream idle timeout: no byte either way for so long.
			q.idle = newWatchdog(idle, 0, func() { cancel(errStreamIdle) })
			defer q.idle.stop()
			if q.body != nil {
				q.body.touch = q.idle.touch
			}
		}
	}
	if len(mirrors) > 0 {
		if q.body == nil {
			q.sendMirrors(mirrors, path, authority, nil)
		} else {
			defer q.mirrorAfter(mirrors, path, authority)
		}
	}

	var tried []*upstream.Host
	// retrying holds a slot of the cluster's max_retries from the decision
	// to retry to the end of the retried attempt: Envoy counts retries in
	// progress.
	retrying := false
	endRetry := func() {
		if retrying {
			cl.EndRetry()
			retrying = false
		}
	}
	defer endRetry()
	for attempt := 1; ; attempt++ {
		// In q, not on the stack: Pick's load balancers take it through an
		// interface, so a local would escape (an allocation per try).
		pick := &q.pick
		*pick = upstream.PickOptions{Hash: hash, HasHash: hasHash, OrigDst: q.cs.info.Destination}
		if retry != nil && policy.PreviousHosts {
			pick.Avoid, pick.Attempts = tried, max(1, policy.HostSelectionAttempts)
		}
		host, err := cl.Pick(pick)
		if err != nil {
			q.flags |= flagUH
			q.localReply(http.StatusServiceUnavailable, bodyNoHealthy, "no_healthy_upstream")
			return
		}
		q.host, q.attempts = host, attempt
		a := q.startAttempt(ctx, eof, perTry)
		// gotConn: the try has its connection. Envoy's upstream request
		// learns its host only when its pool is ready (onPoolReady): a
		// route timeout before that (connecting, or waiting for a
		// connection) reports nothing to outlier detection, there being
		// no host to report to. Nil without outlier detection, and
		// without a route timeout unless split mode needs the trace
		// anyway: the trace costs a request four allocations, and
		// istiod's routes have no timeout by default.
		var gotConn *atomic.Bool
		if od := cl.Model().Outlier; od != nil && (q.routeTimer != nil || od.SplitLocalOrigin) {
			gotConn = new(atomic.Bool)
			split := od.SplitLocalOrigin
			a.ctx = httptrace.WithClientTrace(a.ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
				gotConn.Store(true)
				if split {
					// Envoy's upstream request reports a connect success
					// when its pool is ready, which starts the local-origin
					// count over: a reset or timeout after that is one
					// failure in a row, not the next of a series. Only
					// split mode reads it.
					cl.ReportLocal(host, upstream.Connected)
				}
			}})
		}
		h2 := q.upstreamH2(cl, upgrade)
		out := q.outgoing(host, path, authority, attempt, upgrade && !h2)
		if rewrite := q.grpc && f.RewriteGRPCTimeout; rewrite || !hcm.SuppressEnvoyHeaders {
			// Counted, as the route timer, from the complete request (time
			// before the router, a fault delay say, is not the endpoint's
			// to lose); nothing elapsed while the body is still coming.
			var elapsed time.Duration
			if c := q.completeAt(); !c.IsZero() {
				elapsed = time.Since(c)
			}
			d := expectedTimeout(timeout, perTry, elapsed)
			if !hcm.SuppressEnvoyHeaders {
				if d > 0 {
					out.Header["X-Envoy-Expected-Rq-Timeout-Ms"] = []string{strconv.FormatInt(d.Milliseconds(), 10)}
				} else {
					delete(out.Header, "X-Envoy-Expected-Rq-Timeout-Ms")
				}
			}
			if rewrite && d > 0 {
				out.Header["Grpc-Timeout"] = []string{formatGRPCTimeout(d)}
			}
		}
		if f.AutoHostRewrite && host.Hostname != "" && out.Host != host.Hostname {
			// Envoy's router: the endpoint's hostname, when it has one (an
			// EDS endpoint from istiod has none: Host stays as it was).
			if f.AppendXForwardedHost {
				appendForwardedHost(out.Header, out.Host)
			}
			out.Host = host.Hostname
		}
		a.body, _ = out.Body.(*bodyReader)
		host.Started()
		resp, err := cl.RoundTrip(a.ctx, out, host, h2)
		if err != nil {
			host.Done()
			a.end()
			endRetry()
			if q.timedOut(ctx) {
				if context.Cause(ctx) == errRouteTimeout && gotConn != nil && gotConn.Load() {
					cl.ReportLocal(host, upstream.TimedOut)
				}
				return
			}
			if q.clientGone() {
				q.flags |= flagDC
				return
			}
			fail, fl, status, body, details := classify(err, a.ctx)
			switch fail {
			case filter.PerTryTimeout:
				cl.ReportLocal(host, upstream.TimedOut)
			case filter.ConnectFailure, filter.Reset, filter.RefusedStream:
				// Envoy's router counts any reset but an overflow as a
				// connect failure.
				cl.ReportLocal(host, upstream.ConnectFailed)
			}
			if fail != 0 && retry.RetriableFailure(fail) {
				if q.retry(ctx, retry, cl) {
					retrying = true
					tried = append(tried, host)
					if !q.backoff(ctx, retry) {
						return
					}
					continue
				}
				if retry.Remaining() == 0 {
					q.flags |= flagURX
				}
			}
			q.flags |= fl
			q.localReply(status, body, details)
			return
		}
		endRetry()
		if resp.StatusCode == http.StatusSwitchingProtocols && !upgrade {
			// A switch the client never asked for (RFC 9110 7.8): relayed,
			// the client would take its connection for switched while it
			// is read as HTTP still. An endpoint's protocol error, as
			// Envoy counts it (net/http's ReverseProxy answers 502 too).
			resp.Body.Close()
			host.Done()
			a.end()
			cl.ReportLocal(host, upstream.ConnectFailed) // a reset, to Envoy's outlier detection
			q.flags |= flagUPE
			q.localReply(http.StatusBadGateway, bodyProtocol, "upstream_reset_before_response_started{protocol_error}")
			return
		}
		q.reportAnswer(cl, host, resp)
		if retry.RetriableResponse(resp.StatusCode, resp.Header) {
			if q.retry(ctx, retry, cl) {
				retrying = true
				discard(resp)
				host.Done()
				a.end()
				tried = append(tried, host)
				if !q.backoff(ctx, retry) {
					return
				}
				continue
			}
			if retry.Remaining() == 0 {
				q.flags |= flagURX
			}
		}
		q.respond(resp, upgrade, &a)
		host.Done()
		a.end()
		return
	}
}

// reportAnswer gives outlier detection the answer's status, as Envoy's
// router does: for a gRPC request whose answer's head carries
// grpc-status (trailers-only), the HTTP status that maps to.
func (q *request) reportAnswer(cl *upstream.Cluster, host *upstream.Host, resp *http.Response) {
	status := resp.StatusCode
	if q.grpc {
		if v := header.Get(resp.Header, "Grpc-Status"); v != "" {
			if g, ok := filter.GRPCStatus(v); ok {
				status = grpcToHTTP(g)
			}
		}
	}
	cl.Report(host, status)
}

// retry decides to retry now: a retry left, the body kept whole, and a
// slot of the cluster's max_retries.
func (q *request) retry(ctx context.Context, rs *filter.Retry, cl *upstream.Cluster) bool {
	if rs.Remaining() == 0 || ctx.Err() != nil {
		return false
	}
	if q.body != nil && !q.body.replayable() {
		return false
	}
	if !cl.StartRetry() {
		return false
	}
	rs.Take()
	q.e.stats.retry()
	return true
}

// backoff waits before a retry; false when the request ended meanwhile
// (then it has been answered).
func (q *request) backoff(ctx context.Context, rs *filter.Retry) bool {
	t := time.NewTimer(rs.Backoff())
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	}
	if !q.timedOut(ctx) && q.clientGone() {
		q.flags |= flagDC
	}
	return false
}

// timedOut answers a request whose context ended on one of its own
// timeouts (true), as Envoy does: 504 UT for the route timeout, 408 for
// the request timeout (the request did not come in whole in time) and for
// a stream idle for too long (SI).
func (q *request) timedOut(ctx context.Context) bool {
	switch context.Cause(ctx) {
	case errRouteTimeout:
		q.flags |= flagUT
		q.localReply(http.StatusGatewayTimeout, bodyTimeout, "upstream_response_timeout")
	case errRequestTimeout:
		q.localReply(http.StatusRequestTimeout, "request timeout", "request_overall_timeout")
	case errStreamIdle:
		q.flags |= flagSI
		q.localReply(http.StatusRequestTimeout, "stream timeout", "stream_idle_timeout")
	default:
		return false
	}
	return true
}

func (q *request) clientGone() bool {
	return q.r.Context().Err() != nil || (q.body != nil && q.body.failed())
}

// classify maps an attempt's error to its retry condition, response flag
// and local reply.
func classify(err error, actx context.Context) (fail filter.Failure, fl flags, status int, body, details string) {
	var ce *upstream.ConnectError
	switch {
	case errors.Is(err, upstream.ErrOverflow):
		// Envoy does not retry a pool overflow.
		return 0, flagUO, http.StatusServiceUnavailable, bodyOverflow, "upstream_overflow"
	case errors.As(err, &ce):
		return filter.ConnectFailure, flagUF, http.StatusServiceUnavailable, bodyConnect, "upstream_reset_before_response_started{connection_failure}"
	case context.Cause(actx) == errPerTryTimeout:
		return filter.PerTryTimeout, flagUT, http.StatusGatewayTimeout, bodyTimeout, "upstream_per_try_timeout"
	}
	switch upstream.ClassifyReset(err) {
	case upstream.RefusedStream:
		// A stream the upstream refused, or one beyond the last it took
		// before it went away (GOAWAY): never processed, so as safe to
		// send again as Envoy's refused stream reset. (net/http's HTTP/2
		// Transport would resend the latter itself, but only with
		// GetBody, which it must not have: see outgoing.)
		// Envoy's router flags a refused stream as a remote reset (UR).
		return filter.RefusedStream, flagUR, http.StatusServiceUnavailable, bodyRefused, "upstream_reset_before_response_started{remote_refused_stream_reset}"
	case upstream.RemoteReset:
		// The endpoint resetting the stream (an HTTP/2 RST_STREAM),
		// Envoy's remote reset, as against the connection closing (a
		// connection termination).
		return filter.Reset, flagUR, http.StatusServiceUnavailable, bodyRemote, "upstream_reset_before_response_started{remote_reset}"
	case upstream.ProtocolError:
		// The endpoint broke HTTP/2 (an answer without :status, a
		// malformed frame): Envoy's router answers its ProtocolError reset
		// with a 502 (onUpstreamReset), flagged UPE by the codec; retried
		// as any reset.
		return filter.Reset, flagUPE, http.StatusBadGateway, bodyProtocol, "upstream_reset_before_response_started{protocol_error}"
	}
	return filter.Reset, flagUC, http.StatusServiceUnavailable, bodyReset, "upstream_reset_before_response_started{connection_termination}"
}

// routeTimeout is the route's timeout, or, for a gRPC request on a route
// that honours grpc-timeout (MaxGRPCTimeout set), the client's
// grpc-timeout capped by MaxGRPCTimeout, as Envoy's router computes it: a
// missing or zero grpc-timeout means no limit, which the cap then bounds
// (a cap of 0 bounds nothing).
func (q *request) routeTimeout() time.Duration {
	f := q.rt.Model.Forward
	if f.MaxGRPCTimeout == nil || !q.grpc {
		return f.Timeout
	}
	g, _ := parseGRPCTimeout(header.Get(q.r.Header, "Grpc-Timeout"))
	if m := *f.MaxGRPCTimeout; m > 0 && (g == 0 || g > m) {
		g = m
	}
	return g
}

// parseGRPCTimeout reads gRPC's timeout format: up to 8 digits and a unit.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// upstreamH2 tells whether this request goes to the cluster over h2c.
func (q *request) upstreamH2(cl *upstream.Cluster, upgrade bool) bool {
	switch cl.Model().Protocol {
	case "http2":
		return !upgrade
	case "downstream":
		return q.r.ProtoMajor == 2
	}
	return false
}

// hopByHop are the headers of one connection, never forwarded
// (HTTP2-Settings belongs to an h2c upgrade, which is never forwarded:
// isUpgrade).
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer", "Expect", "Http2-Settings"}

// stripHopByHop takes the hop-by-hop headers out of the request: Upgrade
// and Connection kept for an upgrade; TE: trailers kept, gRPC needs it;
// Expect out, the waypoint answered it.
func (q *request) stripHopByHop(upgrade bool) {
	h := q.r.Header
	te := header.Get(h, "Te")
	removeHopByHop(h, upgrade)
	if strings.EqualFold(te, "trailers") {
		h.Set("Te", "trailers")
	}
}

// applyHeaderOps applies the header operations to the request, most
// specific level first.
func (q *request) applyHeaderOps() {
	route.ApplyRequest(q.r.Header, q.vars(), q.wops, q.rt.Headers, q.vh.Headers, q.ch.table.Headers)
}

// dropNominated removes the headers a request's Connection names, and
// leaves Connection naming only Upgrade when it did (isUpgrade reads it).
func dropNominated(h http.Header) {
	cs := h["Connection"]
	if len(cs) == 0 {
		return
	}
	upgrade := false
	for _, c := range cs {
		for _, name := range strings.Split(c, ",") {
			name = strings.TrimSpace(name)
			switch {
			case strings.EqualFold(name, "upgrade"):
				upgrade = true
			case name != "":
				delete(h, http.CanonicalHeaderKey(name))
			}
		}
	}
	if upgrade {
		h["Connection"] = []string{"Upgrade"}
	} else {
		delete(h, "Connection")
	}
}

func removeHopByHop(h http.Header, keepUpgrade bool) {
	for _, c := range h["Connection"] {
		for _, name := range strings.Split(c, ",") {
			name = strings.TrimSpace(name)
			if name != "" && !(keepUpgrade && strings.EqualFold(name, "upgrade")) {
				delete(h, http.CanonicalHeaderKey(name))
			}
		}
	}
	for _, k := range hopByHop {
		if keepUpgrade && (k == "Connection" || k == "Upgrade") {
			continue
		}
		delete(h, k)
	}
	if keepUpgrade {
		h.Set("Connection", "Upgrade")
	}
}

// isUpgrade reports an HTTP/1 upgrade to forward. Not h2c: the endpoint
// would switch the connection to HTTP/2 and the client's requests on it
// would reach the endpoint without routing or filters (h2c smuggling).
// Envoy's codec drops an h2c upgrade and serves the request as an
// ordinary one; removeHopByHop then takes Upgrade, Connection and
// HTTP2-Settings out.
func isUpgrade(r *http.Request) bool {
	up := header.Get(r.Header, "Upgrade")
	if r.ProtoMajor != 1 || up == "" || strings.EqualFold(strings.TrimSpace(up), "h2c") {
		return false
	}
	for _, c := range r.Header["Connection"] {
		for _, t := range strings.Split(c, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}

// completeAt is when the request came in whole (Envoy's
// downstream_request_complete_time), zero while its body is still coming.
func (q *request) completeAt() time.Time {
	if q.body != nil {
		return q.body.completeAt()
	}
	return q.complete
}

// expectedTimeout is how long the waypoint will wait for this try, as
// Envoy's router tells the endpoint (x-envoy-expected-rq-timeout-ms, and
// grpc-timeout where it rewrites that): the per-try timeout, or what is
// left of the route timeout when that is sooner; 0 without either.
func expectedTimeout(route, perTry, elapsed time.Duration) time.Duration {
	d := perTry
	if route > 0 {
		// Envoy counts in whole milliseconds: a try within the first one
		// announces the whole route timeout.
		left := max(route-elapsed.Truncate(time.Millisecond), time.Millisecond)
		if d <= 0 || left < d {
			d = left
		}
	}
	return max(d, 0).Truncate(time.Millisecond)
}

// formatGRPCTimeout writes d (whole milliseconds) in gRPC's timeout
// format, at most 8 digits: milliseconds, else the largest unit that
// fits, as Envoy writes it (hours capped at 99999999).
func formatGRPCTimeout(d time.Duration) string {
	const most = 99999999
	n, unit := d.Milliseconds(), "m"
	if n > most {
		n, unit = n/1000, "S"
	}
	if n > most {
		n, unit = n/60, "M"
	}
	if n > most {
		n, unit = n/60, "H"
	}
	return strconv.FormatInt(min(n, most), 10) + unit
}

// attemptCounts are the x-envoy-attempt-count values of the first tries,
// made once (see protoHTTP).
var attemptCounts = func() [][]string {
	v := make([][]string, 16)
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

// attemptCount is x-envoy-attempt-count's value for a try.
func attemptCount(n int) []string {
	if n < len(attemptCounts) {
		return attemptCounts[n]
	}
	return []string{strconv.Itoa(n)}
}

// outgoing makes the request the upstream request of one attempt, in
// place: the client's path and authority are kept in q (for the log), the
// rest is not needed again. (Through net/http's Transport, h2c and
// upgrades, the cluster hands over copies of the headers and URL: see
// upstream.Cluster.RoundTrip.) viaH1Transport: net/http's HTTP/1
// Transport sends it (an upgrade).
func (q *request) outgoing(host *upstream.Host, path, authority string, attempt int, viaH1Transport bool) *http.Request {
	r := q.r
	u := r.URL
	if u == nil {
		u = new(url.URL)
		r.URL = u
	}
	*u = url.URL{Scheme: "http", Host: host.Key}
	p, query, hasQuery := strings.Cut(path, "?")
	if strings.HasPrefix(p, "//") {
		// Opaque cannot start with "//"; the decoded form keeps the
		// encoding through RawPath.
		if dec, err := url.PathUnescape(p); err == nil {
			u.Path, u.RawPath = dec, p
		} else {
			u.Path = p
		}
	} else {
		// The path goes out exactly as it came in (or as rewritten).
		u.Opaque = p
	}
	u.RawQuery, u.ForceQuery = query, hasQuery && query == ""
	r.RequestURI = ""
	r.Host = authority
	r.Close = false
	r.TransferEncoding = nil
	r.GetBody = nil
	if q.vh != nil && q.vh.Model.AttemptCount {
		r.Header["X-Envoy-Attempt-Count"] = attemptCount(attempt)
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		// None from the client: none from us either (the transport would
		// add Go's).
		r.Header["User-Agent"] = nil
	}
	if q.body != nil {
		r.Body = q.body.attempt()
		if q.body.keep && viaH1Transport {
			// A keep-alive connection found closed is retried on a new one
			// with the body from its start (our HTTP/1.1 client asks the
			// body itself: Rewind). Never for HTTP/2: with GetBody, net/http's
			// HTTP/2 Transport retries a refused stream itself, up to seven
			// times with a backoff of 1 s, 2 s, 4 s..., where the route's
			// retry policy (refused-stream, num_retries, other hosts) is
			// the one to decide.
			r.GetBody = func() (io.ReadCloser, error) { return q.body.attempt(), nil }
		}
	} else {
		r.Body, r.ContentLength = nil, 0
	}
	return r
}

// attempt is one upstream try's context and per-try timer.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *deadline
	body   *bodyReader
}

// startAttempt gives an attempt its own context when it has a per-try
// timeout (armed once the request body is complete).
func (q *request) startAttempt(ctx context.Context, eof *eofTimers, perTry time.Duration) attempt {
	if perTry <= 0 {
		return attempt{ctx: ctx}
	}
	actx, cancel := context.WithCancelCause(ctx)
	// Envoy arms a try's timer when its connection is ready and the
	// request complete: a slow connect is the connect timeout's (503 UF),
	// not the try's (504 UT). The pools say when they have a connection
	// through the trace's GotConn, as net/http's Transport does.
	t := &deadline{d: perTry, cancel: cancel, cause: errPerTryTimeout, needConn: true}
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { t.connected() }})
	eof.add(t)
	return attempt{ctx: actx, cancel: cancel, timer: t}
}

func (a *attempt) end() {
	if a.timer != nil {
		a.timer.stop()
	}
	if a.cancel != nil {
		a.cancel(nil)
	}
	if a.body != nil {
		a.body.Close()
	}
}

// discard drops a response that will be retried, reading a little of its
// body so its connection can be reused.
func discard(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}

// deadline cancels a context with a cause once armed and expired. Timers
// armed at the end of the request body follow Envoy: its route and
// per-try timeouts count from the complete request.
type deadline struct {
	d      time.Duration
	cancel context.CancelCauseFunc
	cause  error
	// needConn: the timer starts only once a connection is ready too
	// (connected).
	needConn bool
	mu       sync.Mutex
	t        *time.Timer
	armed    bool // the request is complete
	conn     bool
	stopped  bool
}

// arm: the request is complete; the timer starts (once its connection is
// ready, when it waits for one).
func (x *deadline) arm() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.armed = true
	x.startLocked()
}

// connected: the try has its connection.
func (x *deadline) connected() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.conn = true
	x.startLocked()
}

func (x *deadline) startLocked() {
	if x.t == nil && !x.stopped && x.armed && (x.conn || !x.needConn) {
		x.t = time.AfterFunc(x.d, func() { x.cancel(x.cause) })
	}
}

func (x *deadline) stop() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stopped = true
	if x.t != nil {
		x.t.Stop()
	}
}

// eofTimers arms deadlines when the request body is complete (at once
// when it already is).
type eofTimers struct {
	mu      sync.Mutex
	done    bool
	waiting []*deadline
	stops   []*deadline
}

func (e *eofTimers) add(d *deadline) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		d.arm()
		return
	}
	e.waiting = append(e.waiting, d)
}

// stopAtEnd stops d when the body is complete.
func (e *eofTimers) stopAtEnd(d *deadline) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		d.stop()
		return
	}
	e.stops = append(e.stops, d)
}

func (e *eofTimers) fire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.done = true
	for _, d := range e.waiting {
		d.arm()
	}
	for _, d := range e.stops {
		d.stop()
	}
	e.waiting, e.stops = nil, nil
}

// appendForwardedHost adds the authority a host rewrite replaces to
// x-forwarded-host, as Envoy's updateAuthority does for
// append_x_forwarded_host: after the values already there (joined by
// ","), unless it is already the last of them; an empty authority adds
// nothing.
func appendForwardedHost(h http.Header, host string) {
	if host == "" {
		return
	}
	old := strings.Join(h["X-Forwarded-Host"], ",")
	if old == "" {
		h["X-Forwarded-Host"] = []string{host}
		return
	}
	last := old
	if i := strings.LastIndexByte(old, ','); i >= 0 {
		last = old[i+1:]
	}
	if strings.TrimSpace(last) != host {
		h["X-Forwarded-Host"] = []string{old + "," + host}
	}
}
