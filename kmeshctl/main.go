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
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	fs := flag.NewFlagSet("kmeshctl", flag.ExitOnError)
	admin := fs.String("admin", envOr("KMESH_ADMIN", "127.0.0.1:15200"), "the daemon's admin address")
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
	c := client{base: "http://" + *admin, json: *output == "json"}
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
		err = c.waypoint(args[1], os.Stdout)
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
}

func (c client) get(path string) ([]byte, error) {
	hc := http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(c.base + path)
	if err != nil {
		server := c.server
		if server == "" {
			server = "kmesh-daemon"
		}
		return nil, fmt.Errorf("is %s running? %w", server, err)
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

func (c client) raw(path string) error {
	b, err := c.get(path)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}

func (c client) status() error {
	b, err := c.get("/debug/status")
	if err != nil {
		return err
	}
	if c.json {
		_, err = os.Stdout.Write(b)
		return err
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	keys := make([]string, 0, len(st))
	for k := range st {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w := tabwriter.NewWriter(os.Stdout, 0, 2, 2, ' ', 0)
	for _, k := range keys {
		fmt.Fprintf(w, "%s\t%v\n", k, st[k])
	}
	return w.Flush()
}

func (c client) dump(what string) error {
	path := map[string]string{
		"services": "/debug/config_dump", "workloads": "/debug/config_dump", "policies": "/debug/config_dump",
		"maps": "/debug/maps", "pods": "/debug/pods",
	}[what]
	if path == "" {
		return fmt.Errorf("unknown dump %q (services, workloads, policies, maps, pods)", what)
	}
	b, err := c.get(path)
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if path == "/debug/config_dump" {
		if err := json.Unmarshal(b, &doc); err != nil {
			return err
		}
		b = doc[what]
	}
	if c.json {
		_, err = os.Stdout.Write(append(b, '\n'))
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 2, 2, ' ', 0)
	defer w.Flush()
	switch what {
	case "services":
		var svcs []struct {
			Key     string   `json:"key"`
			ID      uint32   `json:"id"`
			VIPs    []string `json:"vips"`
			Backing []string `json:"backing"`
			Ports   []struct {
				ServicePort, TargetPort int
			} `json:"ports"`
			LB struct {
				Mode   int    `json:"mode"`
				Policy string `json:"policy"`
			} `json:"loadBalancing"`
		}
		if err := json.Unmarshal(b, &svcs); err != nil {
			return err
		}
		fmt.Fprintln(w, "SERVICE\tID\tVIPS\tPORTS\tPOLICY\tWORKLOADS")
		for _, s := range svcs {
			var ports []string
			for _, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%d->%d", p.ServicePort, p.TargetPort))
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%d\n", s.Key, s.ID, strings.Join(s.VIPs, ","), strings.Join(ports, ","), s.LB.Policy, len(s.Backing))
		}
	case "workloads":
		var wls []struct {
			UID       string   `json:"uid"`
			Name      string   `json:"name"`
			Namespace string   `json:"namespace"`
			ID        uint32   `json:"id"`
			Addresses []string `json:"addresses"`
			Healthy   bool     `json:"healthy"`
			Node      string   `json:"node"`
		}
		if err := json.Unmarshal(b, &wls); err != nil {
			return err
		}
		fmt.Fprintln(w, "WORKLOAD\tID\tADDRESSES\tHEALTHY\tNODE")
		for _, x := range wls {
			fmt.Fprintf(w, "%s/%s\t%d\t%s\t%v\t%s\n", x.Namespace, x.Name, x.ID, strings.Join(x.Addresses, ","), x.Healthy, x.Node)
		}
	case "policies":
		var ps []struct {
			Key    string `json:"key"`
			Scope  int    `json:"scope"`
			Action int    `json:"action"`
			DryRun bool   `json:"dryRun"`
			Groups []any  `json:"groups"`
		}
		if err := json.Unmarshal(b, &ps); err != nil {
			return err
		}
		fmt.Fprintln(w, "POLICY\tACTION\tSCOPE\tDRY-RUN\tRULE GROUPS")
		for _, p := range ps {
			fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%d\n", p.Key, []string{"ALLOW", "DENY"}[p.Action&1],
				[]string{"workload", "namespace", "global"}[min(p.Scope, 2)], p.DryRun, len(p.Groups))
		}
	case "maps":
		var m struct {
			Services []struct {
				ID        uint32
				VIPs      []string
				Ports     []struct{ Port, TargetPort int }
				Policy    int
				Endpoints [][]uint32
				Waypoint  string
			} `json:"services"`
			Backends []struct {
				ID        uint32
				Addresses []string
				Waypoint  string
				Identity  uint32
			} `json:"backends"`
			Enrolled map[string]any    `json:"enrolled"`
			Usage    map[string][2]int `json:"usage"`
			Stats    map[string]uint64 `json:"stats"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		fmt.Fprintln(w, "KERNEL SERVICE\tVIPS\tPORTS\tENDPOINTS BY PRIORITY\tWAYPOINT")
		for _, s := range m.Services {
			var ports, prios []string
			for _, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%d->%d", p.Port, p.TargetPort))
			}
			for _, e := range s.Endpoints {
				prios = append(prios, fmt.Sprint(e))
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", s.ID, strings.Join(s.VIPs, ","), strings.Join(ports, ","), strings.Join(prios, " "), s.Waypoint)
		}
		fmt.Fprintln(w, "\nKERNEL BACKEND\tADDRESSES\tIDENTITY\tWAYPOINT")
		for _, be := range m.Backends {
			fmt.Fprintf(w, "%d\t%s\t%d\t%s\n", be.ID, strings.Join(be.Addresses, ","), be.Identity, be.Waypoint)
		}
		fmt.Fprintf(w, "\nENROLLED NETNS\t%d\n", len(m.Enrolled))
		names := make([]string, 0, len(m.Usage))
		for n := range m.Usage {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintln(w, "\nMAP\tENTRIES\tCAPACITY")
		for _, n := range names {
			fmt.Fprintf(w, "%s\t%d\t%d\n", n, m.Usage[n][0], m.Usage[n][1])
		}
		stats := make([]string, 0, len(m.Stats))
		for n := range m.Stats {
			stats = append(stats, n)
		}
		sort.Strings(stats)
		fmt.Fprintln(w, "\nKERNEL EVENT\tCOUNT")
		for _, n := range stats {
			fmt.Fprintf(w, "%s\t%d\n", n, m.Stats[n])
		}
	case "pods":
		var pods []struct {
			Name        string   `json:"name"`
			Namespace   string   `json:"namespace"`
			ContainerID string   `json:"containerId"`
			Reason      string   `json:"reason"`
			Enrolled    bool     `json:"enrolled"`
			IPs         []string `json:"ips"`
		}
		if err := json.Unmarshal(b, &pods); err != nil {
			return err
		}
		fmt.Fprintln(w, "POD\tSANDBOX\tIPS\tENROLLED\tWHY")
		for _, p := range pods {
			id := p.ContainerID
			if len(id) > 12 {
				id = id[:12]
			}
			fmt.Fprintf(w, "%s/%s\t%s\t%s\t%v\t%s\n", p.Namespace, p.Name, id, strings.Join(p.IPs, ","), p.Enrolled, p.Reason)
		}
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
