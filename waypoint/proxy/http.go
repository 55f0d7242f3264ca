package proxy

import (
	"context"
	"encoding/binary"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/kmesh-go/kmesh/waypoint/filter"
	"github.com/kmesh-go/kmesh/waypoint/h1"
	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
	"github.com/kmesh-go/kmesh/waypoint/telemetry"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

type connKey struct{}

// newH1Server serves HTTP/1.x connections on the goroutine that accepted
// them (the fast path; why in package h1).
func (e *Engine) newH1Server() *h1.Server {
	return &h1.Server{Handler: e.serveH1, IdleTimeout: downstreamIdleTime, MaxHeaderBytes: maxHeaderBytes, Logger: e.log}
}

// Limits of the downstream HTTP server, Envoy's defaults.
const (
	maxHeaderBytes     = 60 << 10 // max_request_headers_kb
	downstreamIdleTime = time.Hour
)

// HTTP/2 receive windows of the downstream server. net/http gives back
// connection window only as a handler reads its body, and by default
// makes the connection's window no bigger than one stream's (1 MiB): one
// upload whose endpoint does not read (a client-streaming call to a busy
// server) then held every other request body of the connection, all
// calls of a gRPC channel. Envoy's connection window (256 MiB by
// default) is far above what a stream holds before it stops taking more
// (its buffer limit, 1 MiB): a stream keeps net/http's 1 MiB, the
// connection takes many of them, which also bounds what one connection
// may make the waypoint buffer.
const (
	h2StreamWindow     = 1 << 20
	h2ConnectionWindow = 64 << 20
)

// h2MaxStreams is how many streams a client may have open on one
// connection. net/http's own, 250, left a gRPC channel with that many
// long-lived calls (watches, subscriptions) unable to start another:
// grpc-go waits for a stream to end, for ever. Envoy's default is 2^31-1,
// but net/http also bounds the handlers running at once by it (its guard
// against a flood of opened-and-reset streams), so it stays bounded here:
// four times net/http's, 1024.
const h2MaxStreams = 1024

// newServer is the HTTP server of h2c (prior knowledge) connections, all
// chains together. HTTP/1 connections are served by package h1's server
// (see newH1Server), or by this one with Options.NetHTTPServer.
func (e *Engine) newServer() *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:   http.HandlerFunc(e.serveHTTP),
		Protocols: &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:      h2MaxStreams,
			MaxReceiveBufferPerStream: h2StreamWindow, MaxReceiveBufferPerConnection: h2ConnectionWindow,
		},
		IdleTimeout:    downstreamIdleTime,
		MaxHeaderBytes: maxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*proxiedConn); ok {
				return context.WithValue(ctx, connKey{}, pc.state)
			}
			return ctx
		},
		ErrorLog: log.New(slogWriter{e.log}, "", 0),
	}
}

// slogWriter carries net/http's own complaints (malformed requests and
// the like) to the engine's logger at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug("waypoint http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// request is one HTTP request's state through the filters and the router.
type request struct {
	e     *Engine
	cfg   *config
	cs    *connState
	res   *resolution
	ch    *chain
	w     http.ResponseWriter
	r     *http.Request
	start time.Time
	grpc  bool
	// path and authority as received (rewrites change the request's).
	path, authority string
	vh              *route.VirtualHost
	rt              *route.Route
	clusterName     string
	cluster         *upstream.Cluster
	wops            *route.Ops // the chosen weighted cluster's header ops
	whost           string     // the chosen weighted cluster's host rewrite
	host            *upstream.Host
	body            *requestBody
	cors            http.Header // CORS headers for the response
	setCookies      []string    // cookies a hash policy made, for an upstream answer
	routeTimer      *deadline
	requestTimer    *deadline // HCM request_timeout, until the request is in
	idle            *watchdog // stream idle timeout
	upgradeIn       int64     // bytes from the client after an upgrade
	attempts        int       // upstream tries so far
	pick            upstream.PickOptions

	code         int
	grpcStatus   string
	flags        flags
	details      string
	respBytes    int64
	upstreamTime string // x-envoy-upstream-service-time as sent
	wrote        bool
	hv           route.Vars // see vars
	// remote is the stream's client address (see streamRemote), set
	// before routing; zero for a request a chain denied before that.
	remote netip.AddrPort
	// aborted: the handler panics with http.ErrAbortHandler (the answer
	// broke off mid-body): finish runs without the answer's end.
	aborted bool
	// complete is when a request without a body reached the router (one
	// with a body is complete at its end, an upgrade never: completeAt).
	complete time.Time
}

