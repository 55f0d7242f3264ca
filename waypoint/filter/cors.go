package filter

import (
	"net/http"

	"github.com/kmesh-go/kmesh/waypoint/internal/header"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
)

// CORS is a compiled model.CORS.
type CORS struct {
	M       *model.CORS
	origins []route.StringMatcher
}

// CompileCORS compiles m (nil gives nil).
func CompileCORS(m *model.CORS) *CORS {
	if m == nil {
		return nil
	}
	c := &CORS{M: m}
	for i := range m.AllowOrigins {
		c.origins = append(c.origins, route.CompileString(&m.AllowOrigins[i]))
	}
	return c
}

// CORSResult is what the CORS filter does to a request.
type CORSResult struct {
	// Preflight: answer 200 locally with Headers.
	Preflight bool
	// Headers to add to the response (the preflight's, or the actual
	// request's).
	Headers http.Header
}

// Evaluate applies a CORS policy to a request: nothing without an Origin
// header; a preflight is answered here, and an actual request from an
// allowed origin gets the allow-origin, credentials and expose headers on
// its response. A preflight from an origin not allowed goes upstream
// unless forward_not_matching_preflights is false: then it is answered
// without allow-origin.
func (c *CORS) Evaluate(r *http.Request) CORSResult {
	if c == nil || c.M.Disabled {
		return CORSResult{}
	}
	origin := header.Get(r.Header, "Origin")
	if origin == "" {
		return CORSResult{}
	}
	allowed := c.allowed(origin)
	preflight := r.Method == http.MethodOptions && header.Get(r.Header, "Access-Control-Request-Method") != ""
	forward := c.M.ForwardNotMatchingPreflights == nil || *c.M.ForwardNotMatchingPreflights
	if !allowed && (!preflight || forward) {
		return CORSResult{}
	}
	h := http.Header{}
	if allowed {
		h.Set("Access-Control-Allow-Origin", origin)
	}
	if c.M.AllowCredentials != nil && *c.M.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if preflight {
		// "*" echoes what the preflight asks for, as Envoy does.
		echo(h, "Access-Control-Allow-Methods", c.M.AllowMethods, r, "Access-Control-Request-Method")
		echo(h, "Access-Control-Allow-Headers", c.M.AllowHeaders, r, "Access-Control-Request-Headers")
		set(h, "Access-Control-Max-Age", c.M.MaxAge)
		if p := c.M.AllowPrivateNetworkAccess; p != nil && *p &&
			header.Get(r.Header, "Access-Control-Request-Private-Network") == "true" {
			h.Set("Access-Control-Allow-Private-Network", "true")
		}
		return CORSResult{Preflight: true, Headers: h}
	}
	set(h, "Access-Control-Expose-Headers", c.M.ExposeHeaders)
	return CORSResult{Headers: h}
}

// allowed: as Envoy, a matcher that matches the string "*" (exact "*",
// prefix "*", ...) allows every origin.
func (c *CORS) allowed(origin string) bool {
	for _, o := range c.origins {
		if o.Match("*") || o.Match(origin) {
			return true
		}
	}
	return false
}

func set(h http.Header, k, v string) {
	if v != "" {
		h.Set(k, v)
	}
}

// echo sets k to v, or to the request's asked header when v is "*".
func echo(h http.Header, k, v string, r *http.Request, asked string) {
	if v == "*" {
		h.Set(k, header.Get(r.Header, asked))
		return
	}
	set(h, k, v)
}
