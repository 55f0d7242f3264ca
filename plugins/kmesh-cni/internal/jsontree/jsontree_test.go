package jsontree

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// generic turns a tree into what encoding/json makes of the same document
// (with UseNumber), so the two can be compared.
func generic(v Value) any {
	switch v.Kind {
	case Null:
		return nil
	case Bool:
		return v.Bool
	case Number:
		return json.Number(v.Str)
	case String:
		return v.Str
	case Array:
		out := []any{}
		for _, it := range v.Items {
			out = append(out, generic(it))
		}
		return out
	case Object:
		out := map[string]any{}
		for _, m := range v.Members {
			out[m.Key] = generic(m.Value)
		}
		return out
	}
	panic("kind")
}

// same checks data against encoding/json: accepted by both or by neither,
// read the same, and each value's Raw is its own text.
func same(t *testing.T, data []byte) {
	t.Helper()
	v, err := Parse(data)
	valid := json.Valid(data)
	if (err == nil) != valid {
		t.Fatalf("%q: jsontree error %v, encoding/json valid %v", data, err, valid)
	}
	if err != nil {
		var se *SyntaxError
		if !errors.As(err, &se) || se.Offset < 0 || se.Offset > len(data) {
			t.Fatalf("%q: error %v has no offset in the input", data, err)
		}
		return
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var want any
	if err := dec.Decode(&want); err != nil {
		t.Fatalf("%q: encoding/json: %v", data, err)
	}
	if got := generic(v); !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %#v\nwant %#v", data, got, want)
	}
	if !bytes.Equal(v.Raw, bytes.TrimSpace(data)) {
		t.Fatalf("%q: Raw %q", data, v.Raw)
	}
	if len(data) < 4096 { // re-reading every nested value is quadratic
		checkRaw(t, v)
	}
}

// checkRaw: every value's Raw reads back as that value.
func checkRaw(t *testing.T, v Value) {
	t.Helper()
	again, err := Parse(v.Raw)
	if err != nil || !reflect.DeepEqual(generic(again), generic(v)) {
		t.Fatalf("Raw %q does not read back: %v", v.Raw, err)
	}
	for _, it := range v.Items {
		checkRaw(t, it)
	}
	for _, m := range v.Members {
		checkRaw(t, m.Value)
	}
}

var corpus = []string{
	`{}`, `[]`, `null`, `true`, `false`, `0`, `-0`, `1.5e10`, `-12.25E-3`, `1E+2`, `"x"`, ` {"a" : [1, 2 ,{"b":null}] } `,
	`{"cniVersion":"1.0.0","name":"k8s","prevResult":{"ips":[{"address":"10.0.0.5/24","interface":2}]}}`,
	`"\u00e9\ud83d\ude00\n\t\"\\\/\b\f\r"`, `"\ud800"`, `"\ud800\u0041"`, `"\udc00\ud800"`, `"\ud83d\ude00x"`,
	"\"\xff\xfe ok\"", "\"caf\xc3\xa9\"", "\"\xc3\"", "\"\xed\xa0\x80\"",
	`{"a":1,"a":2}`, "\t\r\n[1]\n",
	// Not JSON.
	``, ` `, `{`, `}`, `[1,]`, `{"a":1,}`, `{"a" 1}`, `{a:1}`, `01`, `1.`, `.5`, `-`, `1e`, `1e+`, `+1`, `tru`, `nul`,
	`"abc`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\x01b\"", `[1 2]`, `{} {}`, `1 2`, `"a"x`, `NaN`, `Infinity`,
	"\xef\xbb\xbf{}", "\x00", `[`, `["a",`, `{"a":`, `{"a"`, `'a'`, "\v1", "\f1",
}

func TestAgainstEncodingJSON(t *testing.T) {
	for _, c := range corpus {
		same(t, []byte(c))
	}
}

func TestDepth(t *testing.T) {
	for _, n := range []int{maxDepth - 1, maxDepth, maxDepth + 1} {
		same(t, []byte(strings.Repeat("[", n)+strings.Repeat("]", n)))
		same(t, []byte(strings.Repeat(`{"a":`, n)+"1"+strings.Repeat("}", n)))
	}
}

func TestGetTakesTheLastDuplicate(t *testing.T) {
	v, err := Parse([]byte(`{"a":1,"b":true,"a":"two"}`))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := v.Get("a"); !ok || a.Kind != String || a.Str != "two" {
		t.Fatalf("a = %+v", a)
	}
	if _, ok := v.Get("c"); ok {
		t.Fatal("found c")
	}
}

func TestErrorsSayWhereAndWhat(t *testing.T) {
	for in, says := range map[string]string{
		`{"a":1,}`:      "byte 7: unexpected '}', looking for a string",
		`{"a":1`:        "byte 6: unexpected end of input",
		`[1 2]`:         "byte 3: unexpected '2', looking for ',' or ']'",
		"\"a\x01\"":     "control character 0x01",
		`{"a":1} x`:     "trailing data",
		`"\q"`:          `invalid escape \q`,
		`{"a":[1,{"b":`: "unexpected end of input",
	} {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: error %v, want it to say %q", in, err, says)
		}
	}
}

// FuzzParse holds jsontree to encoding/json on any input. Seeds:
// testdata/fuzz/FuzzParse and the corpus above.
//
//	go test ./plugins/kmesh-cni/internal/jsontree -run '^$' -fuzz '^FuzzParse$' -fuzztime=30s
func FuzzParse(f *testing.F) {
	for _, c := range corpus {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		same(t, data)
	})
}

func BenchmarkParseConf(b *testing.B) {
	conf := []byte(`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"kmesh-cni","kubeconfig":"/etc/cni/net.d/kmesh-kubeconfig",` +
		`"logFile":"/var/run/kmesh/cni/kmesh-cni.log","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},` +
		`{"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/var/run/netns/p"}],` +
		`"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1","interface":2}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}`)
	b.SetBytes(int64(len(conf)))
	for b.Loop() {
		if _, err := Parse(conf); err != nil {
			b.Fatal(fmt.Sprint(err))
		}
	}
}
