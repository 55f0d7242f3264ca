package proxy

import (
	"errors"
	"fmt"

	"github.com/kmesh-go/kmesh/waypoint/filter"
	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/route"
	"github.com/kmesh-go/kmesh/waypoint/upstream"
)

// config is one snapshot compiled for the engine. It never changes; a new
// snapshot is a new config, swapped in whole. Requests hold the config
// they started with.
type config struct {
	snap      *model.Snapshot
	gen       uint64
	listeners map[string]*listenerConfig // by address
	clusters  map[string]*upstream.Cluster
	faults    map[*model.Fault]*filter.Fault
	cors      map[*model.CORS]*filter.CORS
}

type listenerConfig struct {
	m      *model.Listener
	key    string
	chains map[string]*chain
	def    *chain
}

// chain is a compiled filter chain.
type chain struct {
	m     *model.FilterChain
	hcm   *model.HTTPConnectionManager
	table *route.Table
	// filters in order; the router is not in it (it always runs last).
	filters []httpFilter
}

type httpFilter struct {
	name  string
	fault *filter.Fault
	cors  *filter.CORS
	// isFault, isCORS: which filter this is (its listener-level config
	// may be nil, the per-route one not).
	isFault, isCORS bool
	// off: runs only where a route or virtual host enables it.
	off bool
}

// compile checks and compiles a snapshot (clusters are resolved by the
// caller).
func compile(s *model.Snapshot) (*config, error) {
	if s == nil {
		return nil, errors.New("nil snapshot")
	}
	c := &config{
		snap:      s,
		listeners: map[string]*listenerConfig{},
		faults:    map[*model.Fault]*filter.Fault{},
		cors:      map[*model.CORS]*filter.CORS{},
	}
	tables := map[*model.RouteTable]*route.Table{}
	for _, l := range s.Listeners {
		if l == nil {
			return nil, errors.New("nil listener")
		}
		if !l.Address.IsValid() {
			return nil, fmt.Errorf("listener %q: no address", l.Name)
		}
		key := l.Address.String()
		if _, dup := c.listeners[key]; dup {
			return nil, fmt.Errorf("listener %q: address %s used twice", l.Name, key)
		}
		lc := &listenerConfig{m: l, key: key, chains: map[string]*chain{}}
		for name, fc := range l.Chains {
			ch, err := c.compileChain(fc, tables)
			if err != nil {
				return nil, fmt.Errorf("listener %q chain %q: %w", l.Name, name, err)
			}
			lc.chains[name] = ch
		}
		if l.DefaultChain != nil {
			ch, err := c.compileChain(l.DefaultChain, tables)
			if err != nil {
				return nil, fmt.Errorf("listener %q default chain: %w", l.Name, err)
			}
			lc.def = ch
		}
		c.listeners[key] = lc
	}
	return c, nil
}

func (c *config) compileChain(fc *model.FilterChain, tables map[*model.RouteTable]*route.Table) (*chain, error) {
	n := 0
	for _, set := range []bool{fc.HTTP != nil, fc.TCP != nil, fc.Deny != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("exactly one of HTTP, TCP, Deny must be set (%d are)", n)
	}
	ch := &chain{m: fc, hcm: fc.HTTP}
	if fc.HTTP == nil {
		return ch, nil
	}
	if rt := fc.HTTP.Routes; rt != nil {
		t, ok := tables[rt]
		if !ok {
			t = route.Compile(rt)
			tables[rt] = t
			c.compilePerFilter(rt)
		}
		ch.table = t
	}
	for _, f := range fc.HTTP.Filters {
		switch {
		case f.Router:
			// Envoy's router is terminal: filters after it never run.
			return ch, nil
		case f.Fault != nil || f.Name == "envoy.filters.http.fault":
			ch.filters = append(ch.filters, httpFilter{name: f.Name, isFault: true, fault: c.fault(f.Fault), off: f.Off})
		case f.CORS != nil || f.Name == "envoy.filters.http.cors":
			ch.filters = append(ch.filters, httpFilter{name: f.Name, isCORS: true, cors: c.corsOf(f.CORS), off: f.Off})
		}
	}
	return ch, nil
}

// compilePerFilter compiles the per-route, per-virtual-host and
// table-level filter configs of a table.
func (c *config) compilePerFilter(rt *model.RouteTable) {
	c.fault(rt.PerFilter.Fault)
	c.corsOf(rt.PerFilter.CORS)
	for _, vh := range rt.VirtualHosts {
		c.fault(vh.PerFilter.Fault)
		c.corsOf(vh.PerFilter.CORS)
		for _, r := range vh.Routes {
			c.fault(r.PerFilter.Fault)
			c.corsOf(r.PerFilter.CORS)
		}
	}
}

func (c *config) fault(m *model.Fault) *filter.Fault {
	if m == nil {
		return nil
	}
	if f, ok := c.faults[m]; ok {
		return f
	}
	f := filter.CompileFault(m)
	c.faults[m] = f
	return f
}

func (c *config) corsOf(m *model.CORS) *filter.CORS {
	if m == nil {
		return nil
	}
	if f, ok := c.cors[m]; ok {
		return f
	}
	f := filter.CompileCORS(m)
	c.cors[m] = f
	return f
}

// chainFor chooses the chain of a connection on this listener.
func (lc *listenerConfig) chainFor(ci model.ConnInfo) *chain {
	if sel := lc.m.Select; sel != nil {
		if name := sel.Select(ci); name != "" {
			if ch := lc.chains[name]; ch != nil {
				return ch
			}
		}
	}
	return lc.def
}

// needsProtocol reports whether choosing a chain for the connection
// needs sniffing.
func (lc *listenerConfig) needsProtocol(ci model.ConnInfo) bool {
	return lc.m.Select != nil && lc.m.Select.NeedsProtocol(ci.Destination)
}
