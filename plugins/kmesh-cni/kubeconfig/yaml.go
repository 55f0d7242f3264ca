package kubeconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file reads a kubeconfig into JSON. A kubeconfig is JSON or YAML;
// the YAML that kubectl, kubeadm, kind and kmesh-install write is block
// style: mappings, sequences (also at their key's indentation), plain and
// quoted scalars, comments. That is what is read here, with flow
// collections ({a: b}, [c]) that fit on one line. Anything else (anchors,
// tags, block scalars, multi-line plain scalars or flow collections,
// several documents) is refused with the line and a hint, rather than
// guessed at. A YAML library would read
// everything, but its package initialisation alone costs every plugin
// run about 0.2 ms, on every pod, whether it reads a kubeconfig or not.

// kubeconfigJSON returns the kubeconfig b as JSON.
func kubeconfigJSON(b []byte) ([]byte, error) {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		if !json.Valid(t) {
			return nil, fmt.Errorf("the file starts with '{' but is not JSON")
		}
		return t, nil
	}
	p := &yamlParser{}
	if err := p.split(b); err != nil {
		return nil, err
	}
	if len(p.lines) == 0 {
		return nil, fmt.Errorf("the file is empty")
	}
	v, err := p.node(p.lines[0].indent)
	if err != nil {
		return nil, err
	}
	if p.i < len(p.lines) {
		return nil, p.errf(p.lines[p.i], "unexpected indentation")
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("the file is not a mapping of kubeconfig fields")
	}
	return json.Marshal(v)
}

type yamlLine struct {
	num    int // 1-based, for errors
	indent int
	text   string // without indentation and comment
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

func (p *yamlParser) errf(l yamlLine, format string, a ...any) error {
	return fmt.Errorf("line %d: %s (kmesh-cni reads block-style YAML as kubectl writes it, or JSON)", l.num, fmt.Sprintf(format, a...))
}

// split cuts the text into lines with their indentation, dropping blank
// lines, comments and the document markers around one document.
func (p *yamlParser) split(b []byte) error {
	if !utf8.Valid(b) {
		return fmt.Errorf("the file is not UTF-8 text")
	}
	s := strings.TrimPrefix(string(b), "\ufeff")
	if strings.ContainsAny(s, "\u0085\u2028\u2029") {
		return fmt.Errorf("the file holds Unicode line or paragraph separators")
	}
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
	docs := 0
	for n, raw := range strings.Split(s, "\n") {
		text := strings.TrimLeft(raw, " ")
		l := yamlLine{num: n + 1, indent: len(raw) - len(text)}
		if strings.HasPrefix(text, "\t") {
			return p.errf(l, "a tab in the indentation")
		}
		text = strings.TrimRight(stripComment(text), " \t")
		switch {
		case text == "":
			continue
		case l.indent == 0 && (text == "---" || strings.HasPrefix(text, "--- ")):
			if docs++; docs > 1 || len(p.lines) > 0 {
				return p.errf(l, "more than one document")
			}
			if rest := strings.TrimSpace(text[3:]); rest != "" {
				return p.errf(l, "content after the document marker")
			}
			continue
		case l.indent == 0 && text == "...":
			continue
		case l.indent == 0 && strings.HasPrefix(text, "%"):
			return p.errf(l, "a directive")
		}
		l.text = text
		p.lines = append(p.lines, l)
	}
	return nil
}

// stripComment removes a comment: '#' at the start or after a space,
// outside quotes.
func stripComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"' && c == '\\':
			i++
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			// Quotes open a scalar only at its start.
			if i == 0 || s[i-1] == ' ' || s[i-1] == ':' || s[i-1] == '-' || s[i-1] == '[' || s[i-1] == '{' || s[i-1] == ',' {
				quote = c
			}
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

// node reads the mapping or sequence whose lines start at indent.
func (p *yamlParser) node(indent int) (any, error) {
	l := p.lines[p.i]
	if isSeqItem(l.text) {
		return p.seq(indent)
	}
	if _, _, ok := splitKey(l.text); ok {
		return p.mapping(indent)
	}
	return nil, p.errf(l, "%q is neither a key nor a list item", l.text)
}

func isSeqItem(s string) bool { return s == "-" || strings.HasPrefix(s, "- ") }

func (p *yamlParser) seq(indent int) (any, error) {
	out := []any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, p.errf(l, "unexpected indentation")
		}
		if !isSeqItem(l.text) {
			break
		}
		rest := strings.TrimLeft(l.text[1:], " ")
		if rest == "" {
			p.i++
			if p.i < len(p.lines) && p.lines[p.i].indent > indent {
				v, err := p.node(p.lines[p.i].indent)
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			} else {
				out = append(out, nil)
			}
			continue
		}
		// "- key: value" or "- - item": the item is a node whose first
		// line starts where rest does.
		col := indent + (len(l.text) - len(rest))
		if _, _, ok := splitKey(rest); ok || isSeqItem(rest) {
			p.lines[p.i] = yamlLine{num: l.num, indent: col, text: rest}
			v, err := p.node(col)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		v, err := scalar(l, rest)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		p.i++
		if p.i < len(p.lines) && p.lines[p.i].indent > indent {
			return nil, p.errf(p.lines[p.i], "a plain scalar continued on the next line")
		}
	}
	return out, nil
}

