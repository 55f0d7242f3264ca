package model

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
)

// ConfigDump is a Snapshot as the waypoint's admin serves it on
// /debug/config_dump and kmeshctl reads it: plain JSON, durations as Go
// duration strings, regexes as their source, every list in a stable order.
type ConfigDump struct {
	Version     string           `json:"version"`
	Listeners   []ListenerDump   `json:"listeners"`
	Routes      []RouteTableDump `json:"routes"`
	Clusters    []ClusterDump    `json:"clusters"`
	Endpoints   []EndpointsDump  `json:"endpoints"`
	Peers       int              `json:"peers"`
	Unsupported []Unsupported    `json:"unsupported"`
}

// ListenerDump is one listener and its chains.
type ListenerDump struct {
	Name                      string         `json:"name"`
	Address                   string         `json:"address"`
	ProxyProtocol             bool           `json:"proxyProtocol,omitempty"`
	AllowWithoutProxyProtocol bool           `json:"allowWithoutProxyProtocol,omitempty"`
	HeaderTimeout             string         `json:"headerTimeout,omitempty"`
	ContinueOnFilterTimeout   bool           `json:"continueOnFilterTimeout,omitempty"`
	Chains                    []ChainDump    `json:"chains"`
	DefaultChain              string         `json:"defaultChain,omitempty"`
	Rules                     []SelectorRule `json:"rules,omitempty"`
}

// ChainDump is one filter chain.
type ChainDump struct {
	Name string `json:"name"`
	// Kind: "http", "tcp" or "deny".
	Kind    string `json:"kind"`
	Service string `json:"service,omitempty"`
	// HTTP chains.
	Codec      string   `json:"codec,omitempty"`
	RouteTable string   `json:"routeTable,omitempty"`
	RDSName    string   `json:"rdsName,omitempty"`
	Filters    []string `json:"filters,omitempty"`
	// TCP chains.
	Clusters    []WeightDump `json:"clusters,omitempty"`
	IdleTimeout string       `json:"idleTimeout,omitempty"`
	// Deny chains.
	Deny *Deny `json:"deny,omitempty"`
}

// WeightDump is a cluster and its share.
type WeightDump struct {
	Cluster string `json:"cluster"`
	Weight  uint32 `json:"weight,omitempty"`
}

// RouteTableDump is one route table with the chains that use it.
type RouteTableDump struct {
	Name         string            `json:"name"`
	Chains       []string          `json:"chains"`
	VirtualHosts []VirtualHostDump `json:"virtualHosts"`
}

// VirtualHostDump is one virtual host.
type VirtualHostDump struct {
	Name    string      `json:"name"`
	Domains []string    `json:"domains"`
	Retry   *RetryDump  `json:"retry,omitempty"`
	Routes  []RouteDump `json:"routes"`
}

// RouteDump is one route: its match in Envoy's terms and what it does.
type RouteDump struct {
	Name  string         `json:"name,omitempty"`
	Match RouteMatchDump `json:"match"`
	// Action: "forward", "redirect", "direct" or "deny".
	Action        string       `json:"action"`
	Clusters      []WeightDump `json:"clusters,omitempty"`
	Timeout       string       `json:"timeout,omitempty"`
	Retry         *RetryDump   `json:"retry,omitempty"`
	Mirrors       []Mirror     `json:"mirrors,omitempty"`
	PrefixRewrite string       `json:"prefixRewrite,omitempty"`
	RegexRewrite  string       `json:"regexRewrite,omitempty"`
	HostRewrite   string       `json:"hostRewrite,omitempty"`
	// Hash: the hash policies in order ("header X-User", "cookie sess
	// ttl=1h0m0s path=/", "source_ip", "query user"; " terminal" after
	// one that ends the list).
	Hash          []string        `json:"hash,omitempty"`
	Redirect      *RedirectAction `json:"redirect,omitempty"`
	DirectStatus  int             `json:"directStatus,omitempty"`
	Deny          *Deny           `json:"deny,omitempty"`
	Fault         *FaultDump      `json:"fault,omitempty"`
	CORS          bool            `json:"cors,omitempty"`
	RequestAdd    []string        `json:"requestHeadersToAdd,omitempty"`
	RequestRemove []string        `json:"requestHeadersToRemove,omitempty"`
	ResponseAdd   []string        `json:"responseHeadersToAdd,omitempty"`
	ResponseRem   []string        `json:"responseHeadersToRemove,omitempty"`
}

