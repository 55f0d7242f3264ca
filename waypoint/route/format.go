package route

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Header values with Envoy's command operators (its substitution format,
// as in a VirtualService's `headers: request: set: x-real-ip:
// "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"`). A malformed value is an
// error, as Envoy refuses it; an operator the waypoint does not fill in
// comes out empty, and CheckHeaderValue names it for the translation to
// report.

// Vars is what the operators read, per request.
type Vars struct {
	// Remote is the stream's client (the PROXY header's source, as Envoy's
	// proxy_protocol filter makes it, or X-Forwarded-For's as its HCM
	// reads it without use_remote_address), DirectRemote the TCP peer,
	// Local the original destination.
	Remote, DirectRemote, Local netip.AddrPort
	// Protocol is Envoy's: HTTP/1.0, HTTP/1.1 or HTTP/2.
	Protocol string
	Start    time.Time
	// Request is the request's header (REQ, in request and response
	// headers alike).
	Request http.Header
	// Method, Authority, Path (with the query) and Scheme are REQ's
	// :METHOD, :AUTHORITY, :PATH and :SCHEME: Go keeps the pseudo-headers
	// out of Request.
	Method, Authority, Path, Scheme string
}

// header is REQ's value of a header (name as parseOperator keeps it) and
// whether the request has it.
func (v *Vars) header(name string) (string, bool) {
	switch name {
	case ":authority":
		return v.Authority, v.Authority != ""
	case ":path":
		return v.Path, v.Path != ""
	case ":method":
		return v.Method, v.Method != ""
	case ":scheme":
		return v.Scheme, v.Scheme != ""
	}
	if vs := v.Request[name]; len(vs) > 0 {
		return vs[0], true
	}
	return "", false
}

type opKind uint8

const (
	opLiteral opKind = iota
	opAddr           // one of the connection's addresses (piece.addr, piece.form)
	opProtocol
	opHostname
	opStartTime
	opReq
	opUnsupported // comes out empty
)

// addrForm is how an address operator writes its address.
type addrForm uint8

const (
	withPort addrForm = iota
	withoutPort
	portOnly
)

func remote(v *Vars) netip.AddrPort       { return v.Remote }
func directRemote(v *Vars) netip.AddrPort { return v.DirectRemote }
func local(v *Vars) netip.AddrPort        { return v.Local }

var operators = map[string]piece{
	"DOWNSTREAM_REMOTE_ADDRESS":                     {kind: opAddr, addr: remote},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":        {kind: opAddr, addr: remote, form: withoutPort},
	"DOWNSTREAM_REMOTE_PORT":                        {kind: opAddr, addr: remote, form: portOnly},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS":              {kind: opAddr, addr: directRemote},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": {kind: opAddr, addr: directRemote, form: withoutPort},
	"DOWNSTREAM_LOCAL_ADDRESS":                      {kind: opAddr, addr: local},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":         {kind: opAddr, addr: local, form: withoutPort},
	"DOWNSTREAM_LOCAL_PORT":                         {kind: opAddr, addr: local, form: portOnly},
	"PROTOCOL":                                      {kind: opProtocol},
	"HOSTNAME":                                      {kind: opHostname},
	"START_TIME":                                    {kind: opStartTime},
}

// startTimeLayout is Envoy's default START_TIME format (the access log's
// too).
const startTimeLayout = "2006-01-02T15:04:05.000Z"

// piece is a literal or an operator of a formatted value.
type piece struct {
	kind  opKind
	text  string   // the literal
	names []string // REQ's header names (X?Y: the first present)
	max   int      // REQ's :Z truncation (0: none)
	addr  func(*Vars) netip.AddrPort
	form  addrForm
}

// CheckHeaderValue says what is wrong with a header value's operators
// (err: malformed, as Envoy refuses it too) and which ones the waypoint
// does not fill in (they come out empty; the translation reports them).
func CheckHeaderValue(v string) (unsupported []string, err error) {
	ps, err := parseFormat(v)
	for _, p := range ps {
		if p.kind == opUnsupported {
			unsupported = append(unsupported, p.text)
		}
	}
	return unsupported, err
}