func (p *yamlParser) mapping(indent int) (any, error) {
	out := map[string]any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, p.errf(l, "unexpected indentation")
		}
		if isSeqItem(l.text) {
			break
		}
		key, rest, ok := splitKey(l.text)
		if !ok {
			return nil, p.errf(l, "%q is not a key: value pair", l.text)
		}
		k, err := keyString(l, key)
		if err != nil {
			return nil, err
		}
		if _, dup := out[k]; dup {
			return nil, p.errf(l, "key %q appears twice", k)
		}
		p.i++
		if rest != "" {
			if out[k], err = scalar(l, rest); err != nil {
				return nil, err
			}
			if p.i < len(p.lines) && p.lines[p.i].indent > indent {
				return nil, p.errf(p.lines[p.i], "a plain scalar continued on the next line")
			}
			continue
		}
		switch {
		case p.i < len(p.lines) && p.lines[p.i].indent > indent:
			out[k], err = p.node(p.lines[p.i].indent)
		case p.i < len(p.lines) && p.lines[p.i].indent == indent && isSeqItem(p.lines[p.i].text):
			// A sequence may sit at its key's indentation.
			out[k], err = p.seq(indent)
		default:
			out[k] = nil
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// splitKey cuts "key: value" or "key:" at the first ": " (or final ':')
// outside quotes.
func splitKey(s string) (key, rest string, ok bool) {
	i := 0
	if s != "" && (s[0] == '"' || s[0] == '\'') {
		end := closingQuote(s)
		if end < 0 {
			return "", "", false
		}
		i = end + 1
	}
	for ; i < len(s); i++ {
		if s[i] == ':' && (i+1 == len(s) || s[i+1] == ' ') {
			return strings.TrimRight(s[:i], " "), strings.TrimSpace(s[i+1:]), true
		}
	}
	return "", "", false
}

// closingQuote returns the index of the quote that closes the quoted
// scalar at the start of s, or -1.
func closingQuote(s string) int {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case s[i] == q && q == '\'' && i+1 < len(s) && s[i+1] == '\'':
			i++ // '' is an escaped quote
		case s[i] == q:
			return i
		}
	}
	return -1
}

func keyString(l yamlLine, key string) (string, error) {
	v, err := scalar(l, key)
	if err != nil {
		return "", err
	}
	k, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("line %d: a key must be text, not %q", l.num, key)
	}
	return k, nil
}

// scalar reads a value on one line.
func scalar(l yamlLine, s string) (any, error) {
	if s == "" {
		return nil, nil
	}
	switch s[0] {
	case '"':
		if closingQuote(s) != len(s)-1 {
			return nil, fmt.Errorf("line %d: a double-quoted string must end on its line, with nothing after it", l.num)
		}
		return unescapeDouble(l, s[1:len(s)-1])
	case '\'':
		if closingQuote(s) != len(s)-1 {
			return nil, fmt.Errorf("line %d: a single-quoted string must end on its line, with nothing after it", l.num)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case '{', '[':
		f := &flowParser{l: l, s: s}
		v, err := f.value()
		if err != nil {
			return nil, err
		}
		if f.skip(); f.i != len(s) {
			return nil, f.errf("content after the closing %c", s[0]+2)
		}
		return v, nil
	case '|', '>':
		return nil, fmt.Errorf("line %d: block scalars (| and >) are not read by kmesh-cni; put the value on one line", l.num)
	case '&', '*', '!':
		return nil, fmt.Errorf("line %d: anchors, aliases and tags are not read by kmesh-cni", l.num)
	case '@', '`':
		return nil, fmt.Errorf("line %d: a plain scalar cannot start with %q", l.num, s[0])
	}
	switch s {
	case "~", "null", "Null", "NULL":
		return nil, nil
	}
	// Everything else is text: what a field makes of it is the field's
	// type's business (yamlBool), as client-go's YAML reading is directed
	// by the type it fills.
	return s, nil
}

// yamlBool is a kubeconfig boolean: JSON true or false, or the words YAML
// (1.1, as kubectl reads it) takes for them.
type yamlBool bool

func (b *yamlBool) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		*b = false
		return nil
	case bool:
		*b = yamlBool(v)
		return nil
	case string:
		switch v {
		case "true", "True", "TRUE", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON":
			*b = true
			return nil
		case "false", "False", "FALSE", "n", "N", "no", "No", "NO", "off", "Off", "OFF":
			*b = false
			return nil
		}
	}
	return fmt.Errorf("%s is not a boolean", data)
}

