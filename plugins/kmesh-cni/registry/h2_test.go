//go:build !kmesh_grpc_client

package registry

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// What the client writes as HPACK literals is what the library (and so
// grpc-go's server) reads, lengths over the 7-bit prefix included.
func TestHeadersReadAsHPACK(t *testing.T) {
	want := []hpack.HeaderField{{Name: ":path", Value: "/kmesh.cni.v1.PodRegistry/EnrollPod"},
		{Name: "grpc-timeout", Value: "2000m"}, {Name: "x-long", Value: strings.Repeat("v", 127)},
		{Name: strings.Repeat("n", 300), Value: strings.Repeat("w", 20000)}, {Name: "empty", Value: ""}}
	var block []byte
	for _, f := range want {
		block = appendHeader(block, f.Name, f.Value)
	}
	d := hpack.NewDecoder(4096, nil)
	got, err := d.DecodeFull(block)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("decoded %v %v", got, err)
	}
}
