package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

type mirrorTarget struct {
	cluster  *upstream.Cluster
	keepHost bool
}

// mirrorTargets draws which of the route's mirrors this request goes to.
func (q *request) mirrorTargets() []mirrorTarget {
	var out []mirrorTarget
	for _, m := range q.rt.Model.Forward.Mirrors {
		pct := m.Percent
		if pct < 100 && rand.Float64()*100 >= pct {
			continue
		}
		cl := q.cfg.clusters[m.Cluster]
		if cl == nil {
			q.e.stats.mirror("failed")
			continue
		}
		out = append(out, mirrorTarget{cluster: cl, keepHost: m.KeepHost})
	}
	return out
}

// mirrorAfter sends the mirrors once the main exchange is over, with the
// whole body; a body longer than the buffer limit is not mirrored.
func (q *request) mirrorAfter(ts []mirrorTarget, path, authority string) {
	if _, done := q.body.complete(); !done && !q.body.failed() {
		if w, ok := q.w.(interface{ BodyWithheld() bool }); ok && w.BodyWithheld() {
			// Answered before the client was told to send the body
			// (Expect: 100-continue): it may never come. No copies.
			for range ts {
				q.e.stats.mirror("skipped")
			}
			return
		}
		// The upstream answered before reading all of it: the client may
		// still be sending, read the rest for the copies. The answer goes
		// out first: the rest may be long in coming.
		if f, ok := q.w.(http.Flusher); ok && q.wrote {
			f.Flush()
		}
		q.body.readAll()
	}
	body, ok := q.body.complete()
	if !ok {
		for range ts {
			q.e.stats.mirror("skipped")
		}
		return
	}
	// A copy: the kept body goes back to its pool with the request, the
	// mirrors outlive it.
	q.sendMirrors(ts, path, authority, bytes.Clone(body))
}

// sendMirrors fires the copies and forgets them: their answers are read
// and dropped, their failures counted, the client's response never waits
// for them. Each carries the request's headers as sent upstream (trace
// headers included) and Envoy's shadow authority ("host-shadow[:port]"),
// or the authority unchanged when the policy disables the suffix.
func (q *request) sendMirrors(ts []mirrorTarget, path, authority string, body []byte) {
	h := q.r.Header.Clone()
	h.Del("X-Envoy-Attempt-Count")
	host := shadowHost(authority)
	// Envoy's router gives a shadow the request's global timeout (the
	// route's, or what grpc-timeout made of it), and none when that is 0
	// (router.cc: RequestOptions().setTimeout(timeout_.global_timeout_)).
	// A shadow with none that is never answered ends as in Envoy when its
	// connection does, or when its cluster is closed (gone from the
	// configuration, or the engine closing: Cluster.Context), so no
	// goroutine outlives the cluster it waits on.
	timeout := q.routeTimeout()
	for _, t := range ts {
		host := host
		if t.keepHost {
			host = authority
		}
		go q.e.mirror(t.cluster, q.r.Method, path, host, h.Clone(), body, timeout, q.cs.info.Destination, q.r.ProtoMajor)
	}
}

// shadowHost puts "-shadow" before the authority's port, if it has one:
// the last ':' not inside an IPv6 literal's brackets, so "[::1]:80"
// becomes "[::1]-shadow:80" (the brackets stay whole, as in Envoy).
func shadowHost(authority string) string {
	i := strings.LastIndexByte(authority, ':')
	if i < 0 || strings.LastIndexByte(authority, ']') > i {
		return authority + "-shadow"
	}
	return authority[:i] + "-shadow" + authority[i:]
}

func (e *Engine) mirror(cl *upstream.Cluster, method, path, authority string, h http.Header, body []byte, timeout time.Duration, origDst netip.AddrPort, protoMajor int) {
	if !cl.StartRequest() {
		e.stats.mirror("failed")
		return
	}
	defer cl.EndRequest()
	host, err := cl.Pick(&upstream.PickOptions{OrigDst: origDst})
	if err != nil {
		e.stats.mirror("failed")
		return
	}
	ctx := cl.Context()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+host.Key+path, rd)
	if err != nil {
		e.stats.mirror("failed")
		return
	}
	req.Host = authority
	req.Header = h
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = nil // no Go default in its place
	}
	h2 := cl.Model().Protocol == "http2" || cl.Model().Protocol == "downstream" && protoMajor == 2
	host.Started()
	resp, err := cl.RoundTrip(ctx, req, host, h2)
	host.Done()
	if err != nil {
		e.stats.mirror("failed")
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	e.stats.mirror("sent")
}
