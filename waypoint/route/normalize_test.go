package route

import "testing"

func TestNormalizePath(t *testing.T) {
	for _, c := range []struct {
		in         string
		norm, merg bool
		want       string
	}{
		{"/a/b", true, true, "/a/b"},
		{"/a/./b/../c", true, false, "/a/c"},
		{"/a/b/..", true, false, "/a/"},
		{"/a/b/.", true, false, "/a/b/"},
		{"/../../etc/passwd", true, false, "/etc/passwd"},
		{"/admin/../public?x=/../y", true, false, "/public?x=/../y"},
		{"/%61dmin/%2e%2e/x", true, false, "/x"},
		{"/a%2fb%3f", true, false, "/a%2Fb%3F"},
		{"/a%zz", true, false, "/a%zz"},
		{"/a%4", true, false, "/a%4"},
		{"//a///b/", false, true, "/a/b/"},
		{"//a/./b", true, true, "/a/b"},
		{"/a//b?q=//", false, true, "/a/b?q=//"},
		{"/a/./b", false, false, "/a/./b"},
	} {
		if got := NormalizePath(c.in, c.norm, c.merg); got != c.want {
			t.Errorf("NormalizePath(%q, %v, %v) = %q, want %q", c.in, c.norm, c.merg, got, c.want)
		}
	}
}
