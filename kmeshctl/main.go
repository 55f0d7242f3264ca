// kmeshctl inspects a node's kmesh data path through the daemon's admin API.
//
//	kmeshctl status
//	kmeshctl dump services|workloads|policies|maps|pods [-o json]
//	kmeshctl metrics
//	kmeshctl connections [-o json]     open connections, live
//	kmeshctl top [-n rounds] [-interval 2s]
//	kmeshctl logs [-f] [-o json]       the access log, followed with -f
//	kmeshctl waypoint listeners|routes|clusters|endpoints [-o json]
//	                                   kmesh-waypoint's config (admin default 127.0.0.1:15000)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmesh-go/kmesh/daemon/admin"
)

func main() {
	fs := flag.NewFlagSet("kmeshctl", flag.ExitOnError)
	adminAddr := fs.String("admin", envOr("KMESH_ADMIN", "127.0.0.1:15200"), "the daemon's admin address")
	output := fs.String("o", "table", "output: table or json")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: kmeshctl [-admin addr] [-o table|json] status | dump services|workloads|policies|maps|pods | metrics | connections | top [-n rounds] [-interval d] | logs [-f] | waypoint listeners|routes|clusters|endpoints\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(os.Args[1:])
	args := fs.Args()
	// Flags may also follow the command (kmeshctl dump maps -o json).
	follow := false
	rounds, interval := 0, 2*time.Second
	for i := 0; i < len(args); i++ {
		switch {
		case (args[i] == "-o" || args[i] == "--o") && i+1 < len(args):
			*output = args[i+1]
		case args[i] == "-f" || args[i] == "--follow":
			follow = true
			args = append(args[:i], args[i+1:]...)
			i--
			continue
		case args[i] == "-n" && i+1 < len(args):
			if _, err := fmt.Sscanf(args[i+1], "%d", &rounds); err != nil {
				fmt.Fprintln(os.Stderr, "kmeshctl: -n wants a number")
				os.Exit(2)
			}
		case args[i] == "-interval" && i+1 < len(args):
			d, err := time.ParseDuration(args[i+1])
			if err != nil || d <= 0 {
				fmt.Fprintln(os.Stderr, "kmeshctl: -interval wants a duration such as 2s")
				os.Exit(2)
			}
			interval = d
		default:
			continue
		}
		args = append(args[:i], args[i+2:]...)
		i--
	}
	c := client{base: "http://" + *adminAddr, json: *output == "json", out: os.Stdout}
	var err error
	switch {
	case len(args) == 1 && args[0] == "status":
		err = c.status()
	case len(args) == 2 && args[0] == "dump":
		err = c.dump(args[1])
	case len(args) == 1 && args[0] == "metrics":
		err = c.raw("/metrics")
	case len(args) == 1 && args[0] == "connections":
		err = c.showConnections()
	case len(args) == 1 && args[0] == "top":
		err = c.top(interval, rounds)
	case len(args) == 1 && args[0] == "logs":
		err = c.logs(follow)
	case len(args) == 2 && args[0] == "waypoint":
		// The waypoint has its own admin; -admin (or KMESH_WAYPOINT_ADMIN)
		// points elsewhere.
		adminSet := false
		fs.Visit(func(f *flag.Flag) { adminSet = adminSet || f.Name == "admin" })
		if !adminSet {
			c.base = "http://" + envOr("KMESH_WAYPOINT_ADMIN", defaultWaypointAdmin)
		}
		c.server = "kmesh-waypoint"
		err = c.waypoint(args[1])
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmeshctl:", err)
		os.Exit(1)
	}
}

type client struct {
	base string
	json bool
	// server names what answers at base, for errors (default kmesh-daemon).
	server string
	// out is where the command writes (standard output).
	out io.Writer
}

