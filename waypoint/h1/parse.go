package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// Parser reads HTTP/1.x message heads from a connection. It copies a head
// into one string and cuts every field value, the request target and the
// names it keeps from that string, so a head costs a handful of
// allocations whatever its number of fields (http.ReadRequest and
// http.ReadResponse allocate a string and a slice per field). Framing
// follows RFC 9112 as net/http applies it: Transfer-Encoding chunked wins
// over Content-Length (which is then dropped), differing Content-Lengths,
// obsolete line folding and malformed names or values are refused.
//
// A Parser belongs to one connection. The body of a message it returns is
// valid until the next message is read, and so is a request's Header: the
// map is the parser's, emptied and filled again by the next ReadRequest.
type Parser struct {
	head   []byte
	lines  []span
	keys   []string // the field names of the head being parsed, in order
	length lengthBody
	// The header map and value array of the last request read, reused
	// for the next (see ReadRequest).
	req Fields
}

// Fields is a header map and the array its values are cut from, kept by
// whoever owns the messages' lifetime so that each message needs neither
// made again (three allocations and ~450 bytes for a dozen fields). A map
// filled into a Fields is valid until the next message is filled into it.
type Fields struct {
	h    http.Header
	vals []string
}

type span struct{ start, end int }

// Limits.
const (
	// maxFields is Envoy's default max_headers_count.
	maxFields = 100
	// maxHead bounds a head that arrives in pieces: Envoy's largest
	// max_request_headers_kb default (60 KiB) and room for the start line.
	// A server's reader bounds a request's head by its own limit first.
	maxHead = 64 << 10
)

// ParseError is a message the parser refuses, with the status a server
// answers it with.
type ParseError struct {
	Status int
	Msg    string
	// Public: the message goes into the answer (net/http tells the
	// client why for these only).
	Public bool
}

func (e *ParseError) Error() string { return e.Msg }

func bad(format string, a ...any) error {
	return &ParseError{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, a...)}
}

// readHead reads lines up to the empty one into p.head and returns the
// head as one string with the line spans (the start line first). A head
// that is whole in the reader's buffer (nearly all: it came in one read)
// is cut into lines there, in one pass; otherwise line by line as it
// arrives.
func (p *Parser) readHead(br *bufio.Reader) (string, error) {
	p.head, p.lines = p.head[:0], p.lines[:0]
	if _, err := br.Peek(1); err != nil {
		// Nothing came (what ReadSlice below would say too).
		return "", err
	}
	buf, _ := br.Peek(br.Buffered())
	if end := headEnd(buf); end > 0 {
		for rest := buf[:end]; len(rest) > 0; {
			i := bytes.IndexByte(rest, '\n')
			done, err := p.addLine(rest[:i+1])
			if err != nil {
				return "", err
			}
			rest = rest[i+1:]
			if done {
				break
			}
		}
		br.Discard(end)
		return string(p.head), nil
	}
	var long []byte // a line longer than the reader's buffer, so far
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A long field (a big cookie, a token): kept whole, within the
			// bound on a head (a server's reader bounds it earlier).
			long = append(long, line...)
			if len(p.head)+len(long) > maxHead {
				return "", errHeaderTooLarge
			}
			continue
		}
		if err != nil {
			if err == io.EOF && (len(p.head) > 0 || len(line) > 0 || len(long) > 0) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if long != nil {
			line, long = append(long, line...), nil
		}
		done, err := p.addLine(line)
		if err != nil {
			return "", err
		}
		if done {
			return string(p.head), nil
		}
	}
}

// headEnd is the length of the head at the start of buf (through the
// empty line that ends it; a bare LF counts as a line end, as net/http
// has it), or 0 when buf does not hold all of it.
func headEnd(buf []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return 0
		}
		next := i + j + 1
		// The line is empty (LF or CRLF alone), except the start line.
		if i > 0 && (j == 0 || j == 1 && buf[i] == '\r') {
			return next
		}
		i = next
	}
}