// RouteMatchDump renders a RouteMatch; headers and query parameters as
// "name op value" strings.
type RouteMatchDump struct {
	Prefix              string   `json:"prefix,omitempty"`
	Path                string   `json:"path,omitempty"`
	Regex               string   `json:"regex,omitempty"`
	PathSeparatedPrefix string   `json:"pathSeparatedPrefix,omitempty"`
	CaseInsensitive     bool     `json:"caseInsensitive,omitempty"`
	Headers             []string `json:"headers,omitempty"`
	Query               []string `json:"query,omitempty"`
	GRPC                bool     `json:"grpc,omitempty"`
}

// RetryDump renders a RetryPolicy.
type RetryDump struct {
	On                   []string `json:"on"`
	NumRetries           int      `json:"numRetries"`
	PerTryTimeout        string   `json:"perTryTimeout,omitempty"`
	RetriableStatusCodes []int    `json:"retriableStatusCodes,omitempty"`
	PreviousHosts        bool     `json:"previousHosts,omitempty"`
	BackoffBase          string   `json:"backoffBase,omitempty"`
	BackoffMax           string   `json:"backoffMax,omitempty"`
}

// FaultDump renders a Fault.
type FaultDump struct {
	Delay           string  `json:"delay,omitempty"`
	DelayPercent    float64 `json:"delayPercent,omitempty"`
	AbortHTTPStatus int     `json:"abortHttpStatus,omitempty"`
	AbortGRPCStatus *int    `json:"abortGrpcStatus,omitempty"`
	AbortPercent    float64 `json:"abortPercent,omitempty"`
}

// ClusterDump is one cluster without its endpoints.
type ClusterDump struct {
	Name                     string `json:"name"`
	Kind                     string `json:"kind"`
	LB                       string `json:"lb,omitempty"`
	ConnectTimeout           string `json:"connectTimeout,omitempty"`
	Protocol                 string `json:"protocol,omitempty"`
	MaxConnections           int    `json:"maxConnections,omitempty"`
	MaxPendingRequests       int    `json:"maxPendingRequests,omitempty"`
	MaxRequests              int    `json:"maxRequests,omitempty"`
	MaxRetries               int    `json:"maxRetries,omitempty"`
	MaxRequestsPerConnection int    `json:"maxRequestsPerConnection,omitempty"`
	Service                  string `json:"service,omitempty"`
	Endpoints                int    `json:"endpoints"`
	HealthyEndpoints         int    `json:"healthyEndpoints"`
	// PanicThreshold in percent (0: panic mode off).
	PanicThreshold float64      `json:"panicThreshold"`
	Outlier        *OutlierDump `json:"outlierDetection,omitempty"`
}

// OutlierDump is a cluster's outlier detection: the detectors that can
// eject (a count of 0 is one that cannot) and the ejection times.
type OutlierDump struct {
	Consecutive5xx                uint32 `json:"consecutive5xx"`
	ConsecutiveGatewayFailure     uint32 `json:"consecutiveGatewayFailure"`
	ConsecutiveLocalOriginFailure uint32 `json:"consecutiveLocalOriginFailure"`
	Interval                      string `json:"interval"`
	BaseEjectionTime              string `json:"baseEjectionTime"`
	MaxEjectionTime               string `json:"maxEjectionTime"`
	MaxEjectionPercent            uint32 `json:"maxEjectionPercent"`
}

// String is the dump in a few words (kmeshctl's table).
func (o *OutlierDump) String() string {
	if o == nil {
		return "-"
	}
	s := fmt.Sprintf("%d 5xx", o.Consecutive5xx)
	if o.ConsecutiveGatewayFailure > 0 {
		s += fmt.Sprintf(", %d gateway", o.ConsecutiveGatewayFailure)
	}
	if o.ConsecutiveLocalOriginFailure > 0 {
		s += fmt.Sprintf(", %d local", o.ConsecutiveLocalOriginFailure)
	}
	return s + fmt.Sprintf(" in a row; out %s+, at most %d%%", o.BaseEjectionTime, o.MaxEjectionPercent)
}