// serveHTTP is net/http's handler (h2c connections).
func (e *Engine) serveHTTP(w http.ResponseWriter, r *http.Request) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil {
		http.Error(w, "no connection state", http.StatusInternalServerError)
		return
	}
	e.handle(w, r, cs)
}

// serveH1 is the HTTP/1 server's handler.
func (e *Engine) serveH1(w http.ResponseWriter, r *http.Request, conn any) {
	e.handle(w, r, conn.(*connState))
}

// handle runs one request through its connection's chain.
func (e *Engine) handle(w http.ResponseWriter, r *http.Request, cs *connState) {
	cfg := e.cfg.Load()
	if cfg == nil {
		http.Error(w, "no configuration", http.StatusServiceUnavailable)
		return
	}
	res := cs.resolve(cfg)
	q := requests.Get().(*request)
	*q = request{
		e: e, cfg: res.cfg, cs: cs, res: res, ch: res.chain, w: w, r: r, start: time.Now(),
		grpc: route.IsGRPC(r), path: route.RequestPath(r), authority: r.Host,
	}
	defer q.done()
	if d := q.ch.m.Deny; d != nil {
		q.deny(d.HTTPStatus, d.Reason, "chain")
		return
	}
	q.run()
}

// run routes the request and runs the chain's filters and the router.
func (q *request) run() {
	r, hcm := q.r, q.ch.hcm
	sanitize(r.Header)
	// The client's hop-by-hop headers (those its Connection names) go
	// before the waypoint adds its own, so naming x-request-id there
	// cannot take the waypoint's id off.
	dropNominated(r.Header)
	q.remote = q.streamRemote()
	if header.Get(r.Header, "X-Forwarded-Proto") == "" {
		r.Header["X-Forwarded-Proto"] = protoHTTP
	}
	if hcm.GenerateRequestID && header.Get(r.Header, "X-Request-Id") == "" {
		r.Header["X-Request-Id"] = newRequestID()
	}

	if q.ch.table == nil {
		status := http.StatusNotFound
		if hcm.RDSName != "" {
			// The route table has not arrived yet.
			status = http.StatusServiceUnavailable
		}
		q.flags |= flagNR
		q.localReply(status, "", "route_configuration_missing")
		return
	}
	if i := strings.IndexByte(q.path, '#'); i >= 0 {
		// A fragment is no part of :path. Envoy as istiod runs it
		// (http_reject_path_with_fragment off) drops it before anything
		// reads the path, so it neither matches routes nor takes part in
		// resolving dot segments ("/public#/../admin" is /public), and
		// the endpoint never sees it.
		q.path = q.path[:i]
		r.RequestURI = q.path
	}
	redirect := false
	if hcm.EscapedSlashes != "" {
		// Envoy's path_with_escaped_slashes_action, before normalizing.
		if np, ok := route.UnescapeSlashes(q.path); ok {
			switch hcm.EscapedSlashes {
			case "reject":
				q.localReply(http.StatusBadRequest, "", "path_has_escaped_slashes")
				return
			case "redirect":
				// Answered once the path is normalized: Envoy's Location is
				// the path as it would have been routed.
				redirect = true
			}
			q.path, r.RequestURI = np, np
		}
	}
	if hcm.NormalizePath || hcm.MergeSlashes {
		// Routed and forwarded on the normalized path, as Envoy does.
		if np := route.NormalizePath(q.path, hcm.NormalizePath, hcm.MergeSlashes); np != q.path {
			q.path, r.RequestURI = np, np
		}
	}
	if redirect {
		q.w.Header().Set("Location", q.path)
		q.localReply(http.StatusTemporaryRedirect, "", "path_has_escaped_slashes")
		return
	}
	q.vh, q.rt = q.ch.table.Match(r)
	if q.rt == nil {
		q.flags |= flagNR
		q.localReply(http.StatusNotFound, "", "route_not_found")
		return
	}
	m := q.rt.Model
	if !q.upgradeAllowed() {
		// Envoy's HCM, before any filter: an upgrade type neither the
		// HCM nor the route turns on is refused.
		q.localReply(http.StatusForbidden, "", "upgrade_failed")
		return
	}
	if m.Deny != nil {
		q.deny(m.Deny.HTTPStatus, m.Deny.Reason, "route")
		return
	}
	if f := m.Forward; f != nil {
		// The cluster is chosen before the filters run: the fault filter's
		// upstream_cluster condition reads it, as in Envoy.
		q.pickCluster()
	}

	for _, f := range q.ch.filters {
		if q.disabled(f) {
			continue
		}
		switch {
		case f.isFault:
			if done := q.fault(q.effectiveFault(f)); done {
				return
			}
		case f.isCORS:
			if m.Forward == nil {
				// A redirect or direct response has no route entry in
				// Envoy: its CORS filter lets the request pass untouched.
				continue
			}
			res := q.effectiveCORS(f).Evaluate(r)
			if res.Preflight {
				for k, v := range res.Headers {
					q.w.Header()[k] = v
				}
				q.localReply(http.StatusOK, "", "cors_response") // Envoy's details for it
				return
			}
			q.cors = res.Headers
		}
	}

	switch {
	case m.Redirect != nil:
		// Envoy's Location takes the request's :scheme, not
		// x-forwarded-proto as sent (which may name anything).
		loc := q.rt.RedirectLocationProto(route.RequestScheme(r), header.Get(r.Header, "X-Forwarded-Proto"), q.authority, q.path)
		q.w.Header().Set("Location", loc)
		q.localReply(route.RedirectStatus(m.Redirect), "", "redirect")
	case m.Direct != nil:
		if q.grpc && m.Direct.Status != http.StatusOK {
			// As every local reply to a gRPC request (Envoy's
			// sendLocalReply): HTTP 200 with the status in grpc-status.
			q.localReply(m.Direct.Status, string(m.Direct.Body), "direct_response")
			return
		}
		if len(m.Direct.Body) > 0 {
			q.w.Header().Set("Content-Type", "text/plain")
		}
		q.reply(m.Direct.Status, m.Direct.Body, "direct_response")
	case m.Forward != nil:
		q.forward()
	default:
		q.flags |= flagNR
		q.localReply(http.StatusNotFound, "", "route_without_action")
	}
}

