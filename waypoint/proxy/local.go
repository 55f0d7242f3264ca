package proxy

import (
	"net/http"
	"strconv"

	"github.com/kmesh-go/kmesh/waypoint/route"
)

// Envoy's local reply bodies, which clients and tests match on.
const (
	bodyNoHealthy = "no healthy upstream"
	bodyTimeout   = "upstream request timeout"
	bodyConnect   = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	bodyReset     = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	bodyRefused   = "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"
	bodyRemote    = "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
	bodyOverflow  = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
	bodyProtocol  = "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
)

// localReply answers from the waypoint: for a gRPC request as gRPC (HTTP
// 200, the status mapped into grpc-status, the text in grpc-message), as
// Envoy does, so a gRPC client sees a proper status.
func (q *request) localReply(status int, body, details string) {
	if q.grpc && status != http.StatusOK {
		msg := body
		if msg == "" {
			msg = http.StatusText(status)
		}
		q.grpcReply(httpToGRPC(status), msg, details)
		return
	}
	if body != "" {
		q.w.Header().Set("Content-Type", "text/plain")
	}
	q.reply(status, []byte(body), details)
}

// reply writes a whole response with the route's response header
// operations and CORS headers.
func (q *request) reply(status int, body []byte, details string) {
	q.details = details
	h := q.w.Header()
	q.decorate(h)
	if name := q.serverName(); name != "" {
		h.Set("Server", name)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	q.w.WriteHeader(status)
	n, _ := q.w.Write(body)
	q.code, q.respBytes, q.wrote = status, int64(n), true
}

// grpcReply answers a gRPC request with a trailers-only response.
func (q *request) grpcReply(code int, msg, details string) {
	q.details = details
	h := q.w.Header()
	q.decorate(h)
	if name := q.serverName(); name != "" {
		h.Set("Server", name)
	}
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	if msg != "" {
		h.Set("Grpc-Message", grpcEncode(msg))
	}
	q.w.WriteHeader(http.StatusOK)
	q.code, q.grpcStatus, q.wrote = http.StatusOK, strconv.Itoa(code), true
}

// decorate adds the response header operations of the levels the request
// reached, most specific first, and the CORS headers.
func (q *request) decorate(h http.Header) {
	if q.attempts > 0 && q.vh != nil && q.vh.Model.AttemptCountInResponse {
		// Upstream answers and the router's own after tries alike.
		h["X-Envoy-Attempt-Count"] = attemptCount(q.attempts)
	}
	if q.rt != nil {
		route.ApplyResponse(h, q.vars(), q.wops, q.rt.Headers, q.vh.Headers, q.ch.table.Headers)
	} else if q.ch.table != nil {
		route.ApplyResponse(h, q.vars(), q.ch.table.Headers)
	}
	for k, v := range q.cors {
		h[k] = v
	}
	if q.res.draining || q.e.draining.Load() {
		// The connection's listener or chain left the configuration: this
		// is its last response.
		h.Set("Connection", "close")
	}
}

// vars are what header values' Envoy operators read (route.Vars).
func (q *request) vars() *route.Vars {
	v := &q.hv
	if v.Request == nil {
		proto := q.r.Proto
		if q.r.ProtoMajor == 2 {
			proto = "HTTP/2"
		}
		*v = route.Vars{Remote: q.remoteAddr(), DirectRemote: q.cs.peer, Local: q.cs.info.Destination,
			Protocol: proto, Start: q.start, Request: q.r.Header, Method: q.r.Method, Authority: q.authority, Path: q.path,
			Scheme: route.RequestScheme(q.r)}
	}
	return v
}

func (q *request) serverName() string {
	if q.ch.hcm != nil {
		return q.ch.hcm.ServerName
	}
	return ""
}

// httpToGRPC maps a local reply's HTTP status to a gRPC status (the gRPC
// HTTP-to-status mapping Envoy uses).
func httpToGRPC(status int) int {
	switch status {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// grpcToHTTP maps a gRPC status to the HTTP status Envoy's router
// reports for it to outlier detection (Google's API error mapping).
func grpcToHTTP(code uint64) int {
	switch code {
	case 0:
		return 200
	case 1:
		return 499 // CANCELLED: the client closed the request
	case 3, 9, 11:
		return 400 // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
	case 4:
		return 504 // DEADLINE_EXCEEDED
	case 5:
		return 404
	case 6, 10:
		return 409 // ALREADY_EXISTS, ABORTED
	case 7:
		return 403
	case 8:
		return 429 // RESOURCE_EXHAUSTED
	case 12:
		return 501
	case 14:
		return 503
	case 16:
		return 401
	}
	return 500 // UNKNOWN, INTERNAL, DATA_LOSS and the rest
}

// grpcEncode percent-encodes a grpc-message as gRPC's wire format wants.
func grpcEncode(s string) string {
	const hexd = "0123456789ABCDEF"
	var out []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			if out != nil {
				out = append(out, c)
			}
			continue
		}
		if out == nil {
			out = append([]byte{}, s[:i]...)
		}
		out = append(out, '%', hexd[c>>4], hexd[c&0xf])
	}
	if out == nil {
		return s
	}
	return string(out)
}
