package h2

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// The code derived from huffmanLens is RFC 7541's, symbol by symbol: as
// golang.org/x/net encodes each byte (eight copies make whole bytes).
func TestHuffmanCodeIsRFC7541s(t *testing.T) {
	for b := 0; b < 256; b++ {
		s := strings.Repeat(string([]byte{byte(b)}), 8)
		if got, want := int(huffmanLens[b]), int(hpack.HuffmanEncodeLength(s)); got != want {
			t.Fatalf("byte %d: length %d, x/net %d", b, got, want)
		}
		if got, err := huffmanDecode(hpack.AppendHuffmanString(nil, s), 100); err != nil || got != s {
			t.Fatalf("byte %d: %q %v", b, got, err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		if got, err := huffmanDecode(hpack.AppendHuffmanString(nil, string(b)), 100); err != nil || got != string(b) {
			t.Fatalf("%q: %q %v", b, got, err)
		}
	}
}

const testMaxString = 1 << 20

// xnetDecode is golang.org/x/net's reading of the same blocks, one
// decoder for the sequence as on a connection.
type xnetDecoder struct{ d *hpack.Decoder }

func newXnet() *xnetDecoder {
	d := hpack.NewDecoder(4096, nil)
	d.SetMaxStringLength(testMaxString)
	return &xnetDecoder{d}
}

func (x *xnetDecoder) decode(b []byte) ([]HeaderField, error) {
	fs, err := x.d.DecodeFull(b)
	var out []HeaderField
	for _, f := range fs {
		out = append(out, HeaderField{f.Name, f.Value})
	}
	return out, err
}

func ours(d *Decoder, b []byte) ([]HeaderField, error) {
	var out []HeaderField
	err := d.Decode(b, func(f HeaderField) { out = append(out, f) })
	return out, err
}

// Blocks as grpc-go's server writes them (x/net's encoder: indexing,
// Huffman, table size updates), several on one connection.
func TestDecodeAsXNet(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{":status", "content-type", "grpc-status", "grpc-message", "x-long", "date", "grpc-encoding"}
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	dec, x := NewDecoder(4096, testMaxString), newXnet()
	for block := range 300 {
		buf.Reset()
		if block%50 == 7 {
			enc.SetMaxDynamicTableSize(uint32(r.IntN(4097)))
		}
		var want []HeaderField
		for range 1 + r.IntN(6) {
			f := hpack.HeaderField{Name: names[r.IntN(len(names))], Value: strings.Repeat("v", r.IntN(300)) + string(rune('a'+r.IntN(26)))}
			f.Sensitive = r.IntN(5) == 0
			enc.WriteField(f)
			want = append(want, HeaderField{f.Name, f.Value})
		}
		got, err := ours(dec, buf.Bytes())
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("block %d: %v %v, want %v", block, got, err, want)
		}
		if xf, _ := x.decode(buf.Bytes()); !reflect.DeepEqual(xf, want) {
			t.Fatal("x/net disagrees with itself")
		}
	}
}

// What we send reads back the same with x/net's decoder.
func TestEncodeAsXNetReads(t *testing.T) {
	var b []byte
	want := []HeaderField{{":method", "POST"}, {":path", "/kmesh.cni.v1.PodRegistry/EnrollPod"}, {"grpc-timeout", "1999m"},
		{"x", strings.Repeat("y", 200)}, {"", ""}}
	for _, f := range want {
		b = AppendHeader(b, f.Name, f.Value)
	}
	got, err := newXnet().decode(b)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%v %v", got, err)
	}
}

// FuzzHpackDecode: any sequence of blocks, the same fields as x/net's
// decoder or an error where it errs.
//
//	go test ./internal/h2 -run '^$' -fuzz '^FuzzHpackDecode$' -fuzztime=30s
func FuzzHpackDecode(f *testing.F) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, hf := range []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-message", Value: "bad things", Sensitive: true}} {
		enc.WriteField(hf)
	}
	f.Add(buf.Bytes(), []byte{0x82, 0xbe})
	f.Add([]byte{0x3f, 0xe1, 0x1f, 0x82}, []byte{0x40, 0x81, 0xff, 0x00})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		dec, x := NewDecoder(4096, testMaxString), newXnet()
		for _, block := range [][]byte{a, b} {
			got, err := ours(dec, block)
			want, xerr := x.decode(block)
			if (err == nil) != (xerr == nil) {
				t.Fatalf("%x: ours %v, x/net %v", block, err, xerr)
			}
			if err != nil {
				return // the connection would end here
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%x: ours %q, x/net %q", block, got, want)
			}
		}
	})
}
