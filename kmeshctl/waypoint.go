package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/kmesh-go/kmesh/waypoint/model"
)

// defaultWaypointAdmin is kmesh-waypoint's admin address (Envoy's admin
// port, where Istio's tooling looks for a waypoint's).
const defaultWaypointAdmin = "127.0.0.1:15000"

// waypointViews are the parts of the waypoint's config dump kmeshctl
// shows.
var waypointViews = []string{"listeners", "routes", "clusters", "endpoints", "status"}

// waypoint shows one view of the waypoint's /debug/config_dump, or its
// /debug/status.
func (c client) waypoint(what string) error {
	if what == "status" {
		return c.waypointStatus()
	}
	var d model.ConfigDump
	if err := c.getObject("/debug/config_dump", "listeners", &d); err != nil {
		return err
	}
	if !c.json {
		return renderWaypoint(&d, what, c.out)
	}
	switch what {
	case "listeners":
		return c.writeJSON(d.Listeners)
	case "routes":
		return c.writeJSON(d.Routes)
	case "clusters":
		return c.writeJSON(d.Clusters)
	case "endpoints":
		return c.writeJSON(d.Endpoints)
	}
	return unknownWaypointView(what)
}

func unknownWaypointView(what string) error {
	return fmt.Errorf("unknown waypoint view %q (%s)", what, strings.Join(waypointViews, ", "))
}

func renderWaypoint(d *model.ConfigDump, what string, out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	switch what {
	case "listeners":
		for _, l := range d.Listeners {
			proxy := ""
			if l.ProxyProtocol {
				proxy = "PROXY protocol"
				if l.AllowWithoutProxyProtocol {
					proxy += " (optional)"
				}
			}
			// The title has no tabs: a line with cells would join the
			// chain table's columns and widen them to its own parts.
			title := []string{"LISTENER " + l.Name, l.Address}
			if proxy != "" {
				title = append(title, proxy)
			}
			fmt.Fprintln(w, strings.Join(append(title, "version "+d.Version), "  "))
			fmt.Fprintln(w, "CHAIN\tKIND\tSERVICE\tDETAIL")
			for _, c := range l.Chains {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Name, c.Kind, dash(c.Service), dash(chainDetail(c)))
			}
			if len(l.Rules) > 0 {
				fmt.Fprintln(w, "\nDESTINATIONS\tPORTS\tPROTOCOLS\tCHAIN")
				for _, r := range l.Rules {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", orAny(abbreviate(r.Destinations)), orAny(joinU32(r.Ports)),
						orAny(strings.Join(r.Protocols, ",")), r.Chain)
				}
			}
			if l.DefaultChain != "" {
				fmt.Fprintf(w, "(no match)\t\t\t%s\n", l.DefaultChain)
			}
			fmt.Fprintln(w)
		}
		if n := len(d.Unsupported); n > 0 {
			closed := 0
			for _, u := range d.Unsupported {
				if u.FailClosed {
					closed++
				}
			}
			fmt.Fprintf(w, "NOT ENFORCED\t%d entries, %d failing closed (all in /debug/config_dump \"unsupported\")\n", n, closed)
			for _, u := range d.Unsupported {
				if u.FailClosed {
					fmt.Fprintf(w, "  DENIES\t%s\t%s\n", u.Where, u.Reason)
				}
			}
		}
	case "routes":
		fmt.Fprintln(w, "ROUTE TABLE\tVIRTUAL HOST\tDOMAINS\tROUTE\tMATCH\tACTION\tTIMEOUT\tRETRY")
		for _, t := range d.Routes {
			for _, vh := range t.VirtualHosts {
				for _, r := range vh.Routes {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(t.Name), dash(vh.Name), dash(strings.Join(vh.Domains, ",")), dash(r.Name),
						matchString(r.Match), dash(routeAction(r)), dash(r.Timeout), retryString(r.Retry, vh.Retry))
				}
			}
		}
	case "clusters":
		fmt.Fprintln(w, "CLUSTER\tKIND\tLB\tPROTOCOL\tENDPOINTS\tCONNECT TIMEOUT\tOUTLIER DETECTION\tSERVICE")
		for _, c := range d.Clusters {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d/%d healthy\t%s\t%s\t%s\n", c.Name, dash(c.Kind), dash(c.LB), dash(c.Protocol),
				c.HealthyEndpoints, c.Endpoints, dash(c.ConnectTimeout), c.Outlier, dash(c.Service))
		}
	case "endpoints":
		fmt.Fprintln(w, "CLUSTER\tPRIORITY\tADDRESS\tWEIGHT\tHEALTHY\tWORKLOAD")
		for _, e := range d.Endpoints {
			for prio, eps := range e.Priorities {
				for _, ep := range eps {
					fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%v\t%s\n", e.Cluster, prio, ep.Address, ep.Weight, ep.Healthy, dash(ep.Workload))
				}
			}
		}
	default:
		return unknownWaypointView(what)
	}
	return w.Flush()
}

