package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// sniffBufferSize is the size of the reader every connection starts with
// (PROXY header, sniffing): Envoy's http_inspector's first read size too.
const sniffBufferSize = 8192

// maxSniffSize bounds how much of a connection's start is read to tell its
// protocol: an HTTP/1 request line must end within it. Envoy's
// http_inspector doubles its read from 8 KiB up to this (MAX_INSPECT_SIZE)
// and closes a connection still undecided there; a request line longer
// than 8 KiB (a long query string) is still HTTP.
const maxSniffSize = 64 << 10

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

type verdict int

const (
	needMore verdict = iota
	isTCP
	isHTTP1
	isHTTP10 // any HTTP/1.x but HTTP/1.1
	isH2
)

// sniff tells HTTP/1.x, h2c prior knowledge and anything else apart from
// a connection's first bytes, reading only as much as it takes (the
// connection's read deadline bounds the wait).
//
// why not empty ("timeout", "overflow", "closed"): the connection is to be closed, as Envoy's listener does when
// its http_inspector has not decided by listener_filters_timeout and
// continue_on_listener_filters_timeout is off (istiod's waypoint listener;
// active_tcp_socket.cc onTimeout), or when the client closed before
// sending a byte (the listener filter buffer's remote close). So a
// server-first client on a port that needs sniffing is closed, not
// proxied. With continueOnTimeout it goes on as TCP (Envoy's default
// filter chain selection with nothing detected); bytes that still could
// be HTTP when the client half-closed are treated the same way (Envoy
// sees no further event and waits for the timeout).
//
// A request line longer than br holds moves the bytes to a larger reader
// (up to maxSniffSize), returned as nbr: the connection is read through
// it from then on.
func (e *Engine) sniff(c net.Conn, br *bufio.Reader, continueOnTimeout bool) (proto string, nbr *bufio.Reader, why string) {
	for {
		buf, _ := br.Peek(br.Buffered())
		switch classifyStart(buf) {
		case isH2:
			e.stats.sniffed.WithLabelValues("h2c").Inc()
			return model.ProtocolHTTP2, br, ""
		case isHTTP1:
			e.stats.sniffed.WithLabelValues("http1").Inc()
			return model.ProtocolHTTP1, br, ""
		case isHTTP10:
			// Envoy's http_inspector names only HTTP/1.1 'http/1.1';
			// every other HTTP/1.x is 'http/1.0', which istiod's matcher
			// sends to the TCP chain unless PILOT_HTTP10 is on.
			e.stats.sniffed.WithLabelValues("http1").Inc()
			return model.ProtocolHTTP10, br, ""
		case isTCP:
			e.stats.sniffed.WithLabelValues("tcp").Inc()
			return model.ProtocolTCP, br, ""
		}
		if len(buf) >= maxSniffSize {
			// Envoy: "reached max buffer without determining HTTP
			// version, dropping connection".
			e.stats.sniffed.WithLabelValues("overflow").Inc()
			return "", br, "overflow"
		}
		if len(buf) >= br.Size() {
			br = growReader(c, br, min(2*br.Size(), maxSniffSize))
		}
		// Wait for one byte more than we have (Peek returns as soon as the
		// socket gives any).
		if _, err := br.Peek(len(buf) + 1); err != nil {
			undecided := len(buf) > 0 && errors.Is(err, io.EOF)
			if isTimeout(err) || undecided {
				e.stats.sniffed.WithLabelValues("timeout").Inc()
				if continueOnTimeout {
					return model.ProtocolTCP, br, ""
				}
				return "", br, "timeout"
			}
			// Gone (EOF before any byte, a reset): nothing to serve.
			e.stats.sniffed.WithLabelValues("closed").Inc()
			return "", br, "closed"
		}
	}
}

// growReader moves what br holds (all of it is buffered: br is full) to a
// reader of size bytes over the same connection; br goes back to its pool
// when it is the pool's size. The bytes are given to the new reader by its
// first fill (a bytes.Reader yields them in one read), so once it has read
// past them it reads only the connection and a consumer that drains it
// and then reads c directly loses nothing.
func growReader(c net.Conn, br *bufio.Reader, size int) *bufio.Reader {
	held, _ := br.Peek(br.Buffered())
	nbr := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(held)), c), size)
	nbr.Peek(len(held)) // the first fill: everything held, no read of c
	putReader(br)
	return nbr
}

// classifyStart judges the bytes seen so far: the h2 preface, an HTTP/1.x
// request line (token method, target without spaces, HTTP/1.x version),
// (HTTP/1.1 or another minor version), or neither. needMore while a
// prefix could still become either.
func classifyStart(b []byte) verdict {
	if n := min(len(b), len(h2Preface)); bytes.Equal(b[:n], h2Preface[:n]) {
		if len(b) >= len(h2Preface) {
			return isH2
		}
		return needMore
	}
	// Method: a token of at most 20 characters, then one space.
	i := 0
	for ; i < len(b) && b[i] != ' '; i++ {
		if !isTokenChar(b[i]) || i >= 20 {
			return isTCP
		}
	}
	if i == len(b) {
		return needMore
	}
	if i == 0 {
		return isTCP
	}
	line := b[i+1:]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		// No end of line yet: control characters already rule HTTP out.
		for _, c := range line {
			if c < 0x20 && c != '\r' || c == 0x7f {
				return isTCP
			}
		}
		return needMore
	}
	line = bytes.TrimSuffix(line[:end], []byte("\r"))
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return isTCP
	}
	version := line[sp+1:]
	if len(version) == 8 && bytes.HasPrefix(version, []byte("HTTP/1.")) && version[7] >= '0' && version[7] <= '9' {
		if version[7] == '1' {
			return isHTTP1
		}
		return isHTTP10
	}
	return isTCP
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}
