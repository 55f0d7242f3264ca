// kmeshctl inspects a node's kmesh data path through the daemon's admin API.
//
//	kmeshctl status
//	kmeshctl dump services|workloads|policies|maps|pods [-o json]
//	kmeshctl metrics
//	kmeshctl connections [-o json]     open connections, live
//	kmeshctl top [-n rounds] [-interval 2s]
//	kmeshctl logs [-f] [-o json]       the access log, followed with -f
//	kmeshctl waypoint listeners|routes|clusters|endpoints|status [-o json]
//	                                   kmesh-waypoint's config (admin default 127.0.0.1:15000)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/kmesh-go/kmesh/daemon/admin"
	"github.com/kmesh-go/kmesh/internal/unixsock"
)

func main() {
	os.Exit(runCLI(os.Args[1:], os.Stdout, os.Stderr))
}

// options are kmeshctl's flags, wherever on the line they come.
type options struct {
	admin    string
	adminSet bool
	// noSocket is why the default daemon address is not the daemon's
	// socket ("": it is, or the address was given).
	noSocket string
	output   string
	follow   bool
	rounds   int
	interval time.Duration
}

const usageLine = "usage: kmeshctl [-admin addr] [-o table|json] status | dump services|workloads|policies|maps|pods | metrics | connections | top [-n rounds] [-interval d] | logs [-f] | waypoint listeners|routes|clusters|endpoints|status\n"

// parseArgs reads the flags before, between and after the command's words
// (kmeshctl dump maps -o json, kmeshctl status -admin host:port), so every
// spelling the flag package knows (-o=json, --admin x) works in every
// place, and an unknown flag is an error wherever it is.
func parseArgs(args []string, stderr io.Writer) (options, []string, error) {
	var o options
	fs := flag.NewFlagSet("kmeshctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defAdmin, noSocket := defaultDaemonAdmin()
	fs.StringVar(&o.admin, "admin", envOr("KMESH_ADMIN", defAdmin),
		"admin address, unix:/path or host:port: the daemon's (KMESH_ADMIN; default its socket "+daemonSocket+", else "+legacyDaemonAdmin+"), or for waypoint commands kmesh-waypoint's (KMESH_WAYPOINT_ADMIN, default "+defaultWaypointAdmin+")")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.BoolVar(&o.follow, "f", false, "logs: follow the access log")
	fs.BoolVar(&o.follow, "follow", false, "logs: follow the access log (same as -f)")
	fs.IntVar(&o.rounds, "n", 0, "top: rounds to draw (0: until ^C)")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "top: time between rounds")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageLine)
		fs.PrintDefaults()
	}
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return o, nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// "--" ends the flags: everything after it is words.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			words = append(words, rest...)
			break
		}
		words = append(words, rest[0])
		args = rest[1:]
	}
	fs.Visit(func(f *flag.Flag) { o.adminSet = o.adminSet || f.Name == "admin" })
	if !o.adminSet && os.Getenv("KMESH_ADMIN") == "" {
		o.noSocket = noSocket
	}
	if o.rounds < 0 {
		return o, nil, badUsage("-n wants a number of rounds, 0 or more")
	}
	if o.interval <= 0 {
		return o, nil, badUsage("-interval wants a duration such as 2s")
	}
	if o.output != "table" && o.output != "json" {
		return o, nil, badUsage(fmt.Sprintf("-o %q: table or json", o.output))
	}
	// metrics is Prometheus text and top a screen redrawn in place: neither
	// has a JSON form, and printing them anyway would hand a script that
	// asked for JSON something it cannot parse, with exit 0.
	if o.output == "json" && len(words) > 0 {
		switch words[0] {
		case "metrics":
			return o, nil, badUsage("metrics is Prometheus text; it has no -o json")
		case "top":
			return o, nil, badUsage("top has no -o json; connections -o json is the same data")
		}
	}
	return o, words, nil
}

// badUsage is a command line kmeshctl refuses after the flag package
// accepted it (the flag package prints its own errors).
type badUsage string

func (e badUsage) Error() string { return string(e) }