func chainDetail(c model.ChainDump) string {
	switch c.Kind {
	case "http":
		s := "routes " + c.RouteTable
		if c.RDSName != "" && c.RouteTable == "" {
			s = "RDS " + c.RDSName + " (not received)"
		}
		return s + "; filters " + strings.Join(c.Filters, ",")
	case "tcp":
		return "to " + weightsString(c.Clusters)
	case "deny":
		if c.Deny != nil {
			return fmt.Sprintf("%d: %s", c.Deny.HTTPStatus, c.Deny.Reason)
		}
	}
	return ""
}

func matchString(m model.RouteMatchDump) string {
	var parts []string
	switch {
	case m.Path != "":
		parts = append(parts, "path "+m.Path)
	case m.Regex != "":
		parts = append(parts, "regex "+m.Regex)
	case m.PathSeparatedPrefix != "":
		parts = append(parts, "path-prefix "+m.PathSeparatedPrefix)
	case m.Prefix != "":
		parts = append(parts, "prefix "+m.Prefix)
	default:
		parts = append(parts, "any path")
	}
	if m.CaseInsensitive {
		parts = append(parts, "(any case)")
	}
	parts = append(parts, m.Headers...)
	for _, q := range m.Query {
		parts = append(parts, "?"+q)
	}
	if m.GRPC {
		parts = append(parts, "grpc")
	}
	return strings.Join(parts, " ")
}

func routeAction(r model.RouteDump) string {
	switch r.Action {
	case "forward":
		s := weightsString(r.Clusters)
		if r.PrefixRewrite != "" {
			s += " rewrite " + r.PrefixRewrite
		}
		if r.RegexRewrite != "" {
			s += " rewrite " + r.RegexRewrite
		}
		for _, m := range r.Mirrors {
			s += fmt.Sprintf(" mirror %s %g%%", m.Cluster, m.Percent)
		}
		for _, h := range r.Hash {
			s += " hash " + h
		}
		if r.Fault != nil {
			if r.Fault.Delay != "" {
				s += fmt.Sprintf(" delay %s %g%%", r.Fault.Delay, r.Fault.DelayPercent)
			}
			if r.Fault.AbortHTTPStatus != 0 {
				s += fmt.Sprintf(" abort %d %g%%", r.Fault.AbortHTTPStatus, r.Fault.AbortPercent)
			}
		}
		return s
	case "redirect":
		if rd := r.Redirect; rd != nil {
			return fmt.Sprintf("redirect %d %s%s%s", rd.Status, rd.Host, rd.Path, rd.PrefixRewrite)
		}
	case "direct":
		return fmt.Sprintf("respond %d", r.DirectStatus)
	case "deny":
		if r.Deny != nil {
			return fmt.Sprintf("deny %d: %s", r.Deny.HTTPStatus, r.Deny.Reason)
		}
	}
	return r.Action
}

func weightsString(ws []model.WeightDump) string {
	var parts []string
	for _, w := range ws {
		if w.Weight != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", w.Cluster, w.Weight))
		} else {
			parts = append(parts, w.Cluster)
		}
	}
	return strings.Join(parts, ", ")
}

func retryString(r, vhost *model.RetryDump) string {
	if r == nil {
		r = vhost
	}
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("%dx on %s", r.NumRetries, strings.Join(r.On, ","))
	if r.PerTryTimeout != "" {
		s += " per try " + r.PerTryTimeout
	}
	return s
}

func joinU32(ps []uint32) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprint(p))
	}
	return strings.Join(parts, ",")
}

// dash is an empty table cell: "-" keeps the row's columns in place (for
// awk and for the eye), as dump services writes a service with no
// waypoint.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orAny(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

// abbreviate keeps a table cell short: a waypoint's pod addresses are one
// rule with every pod in it.
func abbreviate(items []string) string {
	if len(items) <= 3 {
		return strings.Join(items, ",")
	}
	return fmt.Sprintf("%s (+%d more)", strings.Join(items[:3], ","), len(items)-3)
}

// waypointStatus shows the waypoint's /debug/status: whether it serves a
// configuration, and its source's own fields (the xDS session's counters
// and last NACK, or the configuration file's last error), one a line.
func (c client) waypointStatus() error {
	var st map[string]any
	if err := c.getObject("/debug/status", "source", &st); err != nil {
		return err
	}
	if _, ok := st["services"]; ok {
		// The daemon's status has ready and source too, and its counts.
		return fmt.Errorf("%s answered /debug/status as kmesh-daemon does: that is not %s's admin API", c.host(), c.serverName())
	}
	if c.json {
		return c.writeJSON(st)
	}
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "ready\t%v\n", st["ready"])
	src, _ := st["source"].(map[string]any)
	for _, k := range slices.Sorted(maps.Keys(src)) {
		var val string
		switch v := src[k].(type) {
		case nil:
		case map[string]any, []any:
			b, _ := json.Marshal(v)
			val = string(b)
		default:
			val = fmt.Sprint(v)
		}
		fmt.Fprintf(w, "%s\t%s\n", k, dash(val))
	}
	return w.Flush()
}