// pickCluster chooses the route's cluster (a weighted one at random by
// weight: a gray release).
func (q *request) pickCluster() {
	f := q.rt.Model.Forward
	q.clusterName = f.Cluster
	if w := f.Weighted; w != nil && len(w.Clusters) > 0 {
		i := pickWeighted(w)
		q.clusterName = w.Clusters[i].Name
		q.whost = w.Clusters[i].HostRewrite
		if i < len(q.rt.Weighted) {
			q.wops = q.rt.Weighted[i]
		}
	}
	q.cluster = q.cfg.clusters[q.clusterName]
}

// disabled reports a filter off for this request: the most specific of
// the route, its virtual host and the route table that names the filter
// decides, else the connection manager's default (Envoy's
// filterDisabled).
func (q *request) disabled(f httpFilter) bool {
	for _, pf := range [3]*model.PerFilterConfig{q.routePF(), q.vhostPF(), q.tablePF()} {
		if pf == nil {
			continue
		}
		if pf.Disabled[f.name] {
			return true
		}
		if pf.Enabled[f.name] {
			return false
		}
	}
	return f.off
}

func (q *request) routePF() *model.PerFilterConfig {
	if q.rt == nil {
		return nil
	}
	return &q.rt.Model.PerFilter
}

func (q *request) vhostPF() *model.PerFilterConfig {
	if q.vh == nil {
		return nil
	}
	return &q.vh.Model.PerFilter
}

func (q *request) tablePF() *model.PerFilterConfig {
	if q.ch.table == nil {
		return nil
	}
	return &q.ch.table.Model.PerFilter
}

// effectiveFault is the route's fault config, else the virtual host's,
// else the route table's, else the filter's own (Envoy's most specific
// typed_per_filter_config).
func (q *request) effectiveFault(f httpFilter) *filter.Fault {
	if m := q.rt.Model.PerFilter.Fault; m != nil {
		return q.cfg.faults[m]
	}
	if m := q.vh.Model.PerFilter.Fault; m != nil {
		return q.cfg.faults[m]
	}
	if m := q.ch.table.Model.PerFilter.Fault; m != nil {
		return q.cfg.faults[m]
	}
	return f.fault
}