// addLine adds one line of a head (with its line end) to p.head and
// p.lines; done when it is the empty line that ends the head.
func (p *Parser) addLine(line []byte) (done bool, err error) {
	// The line without its CRLF (a bare LF is tolerated, as net/http
	// does).
	n := len(line) - 1
	if n > 0 && line[n-1] == '\r' {
		n--
	}
	if len(p.lines) > 0 {
		if n == 0 {
			return true, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return false, bad("obsolete line folding")
		}
	}
	if len(p.lines) > maxFields {
		return false, &ParseError{Status: http.StatusRequestHeaderFieldsTooLarge, Msg: "too many header fields"}
	}
	start := len(p.head)
	p.head = append(p.head, line[:n]...)
	p.lines = append(p.lines, span{start: start, end: len(p.head)})
	return false, nil
}

// fields parses the header fields of a head into a new header map.
func (p *Parser) fields(head string) (http.Header, error) {
	// Room for the few fields a proxy adds (forwarded proto, request id,
	// attempt count) without growing the map.
	h := make(http.Header, len(p.lines)-1+4)
	// One backing array for every field's value slice.
	_, err := p.fill(head, h, make([]string, 0, len(p.lines)-1))
	if err != nil {
		return nil, err
	}
	return h, nil
}

// fieldsInto parses the header fields of a head into f's map and value
// array, emptied first.
func (p *Parser) fieldsInto(head string, f *Fields) (http.Header, error) {
	if f.h == nil {
		f.h = make(http.Header, len(p.lines)-1+4)
	} else {
		clear(f.h)
	}
	vals, err := p.fill(head, f.h, f.vals[:0])
	if err != nil {
		return nil, err
	}
	f.vals = vals // grown, perhaps, for the next message
	return f.h, nil
}

// fill parses the header fields of a head into h, cutting their value
// slices from vals, and returns vals as filled.
func (p *Parser) fill(head string, h http.Header, vals []string) ([]string, error) {
	p.keys = p.keys[:0]
	repeated := false
	for _, l := range p.lines[1:] {
		line := head[l.start:l.end]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return nil, bad("malformed header line")
		}
		name := line[:colon]
		for i := 0; i < len(name); i++ {
			if !isTokenChar(name[i]) {
				// Including whitespace before the colon (RFC 9112 5.1).
				return nil, &ParseError{Status: http.StatusBadRequest, Msg: "invalid header name", Public: true}
			}
		}
		value := trimOWS(line[colon+1:])
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return nil, bad("invalid header value for %q", name)
			}
		}
		key := name
		if !canonical(name) {
			key = textproto.CanonicalMIMEHeaderKey(name)
		}
		// One map operation per field: a repeated name shows as a map
		// that did not grow (rare); the values of such names are gathered
		// once, at the end.
		vals = append(vals, value)
		p.keys = append(p.keys, key)
		n := len(h)
		h[key] = vals[len(vals)-1 : len(vals) : len(vals)]
		if len(h) == n {
			repeated = true
		}
	}
	if repeated {
		p.gatherRepeated(h, vals)
	}
	return vals, nil
}

// gatherRepeated gives each field name that came more than once all its
// values, in order (the map holds only its last).
func (p *Parser) gatherRepeated(h http.Header, vals []string) {
	all := make(map[string][]string, len(p.keys))
	for i, k := range p.keys {
		all[k] = append(all[k], vals[i])
	}
	for k, vs := range all {
		if len(vs) > 1 {
			h[k] = vs
		}
	}
}

// trimOWS trims spaces and tabs at both ends (strings.Trim with a cutset
// builds the set on every call: it showed in profiles).
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func isTokenChar(c byte) bool { return tokenChars[c] }

// canonical reports whether a valid field name is already in
// textproto.CanonicalMIMEHeaderKey's form (most clients send them so),
// which would then walk it again only to return it as it is.
func canonical(name string) bool {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case upper && 'a' <= c && c <= 'z', !upper && 'A' <= c && c <= 'Z':
			return false
		}
		upper = c == '-'
	}
	return true
}

// tokenChars are RFC 9110's tchar.
var tokenChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0
	}
	return t
}()

// version parses "HTTP/1.0" and "HTTP/1.1".
func version(v string) (minor int, ok bool) {
	switch v {
	case "HTTP/1.1":
		return 1, true
	case "HTTP/1.0":
		return 0, true
	}
	return 0, false
}

