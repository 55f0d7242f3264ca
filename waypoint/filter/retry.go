package filter

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Envoy's retry backoff defaults: base 25 ms, max 10x base.
const (
	DefaultBackoffBase = 25 * time.Millisecond
	backoffMaxFactor   = 10
)

// Failure is why an attempt got no response.
type Failure int

const (
	// ConnectFailure: the connection could not be made (refused, connect
	// timeout).
	ConnectFailure Failure = iota + 1
	// Reset: the connection or stream broke before a response.
	Reset
	// RefusedStream: HTTP/2 REFUSED_STREAM.
	RefusedStream
	// PerTryTimeout: the attempt's per_try_timeout expired.
	PerTryTimeout
)

// Retry is the retry state of one request under a policy (the router
// filter's RetryState). Nil means no retries.
type Retry struct {
	p         *model.RetryPolicy
	remaining int
	done      int
	base, max time.Duration
}

// NewRetry starts the retry state of a request; nil when the policy
// allows no retry.
func NewRetry(p *model.RetryPolicy) *Retry {
	if p == nil || p.NumRetries <= 0 || len(p.On) == 0 {
		return nil
	}
	base := p.BackoffBase
	if base <= 0 {
		base = DefaultBackoffBase
	}
	maxB := p.BackoffMax
	if maxB <= 0 {
		maxB = backoffMaxFactor * base
	}
	return &Retry{p: p, remaining: p.NumRetries, base: base, max: maxB}
}

// Policy is the retry policy.
func (r *Retry) Policy() *model.RetryPolicy { return r.p }

// Remaining retries.
func (r *Retry) Remaining() int {
	if r == nil {
		return 0
	}
	return r.remaining
}

// RetryConditions are the retry_on conditions known here; translation
// reports any other. Retry applies them all but two that have nothing to
// act on: http3-post-connect-failure (no HTTP/3 upstreams) and
// retriable-headers (its retriable_headers matchers are reported
// unsupported where a policy has them).
var RetryConditions = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true, "connect-failure": true,
	"envoy-ratelimited": true, "retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"retriable-headers": true, "http3-post-connect-failure": true,
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

// gRPC status codes retry_on can name.
var grpcRetryOn = map[uint64]string{
	1:  "cancelled",
	4:  "deadline-exceeded",
	8:  "resource-exhausted",
	13: "internal",
	14: "unavailable",
}

// GRPCStatus reads grpc-status as Envoy does (absl::SimpleAtoi): a number,
// with surrounding spaces, a plus sign and leading zeros allowed.
func GRPCStatus(v string) (uint64, bool) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "+")
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

// RetriableResponse reports whether a response (its status and, for a
// gRPC trailers-only response, the grpc-status in its headers) is one the
// policy retries, regardless of retries left.
func (r *Retry) RetriableResponse(code int, h http.Header) bool {
	if r == nil {
		return false
	}
	on := r.p.On
	// An upstream Envoy's rate-limited answer: only envoy-ratelimited
	// retries it, whatever its status (Envoy checks this first).
	if header.Get(h, "X-Envoy-Ratelimited") != "" {
		return on["envoy-ratelimited"]
	}
	switch {
	case on["5xx"] && code >= 500 && code < 600:
		return true
	case on["gateway-error"] && (code == 502 || code == 503 || code == 504):
		return true
	case on["retriable-4xx"] && code == 409:
		return true
	case on["retriable-status-codes"] && slices.Contains(r.p.RetriableStatusCodes, code):
		return true
	}
	if gs, ok := h["Grpc-Status"]; ok && len(gs) > 0 {
		if n, ok := GRPCStatus(gs[0]); ok && on[grpcRetryOn[n]] {
			return true
		}
	}
	return false
}

// RetriableFailure reports whether an attempt that got no response is one
// the policy retries: 5xx, gateway-error and reset cover every failure
// (a reset or a timeout becomes a 5xx); connect-failure and refused-stream
// their own.
func (r *Retry) RetriableFailure(f Failure) bool {
	if r == nil {
		return false
	}
	on := r.p.On
	if on["5xx"] || on["gateway-error"] || on["reset"] {
		return true
	}
	switch f {
	case ConnectFailure:
		// reset-before-request: nothing of the request went out.
		return on["connect-failure"] || on["reset-before-request"]
	case RefusedStream:
		// Not reset-before-request: the stream's headers went out (Envoy
		// counts the request as started once they are sent).
		return on["refused-stream"]
	}
	return false
}

// Take uses one retry; false when none is left.
func (r *Retry) Take() bool {
	if r == nil || r.remaining <= 0 {
		return false
	}
	r.remaining--
	r.done++
	return true
}

// Backoff is the wait before the retry just taken: uniform in [0, b) with
// b = base·2^(n-1) for the n-th retry, capped at max (Envoy's jittered
// exponential backoff).
func (r *Retry) Backoff() time.Duration {
	b := r.base
	for i := 1; i < r.done && b < r.max; i++ {
		b *= 2
	}
	b = min(b, r.max)
	return time.Duration(rand.Int64N(int64(b)))
}
