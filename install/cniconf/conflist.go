package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrNotList is returned for a document that has no "plugins" array.
var ErrNotList = errors.New(`not a conflist: no "plugins" array`)

// span is the half-open byte range [start, end) of one JSON value.
type span struct{ start, end int }

// list is where the parts of a conflist sit in its bytes. Edits splice these
// ranges, so everything outside the edited range stays byte-for-byte.
type list struct {
	open, close int    // the plugins array's '[' and ']'
	plugins     []span // its elements
	types       []string
}

// parseList finds the plugins array of a conflist and the type of every entry.
func parseList(doc []byte) (*list, error) {
	if !json.Valid(doc) {
		// Unmarshal names the offending byte; Valid only says no.
		var v any
		if err := json.Unmarshal(doc, &v); err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		return nil, errors.New("invalid JSON")
	}
	i := skipSpace(doc, 0)
	if doc[i] != '{' {
		return nil, errors.New("a conflist must be a JSON object")
	}
	var arr *span
	i = skipSpace(doc, i+1)
	for doc[i] != '}' {
		keyEnd := skipValue(doc, i)
		var key string
		if err := json.Unmarshal(doc[i:keyEnd], &key); err != nil {
			return nil, fmt.Errorf("bad key at byte %d: %w", i, err)
		}
		vStart := skipSpace(doc, skipSpace(doc, keyEnd)+1) // past ':'
		vEnd := skipValue(doc, vStart)
		if key == "plugins" { // like encoding/json, the last duplicate wins
			arr = &span{vStart, vEnd}
		}
		i = skipSpace(doc, vEnd)
		if doc[i] == ',' {
			i = skipSpace(doc, i+1)
		}
	}
	if arr == nil || doc[arr.start] != '[' {
		return nil, ErrNotList
	}
	l := &list{open: arr.start, close: arr.end - 1}
	i = skipSpace(doc, arr.start+1)
	for doc[i] != ']' {
		end := skipValue(doc, i)
		var p struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(doc[i:end], &p); err != nil {
			return nil, fmt.Errorf("plugin %d is not an object: %w", len(l.plugins), err)
		}
		l.plugins = append(l.plugins, span{i, end})
		l.types = append(l.types, p.Type)
		i = skipSpace(doc, end)
		if doc[i] == ',' {
			i = skipSpace(doc, i+1)
		}
	}
	return l, nil
}

// Upsert returns doc, a conflist, with entry as its kmesh-cni plugin. An
// existing kmesh-cni entry is replaced where it stands (extra copies are
// dropped); otherwise entry is appended after the last plugin, laid out like
// it. When the entry is already there as it would be written, doc comes back
// unchanged, so re-running never rewrites the file.
func Upsert(doc, entry []byte) ([]byte, error) {
	var compact bytes.Buffer
	if err := json.Compact(&compact, entry); err != nil {
		return nil, fmt.Errorf("invalid kmesh-cni entry: %w", err)
	}
	l, err := parseList(doc)
	if err != nil {
		return nil, err
	}
	// Drop duplicates from the back, re-reading after each cut.
	for ours := l.indexes(); len(ours) > 1; ours = l.indexes() {
		doc = l.cut(doc, ours[len(ours)-1])
		if l, err = parseList(doc); err != nil {
			return nil, err
		}
	}
	if ours := l.indexes(); len(ours) == 1 {
		p := l.plugins[ours[0]]
		formatted := l.format(doc, ours[0], compact.Bytes())
		if bytes.Equal(doc[p.start:p.end], formatted) {
			return doc, nil
		}
		return splice(doc, p.start, p.end, formatted), nil
	}
	if len(l.plugins) == 0 {
		return splice(doc, l.open+1, l.open+1, compact.Bytes()), nil
	}
	last := len(l.plugins) - 1
	end := l.plugins[last].end
	insert := append([]byte{','}, l.leading(doc, last)...)
	insert = append(insert, l.format(doc, last, compact.Bytes())...)
	return splice(doc, end, end, insert), nil
}

// Remove returns doc without its kmesh-cni entries and whether there were
// any. It undoes Upsert's append exactly: the comma and whitespace Upsert
// put before the entry go with it.
func Remove(doc []byte) ([]byte, bool, error) {
	l, err := parseList(doc)
	if err != nil {
		return nil, false, err
	}
	removed := false
	for ours := l.indexes(); len(ours) > 0; ours = l.indexes() {
		doc = l.cut(doc, ours[len(ours)-1])
		removed = true
		if l, err = parseList(doc); err != nil {
			return nil, false, err
		}
	}
	return doc, removed, nil
}

// Types returns the plugin types of a conflist, in chain order.
func Types(doc []byte) ([]string, error) {
	l, err := parseList(doc)
	if err != nil {
		return nil, err
	}
	return l.types, nil
}

func (l *list) indexes() []int {
	var ours []int
	for k, t := range l.types {
		if t == PluginType {
			ours = append(ours, k)
		}
	}
	return ours
}

// cut removes plugin k and one separator next to it. It shifts what follows,
// so l describes the result no longer.
func (l *list) cut(doc []byte, k int) []byte {
	p := l.plugins[k]
	switch {
	case k > 0: // from the end of the previous plugin: ",<space>entry"
		return splice(doc, l.plugins[k-1].end, p.end, nil)
	case len(l.plugins) > 1: // the first of several: "entry,<space>"
		return splice(doc, p.start, l.plugins[1].start, nil)
	default:
		return splice(doc, p.start, p.end, nil)
	}
}

// leading is the whitespace between plugin k and the separator before it.
func (l *list) leading(doc []byte, k int) []byte {
	from := l.open + 1
	if k > 0 {
		from = l.plugins[k-1].end
		for doc[from] != ',' {
			from++
		}
		from++
	}
	return doc[from:l.plugins[k].start]
}

// format lays out entry the way plugin k is laid out: on one line if it is,
// otherwise indented with its indentation.
func (l *list) format(doc []byte, k int, compact []byte) []byte {
	p := doc[l.plugins[k].start:l.plugins[k].end]
	nl := bytes.IndexByte(p, '\n')
	if nl < 0 {
		return compact
	}
	lead := string(l.leading(doc, k))
	prefix := lead[strings.LastIndexByte(lead, '\n')+1:] // all of lead if no newline
	inner := p[nl+1:]
	inner = inner[:len(inner)-len(bytes.TrimLeft(inner, " \t"))]
	unit := strings.TrimPrefix(string(inner), prefix)
	if unit == "" {
		unit = "  "
	}
	var b bytes.Buffer
	if err := json.Indent(&b, compact, prefix, unit); err != nil {
		return compact // cannot happen: compact came from json.Compact
	}
	return b.Bytes()
}

func splice(doc []byte, from, to int, insert []byte) []byte {
	out := make([]byte, 0, len(doc)-(to-from)+len(insert))
	out = append(out, doc[:from]...)
	out = append(out, insert...)
	return append(out, doc[to:]...)
}

func skipSpace(doc []byte, i int) int {
	for i < len(doc) && (doc[i] == ' ' || doc[i] == '\t' || doc[i] == '\n' || doc[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at doc[i]. doc must be
// valid JSON (parseList checks), which keeps this scanner small.
func skipValue(doc []byte, i int) int {
	switch doc[i] {
	case '"':
		for i++; doc[i] != '"'; i++ {
			if doc[i] == '\\' {
				i++
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch doc[i] {
			case '"':
				i = skipValue(doc, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
	default: // number, true, false, null
		for i < len(doc) && !strings.ContainsRune(",}] \t\r\n", rune(doc[i])) {
			i++
		}
		return i
	}
}