func (q *request) effectiveCORS(f httpFilter) *filter.CORS {
	if m := q.rt.Model.PerFilter.CORS; m != nil {
		return q.cfg.cors[m]
	}
	if m := q.vh.Model.PerFilter.CORS; m != nil {
		return q.cfg.cors[m]
	}
	if m := q.ch.table.Model.PerFilter.CORS; m != nil {
		return q.cfg.cors[m]
	}
	return f.cors
}

// fault injects a delay and/or an abort; done means the request was
// answered (aborted, or the client left during the delay).
func (q *request) fault(f *filter.Fault) (done bool) {
	d := q.e.faults.Decide(f, q.r, q.clusterName)
	if !d.Active() {
		return false
	}
	defer q.e.faults.Done()
	if d.Delay > 0 {
		q.flags |= flagDI
		t := time.NewTimer(d.Delay)
		select {
		case <-t.C:
		case <-q.r.Context().Done():
			t.Stop()
			q.flags |= flagDC
			return true
		}
	}
	switch {
	case d.AbortGRPC != nil:
		q.flags |= flagFI
		if !q.grpc {
			// Envoy's local reply takes the gRPC form only for a gRPC
			// request; any other gets the abort's HTTP code, 200.
			q.localReply(http.StatusOK, "fault filter abort", "fault_filter_abort")
			return true
		}
		q.grpcReply(*d.AbortGRPC, "fault filter abort", "fault_filter_abort")
		return true
	case d.AbortStatus != 0:
		q.flags |= flagFI
		q.localReply(d.AbortStatus, "fault filter abort", "fault_filter_abort")
		return true
	}
	return false
}

// deny answers a fail-closed Deny with its status and logs why.
func (q *request) deny(status int, reason, where string) {
	if status == 0 {
		status = http.StatusForbidden
	}
	q.e.stats.denied.WithLabelValues(where).Inc()
	if ok, suppressed := q.e.warn.allow(); ok {
		q.e.log.Warn("waypoint: request denied (fail closed)", "where", where, "reason", reason, "authority", q.authority,
			"path", q.path, "peer", q.cs.peer, "suppressed", suppressed)
	}
	body := "access denied"
	if status == http.StatusForbidden {
		body = "RBAC: access denied"
	}
	q.localReply(status, body, "denied: "+reason)
}

// requests are reused: nothing holds a request once its handler returned
// (mirrors and transports get copies and the body, not the request).
var requests = sync.Pool{New: func() any { return new(request) }}

// done records the request and gives its state back.
func (q *request) done() {
	q.finish()
	if q.body != nil {
		q.body.release()
	}
	*q = request{}
	requests.Put(q)
}

// finish records the request: metrics and the access log line.
func (q *request) finish() {
	if q.body != nil && q.body.failed() {
		q.flags |= flagDC
	}
	if err := q.r.Context().Err(); err != nil && !q.wrote {
		q.flags |= flagDC
	}
	dur := time.Since(q.start)
	proto := "http"
	if q.grpc {
		proto = "grpc"
		if q.grpcStatus == "" && q.code > 0 {
			// No grpc-status came: Envoy's getGrpcStatus, which Istio's
			// filter uses, infers one from the HTTP status.
			q.grpcStatus = strconv.Itoa(httpToGRPC(q.code))
		}
	}
	key := telemetry.RequestKey{Source: q.res.source, Protocol: proto, Code: q.code, GRPCStatus: q.grpcStatus, Flags: q.flags.String()}
	key.Service = &q.ch.m.Service
	if q.cluster != nil {
		if m := q.cluster.Model(); m.Service.Hostname != "" {
			key.Service = &m.Service
		}
	}
	if q.host != nil {
		key.Dest = q.cfg.snap.Peers.Lookup(q.host.Addr.Addr())
	}
	received := q.upgradeIn
	if q.body != nil {
		received += q.body.count()
	}
	// Istio's request and response sizes are the stream's wire bytes (its
	// filter reads Envoy's downstream bytes meter): head and body as they
	// were on the connection, counted by the HTTP/1 server. On HTTP/2
	// (net/http's server keeps no count per stream) they are the bodies,
	// as the access log's.
	reqWire, respWire := received, q.respBytes
	// An aborted answer (or one to a client gone) never gets its end.
	if in, out, ok := h1.WireBytes(q.w, !q.aborted && q.flags&flagDC == 0); ok {
		reqWire, respWire = in, out
	}
	q.e.metrics.ObserveRequest(&key, dur, reqWire, respWire)
	if q.e.access == nil {
		return
	}
	e := telemetry.Entry{
		Start: q.start, Method: q.r.Method, Path: q.path, Protocol: q.r.Proto, Code: q.code, Flags: key.Flags,
		Details: q.details, BytesReceived: received, BytesSent: q.respBytes, Duration: dur,
		UpstreamServiceTime: q.upstreamTime, UpstreamCluster: q.clusterName, RequestID: header.Get(q.r.Header, "X-Request-Id"),
		Authority: q.authority, UserAgent: header.Get(q.r.Header, "User-Agent"), XForwardedFor: header.Get(q.r.Header, "X-Forwarded-For"),
		Downstream: q.remoteAddr().String(), OriginalDst: q.cs.info.Destination.String(), Traceparent: header.Get(q.r.Header, "Traceparent"),
	}
	if q.rt != nil {
		e.RouteName = q.rt.Model.Name
	}
	if q.host != nil {
		e.UpstreamHost = q.host.Key
	}
	q.e.access.Write(&e)
}