// parseFormat cuts v into literals and operators; nil pieces when v has
// none ('%%' is a literal '%'). An operator is %NAME%, %NAME(ARG)% or
// either with :N after it.
func parseFormat(v string) ([]piece, error) {
	if !strings.Contains(v, "%") {
		return nil, nil
	}
	var out []piece
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			out = append(out, piece{kind: opLiteral, text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(v); {
		c := v[i]
		if c != '%' {
			lit.WriteByte(c)
			i++
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		j := i + 1
		for j < len(v) && (v[j] >= 'A' && v[j] <= 'Z' || v[j] >= '0' && v[j] <= '9' || v[j] == '_') {
			j++
		}
		if j == i+1 {
			return nil, fmt.Errorf("%q: a '%%' at %d starts no operator (write '%%%%' for the character)", v, i)
		}
		name, arg, hasArg := v[i+1:j], "", false
		if j < len(v) && v[j] == '(' {
			k := strings.IndexByte(v[j:], ')')
			if k < 0 {
				return nil, fmt.Errorf("%q: %%%s( is not closed", v, name)
			}
			arg, hasArg = v[j+1:j+k], true
			j += k + 1
		}
		limit, hasLimit := "", false
		if j < len(v) && v[j] == ':' {
			hasLimit = true
			k := j + 1
			for k < len(v) && v[k] >= '0' && v[k] <= '9' {
				k++
			}
			limit = v[j+1 : k]
			j = k
		}
		if j >= len(v) || v[j] != '%' {
			return nil, fmt.Errorf("%q: the operator %%%s at %d does not end with '%%'", v, name, i)
		}
		p, err := operator(name, arg, hasArg, limit, hasLimit)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", v, err)
		}
		flush()
		out = append(out, p)
		i = j + 1
	}
	flush()
	return out, nil
}

// operator makes the piece of one operator; one the waypoint does not
// fill in is opUnsupported (Envoy knows many more, and a header is no
// reason to refuse a whole configuration).
func operator(name, arg string, hasArg bool, limit string, hasLimit bool) (piece, error) {
	if name == "REQ" {
		if !hasArg || arg == "" {
			return piece{}, fmt.Errorf("%%REQ%%: REQ needs a header name in parentheses")
		}
		p := piece{kind: opReq}
		for _, n := range strings.Split(arg, "?") {
			if n == "" {
				return piece{}, fmt.Errorf("%%REQ(%s)%%: empty header name", arg)
			}
			if n[0] == ':' {
				// A pseudo-header (Envoy's names are case-insensitive).
				p.names = append(p.names, strings.ToLower(n))
				continue
			}
			p.names = append(p.names, http.CanonicalHeaderKey(n))
		}
		if len(p.names) > 2 {
			return piece{}, fmt.Errorf("%%REQ(%s)%%: at most one alternative header (X?Y)", arg)
		}
		if hasLimit {
			n, err := strconv.Atoi(limit)
			if err != nil || n <= 0 {
				return piece{}, fmt.Errorf("%%REQ(%s):%s%%: a length limit is :N with N > 0", arg, limit)
			}
			p.max = n
		}
		return p, nil
	}
	if p, ok := operators[name]; ok && !hasArg && !hasLimit {
		return p, nil
	}
	full := name
	if hasArg {
		full += "(" + arg + ")"
	}
	if hasLimit {
		full += ":" + limit
	}
	return piece{kind: opUnsupported, text: "%" + full + "%"}, nil
}

var hostname = func() string {
	h, _ := os.Hostname()
	return h
}()

// render fills the operators in; an operator with no value gives "".
func render(ps []piece, v *Vars) string {
	var b strings.Builder
	for i := range ps {
		p := &ps[i]
		switch p.kind {
		case opLiteral:
			b.WriteString(p.text)
			continue
		case opHostname:
			b.WriteString(hostname)
			continue
		}
		if v == nil {
			continue
		}
		switch p.kind {
		case opAddr:
			writeAddr(&b, p.addr(v), p.form)
		case opProtocol:
			b.WriteString(v.Protocol)
		case opStartTime:
			if !v.Start.IsZero() {
				b.WriteString(v.Start.UTC().Format(startTimeLayout))
			}
		case opReq:
			for _, n := range p.names {
				if s, ok := v.header(n); ok {
					if p.max > 0 && len(s) > p.max {
						s = s[:p.max]
					}
					b.WriteString(s)
					break
				}
			}
		}
	}
	return b.String()
}

func writeAddr(b *strings.Builder, a netip.AddrPort, form addrForm) {
	if !a.IsValid() {
		return
	}
	switch form {
	case withPort:
		b.WriteString(a.String())
	case withoutPort:
		b.WriteString(a.Addr().String())
	case portOnly:
		b.WriteString(strconv.Itoa(int(a.Port())))
	}
}
