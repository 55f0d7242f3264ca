package route

import (
	"testing"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// Envoy's RedirectAction.path_redirect: a query string in it "will
// override the request's query string and will not be stripped":
// path_redirect "/new-path-3?foo=1" + strip_query, request
// "/old-path-3?bar=1" -> "/new-path-3?foo=1".
func TestRedirectStripQueryKeepsPathRedirectQuery(t *testing.T) {
	mr := &model.Route{Match: model.RouteMatch{Path: "/old-path-3"},
		Redirect: &model.RedirectAction{Path: "/new-path-3?foo=1", StripQuery: true}}
	tbl := Compile(&model.RouteTable{VirtualHosts: []*model.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*model.Route{mr}}}})
	r := tbl.VirtualHost("example.com").Routes[0]
	got := r.RedirectLocation("http", "example.com", "/old-path-3?bar=1")
	if want := "http://example.com/new-path-3?foo=1"; got != want {
		t.Errorf("Location %q, want %q", got, want)
	}
}

func TestUnescapeSlashes(t *testing.T) {
	for in, want := range map[string]string{
		"/a%2Fb%2fc":       "/a/b/c",
		"/a%5Cb%5cc":       `/a\b\c`,
		"/a%2Fb?x=%2F":     "/a/b?x=%2F",
		"/a%20b":           "",
		"/plain":           "",
		"/trailing%2":      "",
		"/a%252F":          "",
		"/x%2F%2F?q=1%5C2": "/x//?q=1%5C2",
	} {
		got, changed := UnescapeSlashes(in)
		if want == "" {
			if changed || got != in {
				t.Errorf("UnescapeSlashes(%q) = %q, %v; want it unchanged", in, got, changed)
			}
			continue
		}
		if !changed || got != want {
			t.Errorf("UnescapeSlashes(%q) = %q, %v; want %q", in, got, changed, want)
		}
	}
}