// EndpointsDump is one cluster's endpoints by priority.
type EndpointsDump struct {
	Cluster    string       `json:"cluster"`
	Priorities [][]Endpoint `json:"priorities"`
}

// Dump renders a snapshot for the admin API; nil gives an empty dump.
func Dump(s *Snapshot) *ConfigDump {
	d := &ConfigDump{Listeners: []ListenerDump{}, Routes: []RouteTableDump{}, Clusters: []ClusterDump{},
		Endpoints: []EndpointsDump{}, Unsupported: []Unsupported{}}
	if s == nil {
		return d
	}
	d.Version = s.Version
	if s.Peers != nil {
		d.Peers = len(s.Peers.ByAddress)
	}
	d.Unsupported = append(d.Unsupported, s.Unsupported...)
	tables := map[*RouteTable]*RouteTableDump{}
	var tableOrder []*RouteTable
	for _, l := range s.Listeners {
		ld := ListenerDump{Name: l.Name, Address: l.Address.String(), ProxyProtocol: l.ProxyProtocol,
			AllowWithoutProxyProtocol: l.AllowWithoutProxyProtocol, HeaderTimeout: dur(l.HeaderTimeout), ContinueOnFilterTimeout: l.ContinueOnFilterTimeout, Chains: []ChainDump{}}
		if l.HeaderTimeout == NoTimeout {
			ld.HeaderTimeout = "none"
		}
		if rl, ok := l.Select.(RuleLister); ok {
			ld.Rules = rl.Rules()
		}
		if l.DefaultChain != nil {
			ld.DefaultChain = l.DefaultChain.Name
		}
		chains := slices.Collect(maps.Values(l.Chains))
		if l.DefaultChain != nil && l.Chains[l.DefaultChain.Name] != l.DefaultChain {
			chains = append(chains, l.DefaultChain)
		}
		slices.SortFunc(chains, func(a, b *FilterChain) int { return cmp.Compare(a.Name, b.Name) })
		for _, c := range chains {
			ld.Chains = append(ld.Chains, dumpChain(c))
			if c.HTTP != nil && c.HTTP.Routes != nil {
				t := c.HTTP.Routes
				td := tables[t]
				if td == nil {
					td = dumpTable(t)
					tables[t] = td
					tableOrder = append(tableOrder, t)
				}
				td.Chains = append(td.Chains, c.Name)
			}
		}
		d.Listeners = append(d.Listeners, ld)
	}
	for _, t := range tableOrder {
		d.Routes = append(d.Routes, *tables[t])
	}
	for _, name := range slices.Sorted(maps.Keys(s.Clusters)) {
		c := s.Clusters[name]
		cd := ClusterDump{Name: c.Name, Kind: c.Kind, LB: c.LB, ConnectTimeout: dur(c.ConnectTimeout), Protocol: c.Protocol,
			MaxConnections: c.MaxConnections, MaxPendingRequests: c.MaxPendingRequests, MaxRequests: c.MaxRequests,
			MaxRetries: c.MaxRetries, MaxRequestsPerConnection: c.MaxRequestsPerConnection, Service: c.Service.Hostname,
			PanicThreshold: c.PanicThreshold}
		if o := c.Outlier; o != nil {
			cd.Outlier = &OutlierDump{Interval: dur(o.Interval), BaseEjectionTime: dur(o.BaseEjectionTime),
				MaxEjectionTime: dur(o.MaxEjectionTime), MaxEjectionPercent: o.MaxEjectionPercent}
			if o.EnforcingConsecutive5xx > 0 {
				cd.Outlier.Consecutive5xx = o.Consecutive5xx
			}
			if o.EnforcingConsecutiveGatewayFailure > 0 {
				cd.Outlier.ConsecutiveGatewayFailure = o.ConsecutiveGatewayFailure
			}
			if o.SplitLocalOrigin && o.EnforcingConsecutiveLocalOriginFailure > 0 {
				cd.Outlier.ConsecutiveLocalOriginFailure = o.ConsecutiveLocalOriginFailure
			}
		}
		for _, prio := range c.Endpoints {
			for _, e := range prio {
				cd.Endpoints++
				if e.Healthy {
					cd.HealthyEndpoints++
				}
			}
		}
		d.Clusters = append(d.Clusters, cd)
		if len(c.Endpoints) > 0 {
			d.Endpoints = append(d.Endpoints, EndpointsDump{Cluster: c.Name, Priorities: c.Endpoints})
		}
	}
	return d
}

