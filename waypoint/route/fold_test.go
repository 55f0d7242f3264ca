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
