package kube

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// This file is the HTTP/1.1 client the API calls use, in place of
// net/http: linking net/http costs the plugin about 0.5 ms of start-up on
// every run (its package initialisation writes to many data pages, and
// each first write is a copy-on-write fault that, in a process already
// running threads on other CPUs, flushes their TLBs), while a run makes at
// most three requests. It keeps idle connections for the run's later
// requests, opens another one when two requests overlap (Decide reads the
// pod and its namespace at once), reads Content-Length, chunked and
// until-close bodies, and goes through HTTPS_PROXY/HTTP_PROXY (CONNECT for
// https) unless NO_PROXY names the server, as client-go does.

// maxBody bounds an answer's body; an object kmesh-cni reads is far
// smaller.
const maxBody = 16 << 20

type httpClient struct {
	base    *url.URL
	tls     *tls.Config // nil for http
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	timeout time.Duration
	// proxy is the proxy to reach base through, nil for none.
	proxy *url.URL

	mu   sync.Mutex
	idle []*httpConn
}

type httpConn struct {
	c  net.Conn
	br *bufio.Reader
	tp *textproto.Reader
	// used: it carried a request before, so a failure to write the next one
	// or an EOF before its answer means the server closed it while idle.
	used bool
}

// hostPort is u's host with the scheme's default port if it has none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// connect opens a connection to the server, through the proxy if any,
// and completes the TLS handshake.
func (h *httpClient) connect(ctx context.Context) (*httpConn, error) {
	addr := hostPort(h.base)
	if h.proxy != nil {
		addr = hostPort(h.proxy)
	}
	c, err := h.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	hc := &httpConn{c: c}
	hc.br = bufio.NewReaderSize(c, 16<<10)
	hc.tp = textproto.NewReader(hc.br)
	if h.proxy != nil && h.tls != nil {
		if err := h.tunnel(hc); err != nil {
			c.Close()
			return nil, err
		}
	}
	if h.tls != nil {
		cfg := h.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = h.base.Hostname()
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		hc.c = tc
		hc.br = bufio.NewReaderSize(tc, 16<<10)
		hc.tp = textproto.NewReader(hc.br)
	}
	return hc, nil
}

// tunnel asks the proxy for a tunnel to the server (CONNECT).
func (h *httpClient) tunnel(hc *httpConn) error {
	target := hostPort(h.base)
	var b strings.Builder
	fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kmesh-cni\r\n", target, target)
	if auth := proxyAuth(h.proxy); auth != "" {
		fmt.Fprintf(&b, "Proxy-Authorization: %s\r\n", auth)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(hc.c, b.String()); err != nil {
		return fmt.Errorf("proxy %s: %w", h.proxy.Host, err)
	}
	status, _, err := readHead(hc.tp)
	if err != nil {
		return fmt.Errorf("proxy %s: %w", h.proxy.Host, err)
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("proxy %s refused the tunnel to %s: status %d", h.proxy.Host, target, status)
	}
	return nil
}

func proxyAuth(p *url.URL) string {
	if p.User == nil {
		return ""
	}
	pw, _ := p.User.Password()
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(p.User.Username()+":"+pw))
}

// get takes an idle connection or opens one.
func (h *httpClient) get(ctx context.Context) (*httpConn, error) {
	h.mu.Lock()
	if n := len(h.idle); n > 0 {
		hc := h.idle[n-1]
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		return hc, nil
	}
	h.mu.Unlock()
	return h.connect(ctx)
}

func (h *httpClient) put(hc *httpConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.idle) >= 4 {
		hc.c.Close()
		return
	}
	h.idle = append(h.idle, hc)
}

// close drops the idle connections.
func (h *httpClient) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hc := range h.idle {
		hc.c.Close()
	}
	h.idle = nil
}

// errStale is a reused connection the server had closed: the request did
// not reach it and is sent again on a new one.
var errStale = errors.New("idle connection closed by the server")

