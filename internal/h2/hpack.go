package h2

import (
	"errors"
	"fmt"
	"sync"
)

// HPACK (RFC 7541), as much as unary gRPC needs: what we send goes out as
// literals that never touch the peer's table; what we receive is decoded
// in full (indexed fields, the dynamic table, Huffman strings). Our own,
// not golang.org/x/net's: its package initialisation and the Huffman tree
// it builds on first use cost the plugin's one call per run ~0.1-0.2 ms.
// A differential test and a fuzz target hold it to that package.

// HeaderField is one header.
type HeaderField struct {
	Name, Value string
}

// staticTable is RFC 7541 Appendix A (index 1 first).
var staticTable = [...]HeaderField{
	{":authority", ""}, {":method", "GET"}, {":method", "POST"}, {":path", "/"}, {":path", "/index.html"},
	{":scheme", "http"}, {":scheme", "https"}, {":status", "200"}, {":status", "204"}, {":status", "206"},
	{":status", "304"}, {":status", "400"}, {":status", "404"}, {":status", "500"}, {"accept-charset", ""},
	{"accept-encoding", "gzip, deflate"}, {"accept-language", ""}, {"accept-ranges", ""}, {"accept", ""},
	{"access-control-allow-origin", ""}, {"age", ""}, {"allow", ""}, {"authorization", ""}, {"cache-control", ""},
	{"content-disposition", ""}, {"content-encoding", ""}, {"content-language", ""}, {"content-length", ""},
	{"content-location", ""}, {"content-range", ""}, {"content-type", ""}, {"cookie", ""}, {"date", ""},
	{"etag", ""}, {"expect", ""}, {"expires", ""}, {"from", ""}, {"host", ""}, {"if-match", ""},
	{"if-modified-since", ""}, {"if-none-match", ""}, {"if-range", ""}, {"if-unmodified-since", ""},
	{"last-modified", ""}, {"link", ""}, {"location", ""}, {"max-forwards", ""}, {"proxy-authenticate", ""},
	{"proxy-authorization", ""}, {"range", ""}, {"referer", ""}, {"refresh", ""}, {"retry-after", ""},
	{"server", ""}, {"set-cookie", ""}, {"strict-transport-security", ""}, {"transfer-encoding", ""},
	{"user-agent", ""}, {"vary", ""}, {"via", ""}, {"www-authenticate", ""},
}

// huffmanLens is the length of each byte's code in RFC 7541 Appendix B;
// the code is canonical, so the lengths define it (EOS, symbol 256, is 30
// ones).
var huffmanLens = [256]uint8{
	13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
	28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
	6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
	5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
	13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
	7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
	15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
	6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
	20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
	24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
	22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
	21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
	26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
	19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
	20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
	26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
}

// huffman is the canonical code's decoding table, by code length.
var huffman struct {
	once  sync.Once
	count [31]uint32 // codes of each length
	first [31]uint32 // the first code of each length
	index [31]uint32 // where each length's symbols start in syms
	syms  [257]uint16
}

func buildHuffman() {
	h := &huffman
	var lens [257]uint8
	copy(lens[:], huffmanLens[:])
	lens[256] = 30
	for _, l := range lens {
		h.count[l]++
	}
	// Symbols by (length, value), as the canonical code assigns them.
	var next [31]uint32
	for l, n := uint32(1), uint32(0); l <= 30; l++ {
		h.index[l], next[l] = n, n
		n += h.count[l]
	}
	for s, l := range lens {
		h.syms[next[l]] = uint16(s)
		next[l]++
	}
	// Canonical: each length's first code follows the last of the one
	// before, shifted by a bit.
	for l, code := 1, uint32(0); l <= 30; l++ {
		h.first[l] = code
		code = (code + h.count[l]) << 1
	}
}

var errHuffman = errors.New("hpack: invalid Huffman-coded string")

// huffmanDecode decodes a Huffman-coded string: codes, then at most 7 bits
// of padding, all ones (a prefix of EOS).
func huffmanDecode(src []byte, max int) (string, error) {
	huffman.once.Do(buildHuffman)
	h := &huffman
	out := make([]byte, 0, len(src)*8/5)
	code, l := uint32(0), 0
	for _, c := range src {
		for bit := 7; bit >= 0; bit-- {
			code = code<<1 | uint32(c>>bit&1)
			l++
			if d := code - h.first[l]; d < h.count[l] {
				s := h.syms[h.index[l]+d]
				if s == 256 {
					return "", errHuffman // EOS inside a string
				}
				if len(out) == max {
					return "", errors.New("hpack: string too long")
				}
				out = append(out, byte(s))
				code, l = 0, 0
			} else if l == 30 {
				return "", errHuffman
			}
		}
	}
	if l > 7 || code != 1<<l-1 {
		return "", errHuffman
	}
	return string(out), nil
}

// Decoder decodes one direction's header blocks, keeping the dynamic
// table in step with the peer's encoder.
type Decoder struct {
	dyn []HeaderField // oldest first
	// size is the table's size by RFC 7541's count; max its bound now,
	// limit ours (SETTINGS_HEADER_TABLE_SIZE, the default 4096).
	size, max, limit int
	maxString        int
}