// ReadRequest reads a request. tmpl gives the fields a request starts
// with (its context, above all: a copy of tmpl keeps it without the
// allocation WithContext makes). The request's Header is valid until the
// next ReadRequest on p: whoever keeps it longer (a mirror sent later)
// clones it.
func (p *Parser) ReadRequest(br *bufio.Reader, tmpl *http.Request) (*http.Request, error) {
	head, err := p.readHead(br)
	if err != nil {
		return nil, err
	}
	line := head[:p.lines[0].end]
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || target == "" {
		return nil, bad("malformed request line")
	}
	for i := 0; i < len(method); i++ {
		if !isTokenChar(method[i]) {
			return nil, bad("invalid method")
		}
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f {
			return nil, bad("invalid request target")
		}
	}
	minor, ok := version(proto)
	if !ok {
		if strings.HasPrefix(proto, "HTTP/") {
			return nil, &ParseError{Status: http.StatusHTTPVersionNotSupported, Msg: "unsupported protocol version", Public: true}
		}
		return nil, bad("malformed HTTP version %q", proto)
	}
	// The request and its URL in one allocation.
	ru := new(requestURL)
	req := &ru.req
	*req = *tmpl
	req.Method, req.RequestURI, req.Proto, req.ProtoMajor, req.ProtoMinor = method, target, proto, 1, minor
	if method == http.MethodConnect && !strings.HasPrefix(target, "/") {
		return nil, &ParseError{Status: http.StatusMethodNotAllowed, Msg: "CONNECT is not served"}
	}
	if originForm(target, &ru.url) {
		req.URL = &ru.url
	} else if req.URL, err = url.ParseRequestURI(target); err != nil {
		return nil, bad("malformed request target")
	} else if sc := req.URL.Scheme; sc != "" && !strings.EqualFold(sc, "http") && !strings.EqualFold(sc, "https") {
		// An absolute-form target names the scheme the request is for:
		// Envoy's codec refuses one that is neither http nor https
		// (http1 codec_impl.cc, "invalid scheme"), which would otherwise
		// become the request's :scheme.
		return nil, bad("invalid scheme in request target")
	}
	if req.Header, err = p.fieldsInto(head, &p.req); err != nil {
		return nil, err
	}
	h := req.Header
	// The authority: an absolute-form target's, else the Host field (moved
	// out of the header as net/http does).
	hosts := h["Host"]
	if len(hosts) > 1 {
		return nil, bad("too many Host headers")
	}
	if minor >= 1 && len(hosts) == 0 && req.Method != http.MethodConnect {
		// RFC 9112 3.2, absolute-form or not (net/http's answer too).
		return nil, &ParseError{Status: http.StatusBadRequest, Msg: "missing required Host header", Public: true}
	}
	req.Host = req.URL.Host
	if req.Host == "" && len(hosts) == 1 {
		req.Host = hosts[0]
	}
	delete(h, "Host")
	req.Close = shouldClose(minor, h)
	if err := p.framing(req.Header, minor, true, &req.ContentLength, &req.TransferEncoding, &req.Close); err != nil {
		return nil, err
	}
	switch {
	case req.TransferEncoding != nil:
		req.Trailer = declaredTrailers(h)
		req.Body = &chunkedBody{cr: httputil.NewChunkedReader(br), br: br, p: p, trailer: &req.Trailer}
	case req.ContentLength > 0:
		p.length = lengthBody{br: br, remaining: req.ContentLength}
		req.Body = &p.length
	default:
		req.Body = http.NoBody
	}
	return req, nil
}

type requestURL struct {
	req http.Request
	url url.URL
}

// originForm fills u as url.ParseRequestURI would for the common target:
// a path of unreserved characters and slashes, then perhaps a query (a
// target with anything else in its path goes through url.ParseRequestURI:
// escapes, and characters a path may hold but url.URL keeps a RawPath
// for). It reports whether it did.
func originForm(target string, u *url.URL) bool {
	if len(target) == 0 || target[0] != '/' {
		return false
	}
	path, query, hasQuery := strings.Cut(target, "?")
	for i := 0; i < len(path); i++ {
		if !pathChars[path[i]] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < ' ' || c == 0x7f {
			return false // url refuses control bytes (ReadRequest did already)
		}
	}
	if hasQuery && query == "" {
		// "/p?" keeps its question mark: ForceQuery.
		u.Path, u.ForceQuery = path, true
		return true
	}
	if hasQuery && strings.HasSuffix(query, "?") && strings.Count(query, "?") == 1 {
		// url's rule for a target ending in its second "?": leave it to url.
		return false
	}
	u.Path, u.RawQuery = path, query
	return true
}