// do sends one request (header holds extra header lines as name, value
// pairs) and returns the answer's status and body.
func (h *httpClient) do(ctx context.Context, method, path string, header []string, body []byte) (int, []byte, error) {
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	for {
		hc, err := h.get(ctx)
		if err != nil {
			return 0, nil, err
		}
		status, b, keep, err := h.exchange(ctx, hc, method, path, header, body)
		if errors.Is(err, errStale) {
			hc.c.Close()
			continue
		}
		if err != nil || !keep {
			hc.c.Close()
		} else {
			hc.used = true
			h.put(hc)
		}
		return status, b, err
	}
}

// exchange writes the request on hc and reads the answer; keep says
// whether hc can carry another request.
func (h *httpClient) exchange(ctx context.Context, hc *httpConn, method, path string, header []string, body []byte) (status int, b []byte, keep bool, err error) {
	// The connection's deadline is the request's, and the context's
	// cancellation ends a read or write in progress.
	dl, _ := ctx.Deadline()
	_ = hc.c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = hc.c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			// Cancelled at the end: the connection's deadline is spoilt.
			keep = false
		}
		if err == nil {
			return
		}
		// The connection's deadline may fire a moment before the
		// context's timer: the error is the context's all the same.
		cerr := ctx.Err()
		if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) && !dl.IsZero() && !time.Now().Before(dl) {
			cerr = context.DeadlineExceeded
		}
		if cerr != nil {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
	}()

	target := path
	if h.proxy != nil && h.tls == nil {
		// A plain-HTTP proxy takes the absolute URL.
		target = h.base.Scheme + "://" + h.base.Host + path
	}
	var w bytes.Buffer
	fmt.Fprintf(&w, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, h.base.Host)
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&w, "%s: %s\r\n", header[i], header[i+1])
	}
	if h.proxy != nil && h.tls == nil {
		if auth := proxyAuth(h.proxy); auth != "" {
			fmt.Fprintf(&w, "Proxy-Authorization: %s\r\n", auth)
		}
	}
	if body != nil || method == "POST" || method == "PATCH" || method == "PUT" {
		fmt.Fprintf(&w, "Content-Length: %d\r\n", len(body))
	}
	w.WriteString("\r\n")
	w.Write(body)
	if _, err := hc.c.Write(w.Bytes()); err != nil {
		if hc.used && ctx.Err() == nil {
			return 0, nil, false, errStale
		}
		return 0, nil, false, err
	}

	var hdr textproto.MIMEHeader
	for {
		status, hdr, err = readHead(hc.tp)
		if err != nil {
			if hc.used && ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
				return 0, nil, false, errStale
			}
			return 0, nil, false, fmt.Errorf("read the API server's answer: %w", err)
		}
		if status >= 200 || status == 101 {
			break
		}
		// 1xx: informational, the answer follows.
	}
	keep = !headerHas(hdr, "Connection", "close")
	switch {
	case method == "HEAD" || status == 204 || status == 304:
	case headerHas(hdr, "Transfer-Encoding", "chunked"):
		b, err = readChunked(hc.br)
	case hdr.Get("Content-Length") != "":
		n, perr := strconv.ParseInt(strings.TrimSpace(hdr.Get("Content-Length")), 10, 64)
		switch {
		case perr != nil || n < 0:
			err = fmt.Errorf("bad Content-Length %q", hdr.Get("Content-Length"))
		case n > maxBody:
			err = fmt.Errorf("answer of %d bytes is larger than %d", n, maxBody)
		default:
			b = make([]byte, n)
			_, err = io.ReadFull(hc.br, b)
		}
	default:
		// No length: the body ends with the connection.
		keep = false
		b, err = io.ReadAll(io.LimitReader(hc.br, maxBody+1))
		if err == nil && len(b) > maxBody {
			err = fmt.Errorf("answer larger than %d bytes", maxBody)
		}
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("read the API server's answer: %w", err)
	}
	return status, b, keep, nil
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// readHead reads a status line and the header.
func readHead(tp *textproto.Reader) (int, textproto.MIMEHeader, error) {
	line, err := tp.ReadLine()
	if err != nil {
		if err == io.EOF {
			return 0, nil, io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return 0, nil, fmt.Errorf("malformed status line %q", line)
	}
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 {
		return 0, nil, fmt.Errorf("malformed status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, nil, err
	}
	return status, hdr, nil
}

// headerHas tells whether a comma-separated header holds token.
func headerHas(h textproto.MIMEHeader, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// readChunked reads a chunked body (RFC 9112 section 7.1) and its
// trailer section.
func readChunked(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		line, err := readCRLF(br)
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseUint(strings.TrimSpace(size), 16, 63)
		if err != nil {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			break
		}
		if uint64(len(out))+n > maxBody {
			return nil, fmt.Errorf("answer larger than %d bytes", maxBody)
		}
		start := len(out)
		out = append(out, make([]byte, n)...)
		if _, err := io.ReadFull(br, out[start:]); err != nil {
			return nil, err
		}
		if crlf, err := readCRLF(br); err != nil || crlf != "" {
			return nil, fmt.Errorf("chunk not followed by CRLF")
		}
	}
	// Trailer fields, up to an empty line.
	for {
		line, err := readCRLF(br)
		if err != nil {
			return nil, err
		}
		if line == "" {
			return out, nil
		}
	}
}

// readCRLF reads one line of at most 4 KiB without its line end.
func readCRLF(br *bufio.Reader) (string, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > 4096 {
			return "", errors.New("line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		return strings.TrimRight(string(line), "\r\n"), nil
	}
}

// proxyFor returns the proxy for server from the environment
// (HTTPS_PROXY for https, HTTP_PROXY for http, either spelling, and
// NO_PROXY), or nil. As net/http does, loopback servers are never
// proxied.
func proxyFor(server *url.URL, getenv func(string) string) (*url.URL, error) {
	env := func(name string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return getenv(strings.ToLower(name))
	}
	raw := env("HTTP_PROXY")
	if server.Scheme == "https" {
		raw = env("HTTPS_PROXY")
	}
	if raw == "" {
		return nil, nil
	}
	host := server.Hostname()
	if host == "localhost" {
		return nil, nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil, nil
	}
	if noProxy(env("NO_PROXY"), host, server.Port()) {
		return nil, nil
	}
	p, err := url.Parse(raw)
	if err != nil || p.Host == "" {
		// "host:port" without a scheme, as the variables are often set.
		if p, err = url.Parse("http://" + raw); err != nil || p.Host == "" {
			return nil, fmt.Errorf("proxy %q from the environment is not a URL", raw)
		}
	}
	if p.Scheme != "http" {
		return nil, fmt.Errorf("proxy %q: only http:// proxies are supported by kmesh-cni", raw)
	}
	return p, nil
}

// noProxy tells whether the NO_PROXY list exempts host (and port): "*",
// an IP, a CIDR, a domain (which covers its subdomains; a leading dot is
// allowed), each with an optional port.
func noProxy(list, host, port string) bool {
	ip := net.ParseIP(host)
	for _, e := range strings.Split(list, ",") {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if e == "*" {
			return true
		}
		if _, cidr, err := net.ParseCIDR(e); err == nil {
			if ip != nil && cidr.Contains(ip) {
				return true
			}
			continue
		}
		ePort := ""
		if h, p, err := net.SplitHostPort(e); err == nil {
			e, ePort = h, p
		}
		if ePort != "" && ePort != port {
			continue
		}
		if eip := net.ParseIP(e); eip != nil {
			if ip != nil && eip.Equal(ip) {
				return true
			}
			continue
		}
		h := strings.ToLower(host)
		e = strings.TrimPrefix(e, "*")
		d := strings.TrimPrefix(e, ".")
		if h == d || strings.HasSuffix(h, "."+d) {
			return true
		}
	}
	return false
}