func (c client) get(path string) ([]byte, error) {
	hc := http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(c.base + path)
	if err != nil {
		return nil, fmt.Errorf("is %s running? %w", c.serverName(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (c client) serverName() string {
	if c.server == "" {
		return "kmesh-daemon"
	}
	return c.server
}

// getJSON decodes the answer at path into v, one of the admin API's
// types.
func (c client) getJSON(path string, v any) error {
	b, err := c.get(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeJSON is -o json: the server's types, indented.
func (c client) writeJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c client) raw(path string) error {
	b, err := c.get(path)
	if err != nil {
		return err
	}
	_, err = c.out.Write(b)
	return err
}

func (c client) status() error {
	var st admin.Status
	if err := c.getJSON("/debug/status", &st); err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(st)
	}
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(w, "%s\t%v\n", k, v) }
	row("ready", st.Ready)
	row("version", st.Version)
	row("node", st.Node)
	row("locality", st.Locality)
	row("source", st.Source)
	row("connected", st.Connected)
	row("pushes", st.Pushes)
	row("nacks", st.NACKs)
	if strings.HasPrefix(st.Source, "xds:") {
		row("xdsConnects", st.XDSConnects)
		row("xdsACKs", st.XDSACKs)
		row("xdsNACKs", st.XDSNACKs)
	}
	row("lastError", st.LastError)
	row("services", st.Services)
	row("workloads", st.Workloads)
	row("policies", st.Policies)
	row("pods", st.Pods)
	row("enrolledPods", st.EnrolledPods)
	return w.Flush()
}

func (c client) dump(what string) error {
	switch what {
	case "services", "workloads", "policies":
		var d admin.ConfigDump
		if err := c.getJSON("/debug/config_dump", &d); err != nil {
			return err
		}
		return c.showConfig(&d, what)
	case "maps":
		var m admin.MapDump
		if err := c.getJSON("/debug/maps", &m); err != nil {
			return err
		}
		if c.json {
			return c.writeJSON(m)
		}
		return c.showMaps(&m)
	case "pods":
		var pods admin.Pods
		if err := c.getJSON("/debug/pods", &pods); err != nil {
			return err
		}
		if c.json {
			return c.writeJSON(pods)
		}
		return c.showPods(pods)
	}
	return fmt.Errorf("unknown dump %q (services, workloads, policies, maps, pods)", what)
}

func (c client) showConfig(d *admin.ConfigDump, what string) error {
	if c.json {
		switch what {
		case "services":
			return c.writeJSON(d.Services)
		case "workloads":
			return c.writeJSON(d.Workloads)
		}
		return c.writeJSON(d.Policies)
	}
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	switch what {
	case "services":
		fmt.Fprintln(w, "SERVICE\tID\tVIPS\tPORTS\tPOLICY\tWAYPOINT\tWORKLOADS")
		for _, s := range d.Services {
			var ports []string
			for _, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%d->%d", p.ServicePort, p.TargetPort))
			}
			waypoint := s.Waypoint.String()
			if waypoint == "" {
				waypoint = "-"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%d\n", s.Key, s.ID, joinAddrs(s.VIPs), strings.Join(ports, ","), s.LB.Policy, waypoint, len(s.Endpoints))
		}
	case "workloads":
		fmt.Fprintln(w, "WORKLOAD\tID\tADDRESSES\tHEALTHY\tNODE")
		for _, x := range d.Workloads {
			fmt.Fprintf(w, "%s/%s\t%d\t%s\t%v\t%s\n", x.Namespace, x.Name, x.ID, joinAddrs(x.Addresses), x.Healthy, x.Node)
		}
	case "policies":
		fmt.Fprintln(w, "POLICY\tACTION\tSCOPE\tDRY-RUN\tRULE GROUPS")
		for _, p := range d.Policies {
			fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%d\n", p.Key, p.Action, p.Scope, p.DryRun, len(p.Groups))
		}
	}
	return w.Flush()
}

func (c client) showMaps(m *admin.MapDump) error {
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "KERNEL SERVICE\tVIPS\tPORTS\tENDPOINTS BY PRIORITY\tWAYPOINT")
	for _, s := range m.Services {
		var ports, prios []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d->%d", p.Port, p.TargetPort))
		}
		for _, e := range s.Endpoints {
			prios = append(prios, fmt.Sprint(e))
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", s.ID, joinAddrs(s.VIPs), strings.Join(ports, ","), strings.Join(prios, " "), s.Waypoint)
	}
	fmt.Fprintln(w, "\nKERNEL BACKEND\tADDRESSES\tIDENTITY\tWAYPOINT")
	for _, be := range m.Backends {
		fmt.Fprintf(w, "%d\t%s\t%d\t%s\n", be.ID, joinAddrs(be.Addresses), be.Identity, be.Waypoint)
	}
	fmt.Fprintf(w, "\nENROLLED NETNS\t%d\n", len(m.Enrolled))
	fmt.Fprintln(w, "\nMAP\tENTRIES\tCAPACITY")
	for _, n := range slices.Sorted(maps.Keys(m.Usage)) {
		fmt.Fprintf(w, "%s\t%d\t%d\n", n, m.Usage[n][0], m.Usage[n][1])
	}
	fmt.Fprintln(w, "\nKERNEL EVENT\tCOUNT")
	for _, n := range slices.Sorted(maps.Keys(m.Stats)) {
		fmt.Fprintf(w, "%s\t%d\n", n, m.Stats[n])
	}
	return w.Flush()
}

func (c client) showPods(pods admin.Pods) error {
	w := tabwriter.NewWriter(c.out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "POD\tSANDBOX\tIPS\tENROLLED\tWHY")
	for _, p := range pods {
		id := p.GetContainerId()
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%v\t%s\n", p.GetNamespace(), p.GetName(), id, strings.Join(p.GetIps(), ","), p.GetEnrolled(), p.GetReason())
	}
	return w.Flush()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