// NewDecoder makes a decoder for a table of at most limit bytes (the
// SETTINGS_HEADER_TABLE_SIZE we announced) that refuses strings longer
// than maxString.
func NewDecoder(limit, maxString int) *Decoder {
	return &Decoder{max: limit, limit: limit, maxString: maxString}
}

var errTruncated = errors.New("hpack: truncated header block")

// readInt reads an integer with an n-bit prefix.
func readInt(b []byte, n uint) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errTruncated
	}
	mask := uint64(1)<<n - 1
	v := uint64(b[0]) & mask
	b = b[1:]
	if v < mask {
		return v, b, nil
	}
	for m := uint(0); len(b) > 0; {
		c := b[0]
		b = b[1:]
		v += uint64(c&0x7f) << m
		if c&0x80 == 0 {
			return v, b, nil
		}
		if m += 7; m >= 63 {
			return 0, nil, errors.New("hpack: integer overflow")
		}
	}
	return 0, nil, errTruncated
}

func (d *Decoder) readString(b []byte) (string, []byte, error) {
	if len(b) == 0 {
		return "", nil, errTruncated
	}
	huff := b[0]&0x80 != 0
	n, b, err := readInt(b, 7)
	if err != nil {
		return "", nil, err
	}
	if n > uint64(d.maxString) {
		return "", nil, errors.New("hpack: string too long")
	}
	if n > uint64(len(b)) {
		return "", nil, errTruncated
	}
	raw := b[:n]
	b = b[n:]
	if !huff {
		return string(raw), b, nil
	}
	s, err := huffmanDecode(raw, d.maxString)
	return s, b, err
}

// at is the field at index i (1-based; static, then dynamic, newest first).
func (d *Decoder) at(i uint64) (HeaderField, error) {
	switch {
	case i == 0:
		return HeaderField{}, errors.New("hpack: index 0")
	case i <= uint64(len(staticTable)):
		return staticTable[i-1], nil
	case i-uint64(len(staticTable)) <= uint64(len(d.dyn)):
		return d.dyn[len(d.dyn)-int(i-uint64(len(staticTable)))], nil
	}
	return HeaderField{}, fmt.Errorf("hpack: index %d beyond the table", i)
}

func (d *Decoder) evictTo(max int) {
	n := 0
	for d.size > max && n < len(d.dyn) {
		d.size -= len(d.dyn[n].Name) + len(d.dyn[n].Value) + 32
		n++
	}
	d.dyn = append(d.dyn[:0], d.dyn[n:]...)
}

func (d *Decoder) add(f HeaderField) {
	sz := len(f.Name) + len(f.Value) + 32
	if sz > d.max {
		d.dyn, d.size = d.dyn[:0], 0
		return
	}
	d.evictTo(d.max - sz)
	d.dyn = append(d.dyn, f)
	d.size += sz
}

// Decode decodes one complete header block, calling emit per field.
func (d *Decoder) Decode(b []byte, emit func(HeaderField)) error {
	// reprs counts representations, size updates included: a size update
	// after one is refused while the table holds something (as
	// golang.org/x/net does, whose reading grpc-go's encoder is
	// tested against).
	reprs := 0
	for ; len(b) > 0; reprs++ {
		c := b[0]
		var f HeaderField
		var err error
		switch {
		case c&0x80 != 0: // indexed field
			var i uint64
			if i, b, err = readInt(b, 7); err != nil {
				return err
			}
			if f, err = d.at(i); err != nil {
				return err
			}
		case c&0xe0 == 0x20: // dynamic table size update
			if reprs > 0 && d.size > 0 {
				return errors.New("hpack: table size update after a field")
			}
			var n uint64
			if n, b, err = readInt(b, 5); err != nil {
				return err
			}
			if n > uint64(d.limit) {
				return fmt.Errorf("hpack: table size %d over %d", n, d.limit)
			}
			d.max = int(n)
			d.evictTo(d.max)
			continue
		default: // literal: with indexing (01), without (0000) or never indexed (0001)
			indexing := c&0xc0 == 0x40
			prefix := uint(4)
			if indexing {
				prefix = 6
			}
			var i uint64
			if i, b, err = readInt(b, prefix); err != nil {
				return err
			}
			if i == 0 {
				if f.Name, b, err = d.readString(b); err != nil {
					return err
				}
			} else {
				var named HeaderField
				if named, err = d.at(i); err != nil {
					return err
				}
				f.Name = named.Name
			}
			if f.Value, b, err = d.readString(b); err != nil {
				return err
			}
			if indexing {
				d.add(f)
			}
		}
		emit(f)
	}
	return nil
}

// appendHpackInt appends v with an n-bit prefix whose other bits are first.
func appendHpackInt(b []byte, n uint, first byte, v uint64) []byte {
	mask := uint64(1)<<n - 1
	if v < mask {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(mask))
	for v -= mask; v >= 0x80; v >>= 7 {
		b = append(b, byte(v)|0x80)
	}
	return append(b, byte(v))
}

// AppendHeader appends a field as a literal without indexing, name and
// value as plain strings: the peer's table is never touched.
func AppendHeader(b []byte, name, value string) []byte {
	b = append(b, 0)
	b = appendHpackInt(b, 7, 0, uint64(len(name)))
	b = append(b, name...)
	b = appendHpackInt(b, 7, 0, uint64(len(value)))
	return append(b, value...)
}
