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
