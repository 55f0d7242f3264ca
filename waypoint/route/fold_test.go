package route

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// A case-insensitive contains runs on every request the matcher sees; it
// used to lower-case both strings (two allocations a request).
func TestContainsIgnoreCaseDoesNotAllocate(t *testing.T) {
	s := CompileString(&model.StringMatch{Kind: "contains", Contains: "Mobile", IgnoreCase: true})
	v := "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit/605.1.15 MOBILE/15E148"
	if !s.Match(v) || s.Match("Mozilla/5.0 (X11; Linux x86_64)") {
		t.Fatal("contains with ignore_case does not match as it should")
	}
	if n := testing.AllocsPerRun(100, func() { s.Match(v) }); n != 0 {
		t.Errorf("%v allocations per match, want 0", n)
	}
}

func TestContainsFoldASCII(t *testing.T) {
	cases := []struct {
		s, sub string
		want   bool
	}{
		{"abc", "", true},
		{"", "a", false},
		{"Hello World", "o w", true},
		{"Hello World", "WORLD", true},
		{"Hello World", "worlds", false},
		{"ab", "abc", false},
		// Envoy folds ASCII only (absl::AsciiStrToLower): the Kelvin
		// sign is not a "k".
		{"\u212a8s", "k8s", false},
	}
	for _, c := range cases {
		if got := containsFoldASCII(c.s, c.sub); got != c.want {
			t.Errorf("containsFoldASCII(%q, %q) = %v", c.s, c.sub, got)
		}
	}
}

// Envoy's ignore_case (exact, prefix, suffix; a route's case-insensitive
// path) folds ASCII letters only: "\u212a" (Kelvin sign), which Unicode
// folds to "k", is not a "k" to Envoy.
func TestIgnoreCaseFoldsASCIIOnly(t *testing.T) {
	for _, m := range []*model.StringMatch{
		{Kind: "exact", Exact: "k8s", IgnoreCase: true},
		{Kind: "prefix", Prefix: "k8", IgnoreCase: true},
		{Kind: "suffix", Suffix: "k8s", IgnoreCase: true},
	} {
		s := CompileString(m)
		if !s.Match("K8S") {
			t.Errorf("%s: K8S does not match", m.Kind)
		}
		if s.Match("\u212a8s") {
			t.Errorf("%s: the Kelvin sign matched k", m.Kind)
		}
	}
	tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Domains: []string{"*"},
		Routes: []*model.Route{{Match: model.RouteMatch{Prefix: "/k8s", CaseInsensitive: true}, Direct: &model.DirectResponse{Status: 200}}}}}})
	r := tbl.VirtualHost("x").Routes[0]
	if !r.Matches(&Input{Path: "/K8S/x"}) || r.Matches(&Input{Path: "/\u212a8s/x"}) {
		t.Errorf("case-insensitive path prefix folds other than ASCII")
	}
}