func unescapeDouble(l yamlLine, s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(s) {
			return "", fmt.Errorf("line %d: a string ending in a backslash", l.num)
		}
		if r := simpleEscape(s[i]); r != "" {
			b.WriteString(r)
			continue
		}
		size := 0
		switch s[i] {
		case 'x':
			size = 2
		case 'u':
			size = 4
		case 'U':
			size = 8
		default:
			return "", fmt.Errorf("line %d: unknown escape \\%c", l.num, s[i])
		}
		if i+size >= len(s) {
			return "", fmt.Errorf("line %d: short escape \\%c", l.num, s[i])
		}
		n, err := strconv.ParseUint(s[i+1:i+1+size], 16, 32)
		if err != nil || !utf8.ValidRune(rune(n)) {
			return "", fmt.Errorf("line %d: bad escape \\%s", l.num, s[i:min(i+1+size, len(s))])
		}
		b.WriteRune(rune(n))
		i += size
	}
	return b.String(), nil
}

func simpleEscape(c byte) string {
	switch c {
	case '0':
		return "\x00"
	case 'a':
		return "\a"
	case 'b':
		return "\b"
	case 't', '\t':
		return "\t"
	case 'n':
		return "\n"
	case 'v':
		return "\v"
	case 'f':
		return "\f"
	case 'r':
		return "\r"
	case 'e':
		return "\x1b"
	case ' ':
		return " "
	case '"':
		return `"`
	case '/':
		return "/"
	case '\\':
		return `\`
	case 'N':
		return "\u0085"
	case '_':
		return "\u00a0"
	case 'L':
		return "\u2028"
	case 'P':
		return "\u2029"
	}
	return ""
}

// flowParser reads a flow collection that fits on its line.
type flowParser struct {
	l yamlLine
	s string
	i int
}

func (f *flowParser) errf(format string, a ...any) error {
	return fmt.Errorf("line %d, column %d: %s (kmesh-cni reads flow collections on one line)", f.l.num, f.l.indent+f.i+1, fmt.Sprintf(format, a...))
}

func (f *flowParser) skip() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

// value reads a collection or a scalar.
func (f *flowParser) value() (any, error) {
	f.skip()
	if f.i == len(f.s) {
		return nil, f.errf("the line ends inside a flow collection")
	}
	switch c := f.s[f.i]; c {
	case '{':
		f.i++
		out := map[string]any{}
		for {
			f.skip()
			if f.i < len(f.s) && f.s[f.i] == '}' {
				f.i++
				return out, nil
			}
			k, err := f.value()
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, f.errf("a key that is not a string")
			}
			if _, dup := out[ks]; dup {
				return nil, f.errf("key %q appears twice", ks)
			}
			f.skip()
			var v any
			if f.i < len(f.s) && f.s[f.i] == ':' {
				f.i++
				f.skip()
				if f.i < len(f.s) && f.s[f.i] != ',' && f.s[f.i] != '}' {
					if v, err = f.value(); err != nil {
						return nil, err
					}
				}
			}
			out[ks] = v
			if err := f.next('}'); err != nil {
				return nil, err
			}
		}
	case '[':
		f.i++
		out := []any{}
		for {
			f.skip()
			if f.i < len(f.s) && f.s[f.i] == ']' {
				f.i++
				return out, nil
			}
			v, err := f.value()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			if err := f.next(']'); err != nil {
				return nil, err
			}
		}
	case '"', '\'':
		end := closingQuote(f.s[f.i:])
		if end < 0 {
			return nil, f.errf("a quoted string that does not end on its line")
		}
		v, err := scalar(f.l, f.s[f.i:f.i+end+1])
		f.i += end + 1
		return v, err
	case ',', ']', '}', ':':
		return nil, f.errf("unexpected %q", c)
	}
	start := f.i
	for f.i < len(f.s) {
		c := f.s[f.i]
		if c == ',' || c == '[' || c == ']' || c == '{' || c == '}' {
			break
		}
		if c == ':' && (f.i+1 == len(f.s) || f.s[f.i+1] == ' ' || f.s[f.i+1] == ',' || f.s[f.i+1] == '}' || f.s[f.i+1] == ']') {
			break
		}
		if c == '#' && f.s[f.i-1] == ' ' {
			break
		}
		f.i++
	}
	return scalar(f.l, strings.TrimRight(f.s[start:f.i], " "))
}

// next consumes the ',' between entries, or sees the closing bracket.
func (f *flowParser) next(closing byte) error {
	f.skip()
	switch {
	case f.i == len(f.s):
		return f.errf("the line ends inside a flow collection")
	case f.s[f.i] == ',':
		f.i++
		return nil
	case f.s[f.i] == closing:
		return nil
	}
	return f.errf("expected ',' or %q, found %q", closing, f.s[f.i])
}