func dumpChain(c *FilterChain) ChainDump {
	cd := ChainDump{Name: c.Name, Service: c.Service.Hostname}
	switch {
	case c.Deny != nil:
		cd.Kind = "deny"
		cd.Deny = c.Deny
	case c.HTTP != nil:
		cd.Kind = "http"
		cd.Codec = c.HTTP.Codec
		cd.RDSName = c.HTTP.RDSName
		if c.HTTP.Routes != nil {
			cd.RouteTable = c.HTTP.Routes.Name
		}
		for _, f := range c.HTTP.Filters {
			name := f.Name
			if f.Off {
				// Runs only where a route or virtual host enables it.
				name += " (off by default)"
			}
			cd.Filters = append(cd.Filters, name)
		}
	case c.TCP != nil:
		cd.Kind = "tcp"
		cd.Clusters = weights(c.TCP.Cluster, c.TCP.Weighted)
		cd.IdleTimeout = dur(c.TCP.IdleTimeout)
		if c.TCP.IdleTimeout == NoTimeout {
			cd.IdleTimeout = "none"
		}
	}
	return cd
}

func dumpTable(t *RouteTable) *RouteTableDump {
	td := &RouteTableDump{Name: t.Name, Chains: []string{}, VirtualHosts: []VirtualHostDump{}}
	for _, vh := range t.VirtualHosts {
		vd := VirtualHostDump{Name: vh.Name, Domains: vh.Domains, Retry: dumpRetry(vh.Retry), Routes: []RouteDump{}}
		for _, r := range vh.Routes {
			vd.Routes = append(vd.Routes, dumpRoute(r, vh, t))
		}
		td.VirtualHosts = append(td.VirtualHosts, vd)
	}
	return td
}

func dumpRoute(r *Route, vh *VirtualHost, t *RouteTable) RouteDump {
	rd := RouteDump{Name: r.Name, Match: dumpMatch(r.Match)}
	switch {
	case r.Deny != nil:
		rd.Action = "deny"
		rd.Deny = r.Deny
	case r.Forward != nil:
		f := r.Forward
		rd.Action = "forward"
		rd.Clusters = weights(f.Cluster, f.Weighted)
		rd.Timeout = dur(f.Timeout)
		if rd.Timeout == "" {
			rd.Timeout = "0s"
		}
		rd.Retry = dumpRetry(f.Retry)
		rd.Mirrors = f.Mirrors
		rd.PrefixRewrite = f.PrefixRewrite
		if f.RegexRewrite != nil {
			rd.RegexRewrite = f.RegexRewrite.Pattern.String() + " -> " + f.RegexRewrite.Substitution
		}
		rd.HostRewrite = f.HostRewrite
		if f.AutoHostRewrite {
			rd.HostRewrite = "(upstream host)"
		}
		for _, h := range f.Hash {
			rd.Hash = append(rd.Hash, h.String())
		}
	case r.Redirect != nil:
		rd.Action = "redirect"
		rd.Redirect = r.Redirect
	case r.Direct != nil:
		rd.Action = "direct"
		rd.DirectStatus = r.Direct.Status
	}
	fault := r.PerFilter.Fault
	if fault == nil && vh != nil {
		fault = vh.PerFilter.Fault
	}
	if fault == nil && t != nil {
		fault = t.PerFilter.Fault
	}
	if fault != nil {
		rd.Fault = &FaultDump{Delay: dur(fault.Delay), DelayPercent: fault.DelayPercent, AbortHTTPStatus: fault.AbortHTTPStatus,
			AbortGRPCStatus: fault.AbortGRPCStatus, AbortPercent: fault.AbortPercent}
	}
	// The most specific CORS policy decides, as at run time.
	switch cors := r.PerFilter.CORS; {
	case cors != nil:
		rd.CORS = !cors.Disabled
	case vh != nil && vh.PerFilter.CORS != nil:
		rd.CORS = !vh.PerFilter.CORS.Disabled
	case t != nil && t.PerFilter.CORS != nil:
		rd.CORS = !t.PerFilter.CORS.Disabled
	}
	for _, h := range r.Headers.RequestAdd {
		rd.RequestAdd = append(rd.RequestAdd, headerValue(h))
	}
	for _, h := range r.Headers.ResponseAdd {
		rd.ResponseAdd = append(rd.ResponseAdd, headerValue(h))
	}
	rd.RequestRemove = r.Headers.RequestRemove
	rd.ResponseRem = r.Headers.ResponseRemove
	return rd
}

