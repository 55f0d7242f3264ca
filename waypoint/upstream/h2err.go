package upstream

import (
	"errors"
	"strings"

	"golang.org/x/net/http2"
)

// StreamReset is how an HTTP/2 stream to an endpoint ended early, in the
// terms of Envoy's codec (source/common/http/http2/codec_impl.cc,
// onStreamClose), which its router's flags and retry conditions read.
type StreamReset int

const (
	// NotReset: no reset of the endpoint's; the connection ended, a
	// local error, or not HTTP/2 at all.
	NotReset StreamReset = iota
	// RefusedStream: never processed. The endpoint's RST_STREAM
	// (REFUSED_STREAM), or a stream above the last one its GOAWAY
	// accepted, whatever the GOAWAY's error code: nghttp2 and oghttp2 close
	// those with REFUSED_STREAM, Envoy's RemoteRefusedStreamReset.
	RefusedStream
	// RemoteReset: the endpoint's RST_STREAM with any other code.
	RemoteReset
	// ProtocolError: the client reset the stream, or closed the
	// connection, because the endpoint broke the protocol (an answer
	// without :status, DATA beyond the window, a malformed frame): Envoy's
	// ProtocolError, from its codec's messaging errors on a stream
	// (ClientConnectionImpl::getMessagingErrorResetReason) or, by default,
	// from the codec error that closes the connection (CodecClient).
	ProtocolError
)

// Texts of net/http's HTTP/2 client errors that have no exported value
// or type (its bundled copy of golang.org/x/net/http2, where they are
// unexported too). TestH2StreamResetsClassified provokes each of them
// from the Go in use, so a Go that words them otherwise fails there
// rather than turning refused streams into plain resets unnoticed.
const (
	// The Cause of a StreamError that came in an RST_STREAM frame (its
	// errFromPeer), against one the client made up itself.
	fromPeerText = "received from peer"
	// A stream above a GOAWAY's last stream (errClientConnGotGoAway).
	goAwayText = "Transport received Server's graceful shutdown GOAWAY"
	// The same for stream 1 when the GOAWAY carries an error code: net/http
	// words it apart (so that its own RoundTrip does not resend it), but
	// the endpoint did not process it either.
	goAwayCodeText = "Transport received GOAWAY from server ErrCode:"
	// The client's ConnectionError, which ends every stream of a
	// connection whose endpoint sent what HTTP/2 forbids.
	connErrorText = "connection error: "
)

// ClassifyReset tells how an error of net/http's HTTP/2 client (from a
// RoundTrip or a response body's Read) ended the stream. The stream
// errors are matched by type: net/http's own converts itself, through
// errors.As, to golang.org/x/net/http2's StreamError; the rest, which
// net/http keeps unexported, by their text.
func ClassifyReset(err error) StreamReset {
	if err == nil {
		return NotReset
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		switch {
		case se.Code == http2.ErrCodeRefusedStream:
			return RefusedStream
		case se.Cause != nil && se.Cause.Error() == fromPeerText:
			return RemoteReset
		}
		// The client's own reset: the endpoint's answer broke the
		// protocol.
		return ProtocolError
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, goAwayText), strings.Contains(msg, goAwayCodeText):
		return RefusedStream
	case strings.Contains(msg, connErrorText):
		return ProtocolError
	}
	return NotReset
}
