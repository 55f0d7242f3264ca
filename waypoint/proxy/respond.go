package proxy

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

// viaUpstream is Envoy's response_code_details of an answer the endpoint
// gave (a local reply says its own reason).
const viaUpstream = "via_upstream"

// headerSetter is package h1's writer taking a header map whole.
type headerSetter interface{ SetHeader(http.Header) }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// respond streams an upstream response to the client: headers less the
// hop-by-hop ones plus the route's operations, the body (flushed as it
// comes when its length is unknown: gRPC, server-sent events, any stream),
// then the trailers.
func (q *request) respond(resp *http.Response, upgrade bool, a *attempt) {
	defer resp.Body.Close()
	var h http.Header
	if hs, ok := q.w.(headerSetter); ok {
		hs.SetHeader(resp.Header)
		h = resp.Header
	} else {
		h = q.w.Header()
		for k, v := range resp.Header {
			h[k] = v
		}
	}
	removeHopByHop(h, upgrade && resp.StatusCode == http.StatusSwitchingProtocols)
	if c := q.completeAt(); !c.IsZero() && !q.ch.hcm.SuppressEnvoyHeaders {
		// Envoy's router: how long the endpoint took, from the complete
		// request (retries included) to this answer's headers, before the
		// route's header operations, which may remove it. None for an
		// answer that came before the request was complete.
		h["X-Envoy-Upstream-Service-Time"] = []string{strconv.FormatInt(time.Since(c).Milliseconds(), 10)}
	}
	if len(q.setCookies) > 0 {
		// Envoy's router adds the cookies its hash policy made to every
		// upstream answer (not to its own replies).
		h["Set-Cookie"] = append(h["Set-Cookie"], q.setCookies...)
	}
	q.decorate(h)
	// Logged as the client gets it: the route's operations may remove it.
	q.upstreamTime = header.Get(h, "X-Envoy-Upstream-Service-Time")
	if upgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		q.upgrade(resp, a)
		return
	}
	if gs := header.Get(resp.Header, "Grpc-Status"); gs != "" {
		q.grpcStatus = gs // trailers-only
	}
	if q.requestTimer != nil {
		// The answer has started: request_timeout no longer applies.
		q.requestTimer.stop()
	}
	if q.idle != nil {
		q.idle.touch()
	}
	if a.timer != nil {
		// The answer starts: the per-try timeout no longer applies, as
		// Envoy ignores it once the response has begun downstream (no
		// retry is possible any more); the route timeout goes on.
		a.timer.stop()
	}
	q.w.WriteHeader(resp.StatusCode)
	q.code, q.wrote, q.details = resp.StatusCode, true, viaUpstream

	stream := resp.ContentLength < 0 || q.grpc || strings.HasPrefix(header.Get(resp.Header, "Content-Type"), "text/event-stream")
	var flusher http.Flusher
	if stream {
		flusher, _ = q.w.(http.Flusher)
		if flusher != nil && q.grpcStatus == "" {
			// A stream's headers go out as they came, as Envoy forwards
			// them: a gRPC server may send its headers and then wait for
			// the client's next message (and the client for the headers),
			// an event stream may send nothing for long. A trailers-only
			// gRPC answer stays one HEADERS frame.
			flusher.Flush()
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if q.idle != nil {
				q.idle.touch()
			}
			w, werr := q.w.Write(buf[:n])
			q.respBytes += int64(w)
			if werr != nil {
				q.flags |= flagDC
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if q.clientGone() {
				q.flags |= flagDC
				return
			}
			// The upstream broke off mid-body. The client must not take a
			// truncated body for a whole one: abort the stream (HTTP/2
			// RST_STREAM, HTTP/1 connection closed). finish still runs.
			switch context.Cause(a.ctx) {
			case errRouteTimeout, errPerTryTimeout:
				q.flags |= flagUT
			case errStreamIdle:
				q.flags |= flagSI
			default:
				// Envoy's flag and details for a reset after the answer
				// started: the endpoint's RST_STREAM or a closed connection.
				switch upstream.ClassifyReset(rerr) {
				case upstream.RemoteReset:
					q.flags |= flagUR
					q.details = "upstream_reset_after_response_started{remote_reset}"
				case upstream.RefusedStream:
					q.flags |= flagUR
					q.details = "upstream_reset_after_response_started{remote_refused_stream_reset}"
				case upstream.ProtocolError:
					q.flags |= flagUPE
					q.details = "upstream_reset_after_response_started{protocol_error}"
				default:
					q.flags |= flagUC
					q.details = "upstream_reset_after_response_started{connection_termination}"
				}
				// Envoy's router reports every upstream reset to outlier
				// detection, after the answer's headers too (onUpstreamReset:
				// a local-origin connect failure, a 503 unless local errors
				// are split); resets of its own (timeouts, the client
				// gone) are not, their callbacks removed first.
				if q.cluster != nil {
					q.cluster.ReportLocal(q.host, upstream.ConnectFailed)
				}
			}
			q.aborted = true
			panic(http.ErrAbortHandler)
		}
	}
	for k, v := range resp.Trailer {
		h[http.TrailerPrefix+k] = v
	}
	if gs := header.Get(resp.Trailer, "Grpc-Status"); gs != "" {
		q.grpcStatus = gs
	}
}

// upgrade completes an HTTP/1.1 upgrade (WebSocket and the like): the
// 101 goes to the client, then bytes flow both ways until either side
// closes.
func (q *request) upgrade(resp *http.Response, a *attempt) {
	// The route and per-try timeouts end with the upgrade: they bound the
	// wait for the 101, not the stream after it.
	if q.routeTimer != nil {
		q.routeTimer.stop()
	}
	if a.timer != nil {
		a.timer.stop()
	}
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		q.localReply(http.StatusBadGateway, "upstream upgrade without a stream", "upgrade_failed")
		return
	}
	defer up.Close()
	conn, brw, err := http.NewResponseController(q.w).Hijack()
	if err != nil {
		q.localReply(http.StatusInternalServerError, "cannot take over the connection", "upgrade_failed")
		return
	}
	defer conn.Close()
	q.code, q.wrote, q.details = http.StatusSwitchingProtocols, true, viaUpstream
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	q.w.Header().Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		q.flags |= flagDC
		return
	}
	done := make(chan int64, 1)
	go func() {
		// Client to upstream: what the server had buffered first.
		n, _ := io.Copy(up, brw.Reader)
		done <- n
		up.Close()
	}()
	n, _ := io.Copy(conn, up)
	q.respBytes += n
	conn.Close()
	q.upgradeIn = <-done
}