// runCLI is kmeshctl with its arguments; it returns the exit code: 0, 1
// when the command failed, 2 when the command line is wrong.
func runCLI(argv []string, stdout, stderr io.Writer) int {
	o, args, err := parseArgs(argv, stderr)
	if err == flag.ErrHelp {
		return 0
	}
	if err != nil {
		if _, ok := err.(badUsage); ok {
			fmt.Fprintln(stderr, "kmeshctl:", err)
		}
		return 2
	}
	usage := func() int {
		fmt.Fprint(stderr, usageLine)
		return 2
	}
	adminAddr := o.admin
	if len(args) > 0 && args[0] == "waypoint" && !o.adminSet {
		// The waypoint has its own admin; -admin (or KMESH_WAYPOINT_ADMIN)
		// points elsewhere.
		adminAddr = envOr("KMESH_WAYPOINT_ADMIN", defaultWaypointAdmin)
		o.noSocket = ""
	}
	base, sock, err := adminBase(adminAddr)
	if err != nil {
		fmt.Fprintln(stderr, "kmeshctl:", err)
		return 2
	}
	c := client{base: base, sock: sock, json: o.output == "json", out: stdout}
	switch {
	case len(args) == 1 && args[0] == "help":
		// Asked for, the usage is an answer (stdout, exit 0), as with -h.
		fmt.Fprint(stdout, usageLine)
		return 0
	case len(args) == 1 && args[0] == "status":
		err = c.status()
	case len(args) == 2 && args[0] == "dump":
		err = c.dump(args[1])
	case len(args) == 1 && args[0] == "metrics":
		err = c.raw("/metrics")
	case len(args) == 1 && args[0] == "connections":
		err = c.showConnections()
	case len(args) == 1 && args[0] == "top":
		err = c.top(o.interval, o.rounds)
	case len(args) == 1 && args[0] == "logs":
		err = c.logs(o.follow)
	case len(args) == 2 && args[0] == "waypoint":
		c.server = "kmesh-waypoint"
		err = c.waypoint(args[1])
	default:
		return usage()
	}
	if err != nil {
		if o.noSocket != "" {
			// On a DaemonSet node the old port is the status address
			// (/ready and /metrics only): its 404, or no answer, is
			// about the socket kmeshctl could not use.
			err = fmt.Errorf("%w (%s, so kmeshctl asked %s; the daemon's admin API is on its socket, for root: -admin unix:%s)",
				err, o.noSocket, legacyDaemonAdmin, daemonSocket)
		}
		fmt.Fprintln(stderr, "kmeshctl:", err)
		return 1
	}
	return 0
}

// The daemon's admin API: its socket (kmesh-daemon's --admin-address
// default), or the loopback port a daemon of an earlier release, or one
// started with a TCP address, listens on (variables for tests).
var (
	daemonSocket      = admin.Socket
	legacyDaemonAdmin = "127.0.0.1:15200"
)

// defaultDaemonAdmin is the daemon's socket when there is one, else its
// old loopback port and why not the socket (not there, or not root: the
// socket's folder is root's).
func defaultDaemonAdmin() (addr, noSocket string) {
	fi, err := os.Stat(daemonSocket)
	switch {
	case err == nil && fi.Mode().Type() == os.ModeSocket:
		return unixsock.Prefix + daemonSocket, ""
	case errors.Is(err, os.ErrNotExist):
		return legacyDaemonAdmin, "no " + daemonSocket
	case err != nil:
		return legacyDaemonAdmin, err.Error()
	}
	return legacyDaemonAdmin, daemonSocket + " is not a socket"
}

// adminBase is the URL kmeshctl prefixes to the admin API's paths, and the
// unix socket to reach it through ("" for TCP): addr is unix:/path,
// host:port, or the admin's http:// URL as curl and a browser take it
// (pasted as is it became http://http//host:port, a DNS lookup of "http").
func adminBase(addr string) (base, sock string, err error) {
	if path, ok := unixsock.Path(addr); ok {
		return "http://localhost", path, nil
	}
	hostPort := strings.TrimSuffix(strings.TrimPrefix(addr, "http://"), "/")
	if strings.Contains(hostPort, "/") {
		return "", "", fmt.Errorf("-admin %q: unix:/path, host:port or http://host:port (the admin API is plain HTTP)", addr)
	}
	return "http://" + hostPort, "", nil
}

type client struct {
	base string
	// sock is the unix socket the admin API is reached through ("":
	// base's host:port).
	sock string
	json bool
	// server names what answers at base, for errors (default kmesh-daemon).
	server string
	// out is where the command writes (standard output).
	out io.Writer
}

// requestTimeout bounds one answer of the admin API (all but logs -f).
var requestTimeout = 10 * time.Second

func (c client) get(path string) ([]byte, error) {
	hc := c.httpClient(requestTimeout)
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
	return c.decode(path, b, v)
}

