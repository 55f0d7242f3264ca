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
	pieces                      []piece // value's operators, nil when it has none
	append, ifAbsent, ifPresent bool
	keepEmpty                   bool
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
		// Envoy drops a header to add whose value is empty unless
		// keep_empty_value.
		if !mutable(v.Name) || v.Value == "" && !v.KeepEmpty {
			continue
		}
		hv := headerValue{key: textproto.CanonicalMIMEHeaderKey(v.Name), value: v.Value, append: v.Append, ifAbsent: v.AddIfAbsent, ifPresent: v.OnlyIfPresent, keepEmpty: v.KeepEmpty}
		// A value the translation did not check (a snapshot made in
		// code) whose operators do not parse goes out as written.
		hv.pieces, _ = parseFormat(v.Value)
		out = append(out, hv)
	}
	return out
}

// ApplyRequest applies the request operations of each level in the order
// given; callers pass the most specific level first (weighted cluster,
// route, virtual host, table), which is Envoy's order unless
// most_specific_header_mutations_wins: so with overwrites the least
// specific level has the last word. Within a level removals come before
// additions.
// vars fill in values' operators (nil: they come out empty).
func ApplyRequest(h http.Header, vars *Vars, levels ...*Ops) {
	for _, o := range levels {
		if o == nil {
			continue
		}
		for _, k := range o.reqRemove {
			delete(h, k)
		}
		apply(h, o.reqAdd, vars)
	}
}

// ApplyResponse is ApplyRequest for response headers.
func ApplyResponse(h http.Header, vars *Vars, levels ...*Ops) {
	for _, o := range levels {
		if o == nil {
			continue
		}
		for _, k := range o.respRemove {
			delete(h, k)
		}
		apply(h, o.respAdd, vars)
	}
}

// apply adds one level's headers as Envoy's HeaderParser does: whether an
// ADD_IF_ABSENT or OVERWRITE_IF_EXISTS entry applies is decided on the
// headers as the level found them, then every overwrite is made, then
// every append, each in configured order. So an overwrite listed after an
// append of the same header does not erase that append. A value whose
// operators come out empty is not added, unless keep_empty_value.
func apply(h http.Header, adds []headerValue, vars *Vars) {
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
	var rendered []string // values with operators, filled in once
	for i, a := range adds {
		if a.pieces != nil {
			if rendered == nil {
				rendered = make([]string, len(adds))
			}
			rendered[i] = render(a.pieces, vars)
		}
	}
	value := func(i int) string {
		if adds[i].pieces != nil {
			return rendered[i]
		}
		return adds[i].value
	}
	for i, a := range adds {
		_, there := h[a.key]
		d := uint8(overwrite)
		if a.pieces != nil && rendered[i] == "" && !a.keepEmpty {
			do = append(do, skip)
			continue
		}
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
			h[a.key] = []string{value(i)}
		}
	}
	for i, a := range adds {
		if do[i] == add {
			h[a.key] = append(h[a.key], value(i))
		}
	}
}