func headerValue(h HeaderValue) string {
	op := "="
	switch {
	case h.AddIfAbsent:
		op = "?="
	case h.OnlyIfPresent:
		op = "!="
	case h.Append:
		op = "+="
	}
	return h.Name + op + h.Value
}

func dumpMatch(m RouteMatch) RouteMatchDump {
	md := RouteMatchDump{Prefix: m.Prefix, Path: m.Path, PathSeparatedPrefix: m.PathSeparatedPrefix,
		CaseInsensitive: m.CaseInsensitive, GRPC: m.GRPC}
	if m.Regex != nil {
		md.Regex = m.Regex.String()
	}
	for _, h := range m.Headers {
		md.Headers = append(md.Headers, h.String())
	}
	for _, q := range m.Query {
		s := q.Name
		switch {
		case q.Value != nil:
			s += " " + q.Value.String()
		case q.Present:
			s += " present"
		}
		md.Query = append(md.Query, s)
	}
	return md
}

// String renders a header matcher as "name op value" for dumps and logs.
func (h HeaderMatch) String() string {
	s := h.Name
	switch {
	case h.Value != nil:
		s += " " + h.Value.String()
	case h.Present != nil:
		s += " present=" + strconv.FormatBool(*h.Present)
	case h.Range != nil:
		s += fmt.Sprintf(" in [%d,%d)", h.Range.Start, h.Range.End)
	}
	if h.Invert {
		s = "not " + s
	}
	return s
}

// String renders a string matcher as "kind value".
func (m *StringMatch) String() string {
	if m == nil {
		return ""
	}
	var v string
	switch m.Kind {
	case "exact":
		v = m.Exact
	case "prefix":
		v = m.Prefix
	case "suffix":
		v = m.Suffix
	case "contains":
		v = m.Contains
	case "regex":
		if m.Regex != nil {
			v = m.Regex.String()
		}
	}
	s := m.Kind + " " + strconv.Quote(v)
	if m.IgnoreCase {
		s += " (ignore case)"
	}
	return s
}

func dumpRetry(r *RetryPolicy) *RetryDump {
	if r == nil {
		return nil
	}
	return &RetryDump{On: slices.Sorted(maps.Keys(r.On)), NumRetries: r.NumRetries, PerTryTimeout: dur(r.PerTryTimeout),
		RetriableStatusCodes: r.RetriableStatusCodes, PreviousHosts: r.PreviousHosts,
		BackoffBase: dur(r.BackoffBase), BackoffMax: dur(r.BackoffMax)}
}

func weights(cluster string, w *WeightedClusters) []WeightDump {
	if w == nil {
		if cluster == "" {
			return nil
		}
		return []WeightDump{{Cluster: cluster}}
	}
	out := make([]WeightDump, 0, len(w.Clusters))
	for _, c := range w.Clusters {
		out = append(out, WeightDump{Cluster: c.Name, Weight: c.Weight})
	}
	return out
}

func dur(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}
