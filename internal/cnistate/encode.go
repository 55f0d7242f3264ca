package cnistate

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON appends r as an indented JSON object, field for field what
// encoding/json writes for it (its tags, omitempty, RFC 3339 time); a
// test holds the two together. Written by hand because kmesh-cni saves a
// record in every ADD and exits: encoding/json's first use of a type
// builds its encoder by reflection, ~0.15 ms of a process that lives ~5.
func (r *Record) appendJSON(b []byte) []byte {
	e := encoder{b: append(b, '{')}
	e.str("network", r.Network, false)
	e.str("containerID", r.ContainerID, false)
	e.str("ifName", r.IfName, false)
	e.str("netns", r.Netns, false)
	e.uint("cookie", r.Cookie, false)
	e.str("podName", r.PodName, true)
	e.str("podNamespace", r.PodNamespace, true)
	e.str("podUID", r.PodUID, true)
	if len(r.IPs) > 0 {
		e.key("ips")
		e.b = append(e.b, '[')
		for i, ip := range r.IPs {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.b = append(e.b, "\n    "...)
			e.b = appendString(e.b, ip)
		}
		e.b = append(e.b, "\n  ]"...)
	}
	if len(r.Interfaces) > 0 {
		e.key("interfaces")
		e.b = append(e.b, '[')
		for i, f := range r.Interfaces {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.b = append(e.b, "\n    {\n      \"name\": "...)
			e.b = appendString(e.b, f.Name)
			if f.Mac != "" {
				e.b = append(e.b, ",\n      \"mac\": "...)
				e.b = appendString(e.b, f.Mac)
			}
			if f.Sandbox != "" {
				e.b = append(e.b, ",\n      \"sandbox\": "...)
				e.b = appendString(e.b, f.Sandbox)
			}
			e.b = append(e.b, "\n    }"...)
		}
		e.b = append(e.b, "\n  ]"...)
	}
	e.str("hostVeth", r.HostVeth, true)
	if r.HostIfindex != 0 {
		e.key("hostIfindex")
		e.b = strconv.AppendInt(e.b, int64(r.HostIfindex), 10)
	}
	e.str("bpfDir", r.BPFDir, false)
	e.bool("enrolled", r.Enrolled)
	if r.WantEnrolled {
		e.bool("wantEnrolled", true)
	}
	e.str("tcKey", r.TCKey, true)
	e.str("reason", r.Reason, true)
	e.str("cgroupPath", r.CgroupPath, true)
	e.uint("cgroupID", r.CgroupID, true)
	e.bool("signaled", r.Signaled)
	e.key("created")
	e.b = append(e.b, '"')
	e.b = r.Created.AppendFormat(e.b, time.RFC3339Nano)
	e.b = append(e.b, '"')
	return append(e.b, "\n}"...)
}

type encoder struct {
	b []byte
	// more: a member is written, so the next one needs a comma.
	more bool
}

func (e *encoder) key(k string) {
	if e.more {
		e.b = append(e.b, ',')
	}
	e.more = true
	e.b = append(e.b, "\n  \""...)
	e.b = append(e.b, k...)
	e.b = append(e.b, "\": "...)
}

func (e *encoder) str(k, v string, omitEmpty bool) {
	if omitEmpty && v == "" {
		return
	}
	e.key(k)
	e.b = appendString(e.b, v)
}

func (e *encoder) uint(k string, v uint64, omitEmpty bool) {
	if omitEmpty && v == 0 {
		return
	}
	e.key(k)
	e.b = strconv.AppendUint(e.b, v, 10)
}

func (e *encoder) bool(k string, v bool) {
	e.key(k)
	e.b = strconv.AppendBool(e.b, v)
}

const hexDigits = "0123456789abcdef"

// appendString quotes s as encoding/json does by default: control
// characters, '"', '\\', and (for HTML) '<', '>', '&' escaped, as are
// U+2028 and U+2029; bytes that are not UTF-8 become U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
