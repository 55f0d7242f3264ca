package telemetry

import (
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// AccessLog writes one JSON line per request (and per TCP connection),
// with Envoy's field names. A nil *AccessLog is off: Write returns at once,
// so the proxy builds no Entry when logging is off.
type AccessLog struct {
	mu     sync.Mutex
	w      io.Writer
	buf    []byte
	failed atomic.Uint64
}

// NewAccessLog logs to w; a nil w gives a nil (off) log.
func NewAccessLog(w io.Writer) *AccessLog {
	if w == nil {
		return nil
	}
	return &AccessLog{w: w}
}

// Failed counts lines the writer refused.
func (l *AccessLog) Failed() uint64 {
	if l == nil {
		return 0
	}
	return l.failed.Load()
}

// Entry is one access log line.
type Entry struct {
	Start time.Time
	// Method, Path (as received), Protocol ("HTTP/1.1", "HTTP/2"; none
	// for TCP, as Envoy's %PROTOCOL%).
	Method, Path, Protocol string
	Code                   int
	Flags                  string
	// Details is Envoy's response_code_details: via_upstream for the
	// endpoint's answer, else why a local reply was given (a Deny's reason).
	Details                  string
	BytesReceived, BytesSent int64
	Duration                 time.Duration
	// UpstreamServiceTime is the x-envoy-upstream-service-time the client
	// got ("" if none), a string as Envoy's %RESP(...)% logs it.
	UpstreamServiceTime        string
	UpstreamHost               string
	UpstreamCluster, RouteName string
	RequestID, Authority       string
	UserAgent, XForwardedFor   string
	// Downstream is the stream's client (the PROXY header's source, or
	// X-Forwarded-For's as the HCM reads it), OriginalDst the destination
	// the client dialled (the PROXY header's), Envoy's
	// downstream_remote_address and downstream_local_address.
	Downstream, OriginalDst string
	Traceparent             string
}

// startTimeLayout is Envoy's default %START_TIME%: UTC, milliseconds,
// always three digits.
const startTimeLayout = "2006-01-02T15:04:05.000Z"

// Write appends one line.
func (l *AccessLog) Write(e *Entry) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buf[:0]
	b = append(b, `{"start_time":"`...)
	b = e.Start.UTC().AppendFormat(b, startTimeLayout)
	b = append(b, '"')
	b = field(b, "method", e.Method)
	b = field(b, "path", e.Path)
	b = field(b, "protocol", e.Protocol)
	b = append(b, `,"response_code":`...)
	b = strconv.AppendInt(b, int64(e.Code), 10)
	b = field(b, "response_flags", flags(e.Flags))
	b = field(b, "response_code_details", e.Details)
	b = append(b, `,"bytes_received":`...)
	b = strconv.AppendInt(b, e.BytesReceived, 10)
	b = append(b, `,"bytes_sent":`...)
	b = strconv.AppendInt(b, e.BytesSent, 10)
	b = append(b, `,"duration":`...)
	b = strconv.AppendInt(b, e.Duration.Milliseconds(), 10)
	b = field(b, "upstream_service_time", e.UpstreamServiceTime)
	b = field(b, "upstream_host", e.UpstreamHost)
	b = field(b, "upstream_cluster", e.UpstreamCluster)
	b = field(b, "route_name", e.RouteName)
	b = field(b, "request_id", e.RequestID)
	b = field(b, "authority", e.Authority)
	b = field(b, "user_agent", e.UserAgent)
	b = field(b, "x_forwarded_for", e.XForwardedFor)
	b = field(b, "downstream_remote_address", e.Downstream)
	b = field(b, "downstream_local_address", e.OriginalDst)
	b = field(b, "traceparent", e.Traceparent)
	b = append(b, "}\n"...)
	l.buf = b
	if _, err := l.w.Write(b); err != nil {
		l.failed.Add(1)
	}
}

// field appends ,"name":"value" with null for an empty value, as Envoy's
// JSON format prints an unset field.
func field(b []byte, name, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	if value == "" {
		return append(b, "null"...)
	}
	return appendString(b, value)
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
