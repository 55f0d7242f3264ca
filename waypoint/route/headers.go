package route

import (
	"net/http"
	"net/textproto"
	"strings"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Ops is a compiled model.HeaderOps: canonical keys, pseudo-headers and
// Host dropped (Envoy refuses to let headers_to_add or headers_to_remove
// touch them).
type Ops struct {
	reqRemove, respRemove []string
	reqAdd, respAdd       []headerValue
}

type headerValue struct {
	key, value                  string
	append, ifAbsent, ifPresent bool
}

func compileOps(m *model.HeaderOps) *Ops {
	if m == nil {
		return nil
	}
	o := &Ops{
		reqRemove:  canonicalNames(m.RequestRemove),
		respRemove: canonicalNames(m.ResponseRemove),
		reqAdd:     compileValues(m.RequestAdd),
		respAdd:    compileValues(m.ResponseAdd),
	}
	if len(o.reqRemove)+len(o.respRemove)+len(o.reqAdd)+len(o.respAdd) == 0 {
		return nil
	}
	return o
}

func mutable(name string) bool {
	return name != "" && !strings.HasPrefix(name, ":") && !strings.EqualFold(name, "host")
}

func canonicalNames(names []string) []string {
	var out []string
	for _, n := range names {
		if mutable(n) {
			out = append(out, textproto.CanonicalMIMEHeaderKey(n))
		}
	}
	return out
}

func compileValues(vs []model.HeaderValue) []headerValue {
	var out []headerValue
	for _, v := range vs {
		// Envoy drops a header to add whose value is empty (keep_empty_value
		// false, the default).
		if !mutable(v.Name) || v.Value == "" {
			continue
		}
		out = append(out, headerValue{key: textproto.CanonicalMIMEHeaderKey(v.Name), value: v.Value, append: v.Append, ifAbsent: v.AddIfAbsent, ifPresent: v.OnlyIfPresent})
	}
	return out
}

// ApplyRequest applies the request operations of each level in the order
// given; callers pass the most specific level first (weighted cluster,
// route, virtual host, table), which is Envoy's order unless
// most_specific_header_mutations_wins: so with overwrites the least
// specific level has the last word. Within a level removals come before
// additions.
func ApplyRequest(h http.Header, levels ...*Ops) {
	for _, o := range levels {
		if o == nil {
			continue
		}
		for _, k := range o.reqRemove {
			delete(h, k)
		}
		apply(h, o.reqAdd)
	}
}

// ApplyResponse is ApplyRequest for response headers.
func ApplyResponse(h http.Header, levels ...*Ops) {
	for _, o := range levels {
		if o == nil {
			continue
		}
		for _, k := range o.respRemove {
			delete(h, k)
		}
		apply(h, o.respAdd)
	}
}

// apply adds one level's headers as Envoy's HeaderParser does: whether an
// ADD_IF_ABSENT or OVERWRITE_IF_EXISTS entry applies is decided on the
// headers as the level found them, then every overwrite is made, then
// every append, each in configured order. So an overwrite listed after an
// append of the same header does not erase that append.
func apply(h http.Header, adds []headerValue) {
	const (
		skip = iota
		overwrite
		add
	)
	var buf [16]uint8
	do := buf[:0]
	if len(adds) > len(buf) {
		do = make([]uint8, 0, len(adds))
	}
	for _, a := range adds {
		_, there := h[a.key]
		d := uint8(overwrite)
		switch {
		case a.ifPresent:
			// OVERWRITE_IF_EXISTS: replace a header that is there, never
			// add one.
			if !there {
				d = skip
			}
		case a.ifAbsent:
			d = add
			if there {
				d = skip
			}
		case a.append:
			d = add
		}
		do = append(do, d)
	}
	for i, a := range adds {
		if do[i] == overwrite {
			h[a.key] = []string{a.value}
		}
	}
	for i, a := range adds {
		if do[i] == add {
			h[a.key] = append(h[a.key], a.value)
		}
	}
}