func (c client) decode(path string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		// A web page, or the other kmesh server's answer (the waypoint's
		// /debug/status is not the daemon's): name what was expected where.
		what := "not JSON"
		if json.Valid(b) {
			what = "JSON, but not " + c.serverName() + "'s"
		}
		return fmt.Errorf("%s answered %s with %s (is it %s's admin address?): %w", c.host(), path, what, c.serverName(), err)
	}
	return nil
}

// getObject is getJSON for an answer that is a JSON object holding key.
// kmesh-daemon and kmesh-waypoint both serve /debug/config_dump, and each
// one's dump decodes into the other's type as an empty one, which kmeshctl
// would print as "nothing configured" with exit 0; key is a field the
// expected server always writes.
func (c client) getObject(path, key string, v any) error {
	b, err := c.get(path)
	if err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if err := c.decode(path, b, &fields); err != nil {
		return err
	}
	if _, ok := fields[key]; !ok {
		return fmt.Errorf("%s answered %s without %q: that is not %s's admin API", c.host(), path, key, c.serverName())
	}
	return c.decode(path, b, v)
}

// host is the admin address kmeshctl talks to.
func (c client) host() string {
	if c.sock != "" {
		return c.sock
	}
	return strings.TrimPrefix(c.base, "http://")
}

// httpClient reaches the admin API (timeout 0: none).
func (c client) httpClient(timeout time.Duration) *http.Client {
	hc := &http.Client{Timeout: timeout}
	if c.sock != "" {
		hc.Transport = socketTransport(c.sock)
	}
	return hc
}

// socketTransports are the transports to admin sockets, one per path. A
// transport per request would leave each request's connection open and
// idle (top asks every interval until ^C) until the daemon's idle
// timeout closes it; TCP addresses share http.DefaultTransport likewise.
var socketTransports = struct {
	sync.Mutex
	m map[string]*http.Transport
}{m: map[string]*http.Transport{}}

func socketTransport(sock string) *http.Transport {
	socketTransports.Lock()
	defer socketTransports.Unlock()
	t := socketTransports.m[sock]
	if t == nil {
		t = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		socketTransports.m[sock] = t
	}
	return t
}

// writeJSON is -o json: the server's types, indented.
func (c client) writeJSON(v any) error {
	// A list view is a list even when empty: the daemon writes an empty
	// kind as null (a nil slice), which jq '.[]' cannot iterate.
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
		v = []struct{}{}
	}
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
		if err := c.getObject("/debug/config_dump", "services", &d); err != nil {
			return err
		}
		if err := complete(&d); err != nil {
			return fmt.Errorf("%s answered /debug/config_dump with %w", c.host(), err)
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

// complete checks that every entry of d holds its object: the daemon
// always writes them, and an entry without one (another version's or
// another server's answer) would be a nil dereference in the tables.
func complete(d *admin.ConfigDump) error {
	for i, s := range d.Services {
		if s.Service == nil {
			return fmt.Errorf("service %d (id %d) without its service", i, s.ID)
		}
	}
	for i, w := range d.Workloads {
		if w.Workload == nil {
			return fmt.Errorf("workload %d (id %d) without its workload", i, w.ID)
		}
	}
	for i, p := range d.Policies {
		if p == nil {
			return fmt.Errorf("policy %d null, without its policy", i)
		}
	}
	return nil
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
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%d\n", s.Key, s.ID, dash(joinAddrs(s.VIPs)), dash(strings.Join(ports, ",")), dash(string(s.LB.Policy)), dash(s.Waypoint.String()), len(s.Endpoints))
		}
	case "workloads":
		fmt.Fprintln(w, "WORKLOAD\tID\tADDRESSES\tHEALTHY\tNODE")
		for _, x := range d.Workloads {
			fmt.Fprintf(w, "%s/%s\t%d\t%s\t%v\t%s\n", x.Namespace, x.Name, x.ID, dash(joinAddrs(x.Addresses)), x.Healthy, dash(x.Node))
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
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", s.ID, dash(joinAddrs(s.VIPs)), dash(strings.Join(ports, ",")), dash(strings.Join(prios, " ")), dash(s.Waypoint.String()))
	}
	fmt.Fprintln(w, "\nKERNEL BACKEND\tADDRESSES\tIDENTITY\tWAYPOINT")
	for _, be := range m.Backends {
		fmt.Fprintf(w, "%d\t%s\t%d\t%s\n", be.ID, dash(joinAddrs(be.Addresses)), be.Identity, dash(be.Waypoint.String()))
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
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%v\t%s\n", p.GetNamespace(), p.GetName(), dash(id), dash(strings.Join(p.GetIps(), ",")), p.GetEnrolled(), dash(p.GetReason()))
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