// pathChars are RFC 3986's unreserved characters and the slash.
var pathChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/", byte(c)) >= 0
	}
	return t
}()

// ReadResponse reads a response to a request of the given method.
func (p *Parser) ReadResponse(br *bufio.Reader, method string) (*http.Response, error) {
	return p.ReadResponseInto(br, method, nil)
}

// ReadResponseInto is ReadResponse with the header filled into into's
// map and array when into is not nil: a proxy hands them to the
// connection the response goes to, whose next request is the earliest
// they are free (the upstream connection may serve another request
// before this response is written out).
func (p *Parser) ReadResponseInto(br *bufio.Reader, method string, into *Fields) (*http.Response, error) {
	head, err := p.readHead(br)
	if err != nil {
		return nil, err
	}
	line := head[:p.lines[0].end]
	proto, rest, ok := strings.Cut(line, " ")
	minor, vok := version(proto)
	if !ok || !vok {
		return nil, fmt.Errorf("malformed HTTP response %q", line)
	}
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || status < 100 {
		return nil, fmt.Errorf("malformed HTTP status code %q", code)
	}
	resp := &http.Response{Status: rest, StatusCode: status, Proto: proto, ProtoMajor: 1, ProtoMinor: minor}
	if into != nil {
		resp.Header, err = p.fieldsInto(head, into)
	} else {
		resp.Header, err = p.fields(head)
	}
	if err != nil {
		return nil, err
	}
	h := resp.Header
	resp.Close = shouldClose(minor, h)
	if resp.Close && minor >= 1 {
		// As net/http: the close is the connection's business, not the
		// message's.
		delete(h, "Connection")
	}
	bodyless := method == http.MethodHead || status < 200 || status == http.StatusNoContent || status == http.StatusNotModified
	if err := p.framing(h, minor, false, &resp.ContentLength, &resp.TransferEncoding, &resp.Close); err != nil {
		return nil, err
	}
	switch {
	case bodyless:
		if method != http.MethodHead {
			resp.ContentLength = 0
		}
		resp.TransferEncoding = nil
		resp.Body = http.NoBody
	case resp.TransferEncoding != nil:
		resp.Trailer = declaredTrailers(h)
		resp.Body = &chunkedBody{cr: httputil.NewChunkedReader(br), br: br, p: p, trailer: &resp.Trailer}
	case resp.ContentLength >= 0:
		p.length = lengthBody{br: br, remaining: resp.ContentLength}
		resp.Body = &p.length
	default:
		// Neither length nor chunks: the body ends with the connection.
		resp.Close = true
		resp.Body = &eofBody{br: br}
	}
	return resp, nil
}

// framing reads the message's framing fields: Transfer-Encoding chunked
// (HTTP/1.1; it wins over Content-Length, which is dropped) or one
// Content-Length (repeated only with the same value). Both fields leave
// the header: they describe this hop only. Without either a request has
// no body (length 0) and a response runs to the close (length -1).
func (p *Parser) framing(h http.Header, minor int, request bool, length *int64, te *[]string, close *bool) error {
	*length = -1
	if request {
		*length = 0
	}
	if tes, ok := h["Transfer-Encoding"]; ok {
		delete(h, "Transfer-Encoding")
		if minor == 0 {
			// RFC 9112 6.1: faulty framing. A request's body could be
			// read as the next request (smuggled past a front end that
			// took the chunks); a response ends with its connection.
			if request {
				return bad("Transfer-Encoding in an HTTP/1.0 request")
			}
			*close = true
		} else {
			if len(tes) != 1 || !strings.EqualFold(strings.TrimSpace(tes[0]), "chunked") {
				return &ParseError{Status: http.StatusNotImplemented, Msg: "unsupported transfer encoding", Public: true}
			}
			if _, both := h["Content-Length"]; both {
				// Envoy refuses such a request (unless
				// allow_chunked_length); after such a response the
				// connection closes (RFC 9112 6.1).
				if request {
					return bad("both Transfer-Encoding and Content-Length")
				}
				*close = true
				delete(h, "Content-Length")
			}
			*te, *length = chunked, -1
			return nil
		}
	}
	cls, ok := h["Content-Length"]
	if !ok {
		return nil
	}
	first := strings.TrimSpace(cls[0])
	for _, v := range cls[1:] {
		if strings.TrimSpace(v) != first {
			return bad("conflicting Content-Length headers")
		}
	}
	n, err := parseLength(first)
	if err != nil {
		return err
	}
	*length = n
	if len(cls) > 1 {
		h["Content-Length"] = cls[:1]
	}
	return nil
}

