// Package jsontree reads a JSON document into a tree of values, without
// reflection.
//
// kmesh-cni is a process that lives a few milliseconds per pod. Reading
// its conf with encoding/json cost ~0.3 ms of that: the decoder builds its
// per-type caches by reflection on every run, before it reads a byte. This
// reader takes ~0.03 ms for the same conf.
//
// The grammar is RFC 8259's, exactly as encoding/json accepts it (a
// differential fuzz test holds the two together): insignificant
// whitespace is space, tab, CR and LF; strings may carry bytes that are not
// UTF-8, each read as U+FFFD, and a lone surrogate escape is read as U+FFFD
// too; nesting is bounded at the same depth.
package jsontree

import (
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// Kind is a JSON value's type.
type Kind uint8

const (
	Null Kind = iota
	Bool
	Number
	String
	Array
	Object
)

func (k Kind) String() string {
	switch k {
	case Null:
		return "null"
	case Bool:
		return "bool"
	case Number:
		return "number"
	case String:
		return "string"
	case Array:
		return "array"
	case Object:
		return "object"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Value is one JSON value.
type Value struct {
	Kind Kind
	// Bool is a Bool's value.
	Bool bool
	// Str is a String's text, unescaped, or a Number's literal.
	Str string
	// Raw is the value's own bytes in the document (sharing its memory).
	Raw []byte
	// Items are an Array's elements.
	Items []Value
	// Members are an Object's members, in document order, duplicates
	// included.
	Members []Member
}

// Member is one name/value pair of an object.
type Member struct {
	Key   string
	Value Value
}

// Get returns the object's member named key. With duplicates, the last
// one counts, as with encoding/json.
func (v *Value) Get(key string) (*Value, bool) {
	for i := len(v.Members) - 1; i >= 0; i-- {
		if v.Members[i].Key == key {
			return &v.Members[i].Value, true
		}
	}
	return nil, false
}

// SyntaxError says where a document stops being JSON.
type SyntaxError struct {
	// Offset is the byte at which the problem was found.
	Offset int
	Msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at byte %d: %s", e.Offset, e.Msg)
}

// maxDepth is encoding/json's bound on nesting.
const maxDepth = 10000

// Parse reads data, which must hold exactly one JSON value (whitespace
// around it aside).
func Parse(data []byte) (Value, error) {
	p := parser{data: data}
	p.space()
	v, err := p.value()
	if err != nil {
		return Value{}, err
	}
	p.space()
	if p.pos < len(p.data) {
		return Value{}, p.fail("trailing data after the top-level value")
	}
	return v, nil
}

type parser struct {
	data  []byte
	pos   int
	depth int
}

func (p *parser) fail(msg string) error {
	return &SyntaxError{Offset: p.pos, Msg: msg}
}

// unexpected reports the byte at pos (or the end of the input) where
// something else had to be.
func (p *parser) unexpected(want string) error {
	if p.pos >= len(p.data) {
		return p.fail("unexpected end of input, looking for " + want)
	}
	return p.fail(fmt.Sprintf("unexpected %s, looking for %s", quoteByte(p.data[p.pos]), want))
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return fmt.Sprintf("%q", rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

func (p *parser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) at(c byte) bool {
	return p.pos < len(p.data) && p.data[p.pos] == c
}

func (p *parser) value() (Value, error) {
	if p.pos >= len(p.data) {
		return Value{}, p.unexpected("a value")
	}
	start := p.pos
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.str()
		if err != nil {
			return Value{}, err
		}
		return Value{Kind: String, Str: s, Raw: p.data[start:p.pos]}, nil
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == 't':
		return p.literal("true", Value{Kind: Bool, Bool: true})
	case c == 'f':
		return p.literal("false", Value{Kind: Bool})
	case c == 'n':
		return p.literal("null", Value{Kind: Null})
	}
	return Value{}, p.unexpected("a value")
}

func (p *parser) literal(word string, v Value) (Value, error) {
	start := p.pos
	for i := 0; i < len(word); i++ {
		if !p.at(word[i]) {
			return Value{}, p.unexpected(fmt.Sprintf("%q (in literal %s)", word[i], word))
		}
		p.pos++
	}
	v.Raw = p.data[start:p.pos]
	return v, nil
}

func (p *parser) enter() error {
	if p.depth++; p.depth > maxDepth {
		return p.fail("nested too deeply")
	}
	return nil
}

func (p *parser) object() (Value, error) {
	start := p.pos
	if err := p.enter(); err != nil {
		return Value{}, err
	}
	p.pos++ // {
	v := Value{Kind: Object}
	p.space()
	if p.at('}') {
		p.pos++
		p.depth--
		v.Raw = p.data[start:p.pos]
		return v, nil
	}
	for {
		if !p.at('"') {
			return Value{}, p.unexpected("a string (an object key)")
		}
		key, err := p.str()
		if err != nil {
			return Value{}, err
		}
		p.space()
		if !p.at(':') {
			return Value{}, p.unexpected("':' after an object key")
		}
		p.pos++
		p.space()
		val, err := p.value()
		if err != nil {
			return Value{}, err
		}
		v.Members = append(v.Members, Member{Key: key, Value: val})
		p.space()
		switch {
		case p.at(','):
			p.pos++
			p.space()
		case p.at('}'):
			p.pos++
			p.depth--
			v.Raw = p.data[start:p.pos]
			return v, nil
		default:
			return Value{}, p.unexpected("',' or '}' after an object member")
		}
	}
}

func (p *parser) array() (Value, error) {
	start := p.pos
	if err := p.enter(); err != nil {
		return Value{}, err
	}
	p.pos++ // [
	v := Value{Kind: Array}
	p.space()
	if p.at(']') {
		p.pos++
		p.depth--
		v.Raw = p.data[start:p.pos]
		return v, nil
	}
	for {
		item, err := p.value()
		if err != nil {
			return Value{}, err
		}
		v.Items = append(v.Items, item)
		p.space()
		switch {
		case p.at(','):
			p.pos++
			p.space()
		case p.at(']'):
			p.pos++
			p.depth--
			v.Raw = p.data[start:p.pos]
			return v, nil
		default:
			return Value{}, p.unexpected("',' or ']' after an array element")
		}
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *parser) number() (Value, error) {
	start := p.pos
	digits := func(what string) error {
		if p.pos >= len(p.data) || !isDigit(p.data[p.pos]) {
			return p.unexpected(what)
		}
		for p.pos < len(p.data) && isDigit(p.data[p.pos]) {
			p.pos++
		}
		return nil
	}
	if p.at('-') {
		p.pos++
	}
	if p.at('0') {
		p.pos++
	} else if err := digits("a digit"); err != nil {
		return Value{}, err
	}
	if p.at('.') {
		p.pos++
		if err := digits("a digit after the decimal point"); err != nil {
			return Value{}, err
		}
	}
	if p.at('e') || p.at('E') {
		p.pos++
		if p.at('+') || p.at('-') {
			p.pos++
		}
		if err := digits("a digit in the exponent"); err != nil {
			return Value{}, err
		}
	}
	raw := p.data[start:p.pos]
	return Value{Kind: Number, Str: string(raw), Raw: raw}, nil
}

// str reads a string starting at its opening quote.
func (p *parser) str() (string, error) {
	p.pos++ // "
	start := p.pos
	ascii := true
	for i := start; i < len(p.data); i++ {
		switch c := p.data[i]; {
		case c == '"':
			p.pos = i + 1
			if ascii || utf8.Valid(p.data[start:i]) {
				return string(p.data[start:i]), nil
			}
			return p.unquote(start)
		case c == '\\':
			return p.unquote(start)
		case c < 0x20:
			p.pos = i
			return "", p.fail(fmt.Sprintf("control character 0x%02x in a string (escape it)", c))
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	p.pos = len(p.data)
	return "", p.fail("unexpected end of input in a string")
}

// unquote reads a string with escapes or bytes that are not UTF-8, from
// just after its opening quote.
func (p *parser) unquote(start int) (string, error) {
	b := make([]byte, 0, 32)
	i := start
	for i < len(p.data) {
		c := p.data[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return string(b), nil
		case c < 0x20:
			p.pos = i
			return "", p.fail(fmt.Sprintf("control character 0x%02x in a string (escape it)", c))
		case c == '\\':
			if i+1 >= len(p.data) {
				p.pos = len(p.data)
				return "", p.fail("unexpected end of input in a string escape")
			}
			switch e := p.data[i+1]; e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := hex4(p.data[i+2:])
				if !ok {
					p.pos = i
					return "", p.fail(`invalid \u escape (want four hex digits)`)
				}
				i += 6
				if utf16.IsSurrogate(r) {
					// A pair is two escapes; anything else is U+FFFD and
					// what follows is read on its own.
					if i+1 < len(p.data) && p.data[i] == '\\' && p.data[i+1] == 'u' {
						if r2, ok := hex4(p.data[i+2:]); ok {
							if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
								b = utf8.AppendRune(b, d)
								i += 6
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
				continue
			default:
				p.pos = i
				return "", p.fail(fmt.Sprintf("invalid escape \\%s in a string", string(rune(e))))
			}
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRune(p.data[i:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, p.data[i:i+size]...)
			}
			i += size
		}
	}
	p.pos = len(p.data)
	return "", p.fail("unexpected end of input in a string")
}

// hex4 reads the four hex digits of a \u escape.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}