// Shared header values: a header operation that appends to one copies it
// first (its capacity is its length), so they are never written through.
var protoHTTP = []string{"http"}

// newRequestID is a random UUID (version 4), Envoy's x-request-id format,
// as a header value: the text and the value's slice share one allocation.
// The bits come from math/rand/v2's generator (ChaCha8, seeded by the
// runtime from the system's randomness, state per thread): an id has to
// be unique, not a secret, and crypto/rand cost ~0.15 µs of the request.
func newRequestID() []string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexd = "0123456789abcdef"
	v := new(requestID)
	out := v.text[:]
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out[j] = '-'
			j++
		}
		out[j], out[j+1] = hexd[c>>4], hexd[c&0xf]
		j += 2
	}
	// The bytes are never written again: the string may share them.
	v.value[0] = unsafe.String(&v.text[0], len(v.text))
	return v.value[:]
}

type requestID struct {
	value [1]string
	text  [36]byte
}

// envoyInternal are the x-envoy-* request headers Envoy removes from
// requests of clients it does not trust (header sanitizing): they would
// let a client steer retries, timeouts and stats of the proxies behind.
// The waypoint honours none of them from clients and strips them all.
var envoyInternal = []string{
	"X-Envoy-Decorator-Operation",
	"X-Envoy-Downstream-Service-Cluster",
	"X-Envoy-Downstream-Service-Node",
	"X-Envoy-Expected-Rq-Timeout-Ms",
	"X-Envoy-External-Address",
	"X-Envoy-Force-Trace",
	"X-Envoy-Internal",
	"X-Envoy-Ip-Tags",
	"X-Envoy-Max-Retries",
	"X-Envoy-Retry-Grpc-On",
	"X-Envoy-Retry-On",
	"X-Envoy-Retriable-Status-Codes",
	"X-Envoy-Retriable-Header-Names",
	"X-Envoy-Upstream-Alt-Stat-Name",
	"X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms",
	"X-Envoy-Upstream-Rq-Timeout-Alt-Response",
	"X-Envoy-Upstream-Rq-Timeout-Ms",
	"X-Envoy-Hedge-On-Per-Try-Timeout",
	"X-Envoy-Attempt-Count",
	"X-Forwarded-Client-Cert",
}

// sanitize removes what envoyInternal lists; the common request has none
// of them, so one pass over its few headers decides.
func sanitize(h http.Header) {
	some := false
	for k := range h {
		if strings.HasPrefix(k, "X-Envoy-") || k == "X-Forwarded-Client-Cert" {
			some = true
			break
		}
	}
	if !some {
		return
	}
	for _, k := range envoyInternal {
		delete(h, k)
	}
}

// upgradeAllowed: not an upgrade, or one whose type the route's
// upgrade_configs turn on, else the HCM's (compared without case, as
// Envoy does).
func (q *request) upgradeAllowed() bool {
	hcm := q.ch.hcm
	if hcm.Upgrades == nil || !isUpgrade(q.r) {
		return true
	}
	t := strings.ToLower(strings.TrimSpace(header.Get(q.r.Header, "Upgrade")))
	if f := q.rt.Model.Forward; f != nil {
		if on, ok := f.Upgrades[t]; ok {
			return on
		}
	}
	return hcm.Upgrades[t]
}