var chunked = []string{"chunked"}

func parseLength(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, bad("invalid Content-Length %q", s)
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad("invalid Content-Length %q", s)
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, nil
}

// shouldClose applies the Connection field: HTTP/1.1 closes when told
// to, HTTP/1.0 unless told to keep alive.
func shouldClose(minor int, h http.Header) bool {
	conn := h["Connection"]
	if minor == 0 {
		for _, v := range conn {
			if hasToken(v, "keep-alive") {
				return false
			}
		}
		return true
	}
	for _, v := range conn {
		if hasToken(v, "close") {
			return true
		}
	}
	return false
}

// declaredTrailers is the Trailer field's names, to be filled at the end
// of a chunked body (nil when none declared).
func declaredTrailers(h http.Header) http.Header {
	vs, ok := h["Trailer"]
	if !ok {
		return nil
	}
	t := http.Header{}
	for _, v := range vs {
		for _, k := range strings.Split(v, ",") {
			if k = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)); k != "" {
				t[k] = nil
			}
		}
	}
	delete(h, "Trailer")
	return t
}

// lengthBody is a body of known length.
type lengthBody struct {
	br        *bufio.Reader
	remaining int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.br.Read(p)
	b.remaining -= int64(n)
	if err == io.EOF && b.remaining > 0 {
		return n, io.ErrUnexpectedEOF
	}
	if err == nil && b.remaining == 0 {
		err = io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

// chunkedBody is a chunked body; its trailer fields fill the message's
// Trailer map at the end.
type chunkedBody struct {
	cr      io.Reader
	br      *bufio.Reader
	p       *Parser
	trailer *http.Header
	done    bool
	err     error
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.cr.Read(p)
	if err == io.EOF {
		// The last chunk: trailer fields follow, then an empty line.
		if terr := b.readTrailer(); terr != nil {
			b.err = terr
			return n, terr
		}
		b.done = true
	} else if err != nil {
		b.err = err
	}
	return n, err
}

func (b *chunkedBody) readTrailer() error {
	// The trailer section is a head without a start line.
	b.p.head, b.p.lines = b.p.head[:0], b.p.lines[:0]
	b.p.lines = append(b.p.lines, span{})
	for {
		line, err := b.br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return errHeaderTooLarge
			}
			return io.ErrUnexpectedEOF
		}
		n := len(line) - 1
		if n > 0 && line[n-1] == '\r' {
			n--
		}
		if n == 0 {
			break
		}
		if len(b.p.lines) > maxFields {
			return bad("too many trailer fields")
		}
		start := len(b.p.head)
		b.p.head = append(b.p.head, line[:n]...)
		b.p.lines = append(b.p.lines, span{start: start, end: len(b.p.head)})
	}
	if len(b.p.lines) == 1 {
		return nil
	}
	t, err := b.p.fields(string(b.p.head))
	if err != nil {
		return err
	}
	if *b.trailer == nil {
		*b.trailer = http.Header{}
	}
	for k, v := range t {
		(*b.trailer)[k] = v
	}
	return nil
}

func (b *chunkedBody) Close() error { return nil }

// eofBody is a response body delimited by the connection's close.
type eofBody struct{ br *bufio.Reader }

func (b *eofBody) Read(p []byte) (int, error) { return b.br.Read(p) }
func (b *eofBody) Close() error               { return nil }
