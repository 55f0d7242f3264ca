package l7

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http/httptrace"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// reqTrace records where one request's time went: the TCP connect (the
// kernel's handshake, SYN retransmits included), the wait for the
// connection, writing the request and the answer's first byte; and the
// connection's addresses, to find its sockets in the namespaces.
type reqTrace struct {
	mu                                 sync.Mutex
	begin                              time.Time
	connectStart, connectDone, gotConn time.Time
	wrote, firstByte                   time.Time
	local, remote                      string
	reused                             bool
	connectErr                         error
}

func (r *reqTrace) clientTrace() *httptrace.ClientTrace {
	at := func(p *time.Time) {
		r.mu.Lock()
		*p = time.Now()
		r.mu.Unlock()
	}
	return &httptrace.ClientTrace{
		ConnectStart: func(string, string) { at(&r.connectStart) },
		ConnectDone: func(_, _ string, err error) {
			at(&r.connectDone)
			r.mu.Lock()
			r.connectErr = err
			r.mu.Unlock()
		},
		GotConn: func(i httptrace.GotConnInfo) {
			at(&r.gotConn)
			r.mu.Lock()
			r.reused = i.Reused
			if i.Conn != nil {
				r.local, r.remote = i.Conn.LocalAddr().String(), i.Conn.RemoteAddr().String()
			}
			r.mu.Unlock()
		},
		WroteRequest:         func(httptrace.WroteRequestInfo) { at(&r.wrote) },
		GotFirstResponseByte: func() { at(&r.firstByte) },
	}
}

// String says, from the request's start, when each step ended.
func (r *reqTrace) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	since := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Sub(r.begin).Round(100 * time.Microsecond).String()
	}
	s := fmt.Sprintf("connect start %s done %s (%s), got conn %s (reused %v, %s -> %s), wrote %s, first byte %s",
		since(r.connectStart), since(r.connectDone), durOrDash(r.connectStart, r.connectDone), since(r.gotConn), r.reused,
		r.local, r.remote, since(r.wrote), since(r.firstByte))
	if r.connectErr != nil {
		s += fmt.Sprintf(", connect error %v", r.connectErr)
	}
	return s
}

func durOrDash(a, b time.Time) string {
	if a.IsZero() || b.IsZero() {
		return "-"
	}
	return b.Sub(a).Round(100 * time.Microsecond).String()
}

// slowLog keeps a line per request over a second, for the suite's end.
var (
	slowMu  sync.Mutex
	slowLog []string
)

func noteSlow(method, u string, took time.Duration, tr *reqTrace, err error) {
	slowMu.Lock()
	defer slowMu.Unlock()
	slowLog = append(slowLog, fmt.Sprintf("%s %s %s %s: took %s; %s; err %v",
		time.Now().Format("15:04:05.000"), method, u, tr.begin.Format("15:04:05.000"), took.Round(time.Millisecond), tr, err))
}

// inNetNS runs a command (ss, ip, bridge) in the network namespace at
// nsPath and returns what it printed.
func inNetNS(nsPath string, argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + nsPath, "--"}, argv...)...).CombinedOutput()
	s := strings.TrimRight(string(out), "\n")
	if err != nil {
		s += fmt.Sprintf(" (%v)", err)
	}
	return s
}

// netState is what the namespaces hold when a request hangs: the
// client's connecting sockets (with their retransmit timers: a lost SYN),
// the waypoint's sockets (a SYN-RECV: a lost SYN-ACK; the listeners'
// queues; TIME_WAIT only as counted by tcpCounters), both
// neighbour tables, and in the node the bridge's forwarding table and
// every link's drops; the machine's softnet drops.
func (s *suite) netState() string {
	var b strings.Builder
	section := func(title, out string) {
		fmt.Fprintf(&b, "--- %s:\n%s\n", title, out)
	}
	section("client: ss -tanoie state syn-sent", inNetNS(s.client.NSPath, "ss", "-tanoie", "state", "syn-sent"))
	section("client: ss -tan (but TIME-WAIT)", inNetNS(s.client.NSPath, "ss", "-tan", "exclude", "time-wait"))
	section("client: ip -s neigh", inNetNS(s.client.NSPath, "ip", "-s", "neigh"))
	section("client: ip -s link", inNetNS(s.client.NSPath, "ip", "-s", "link"))
	section("waypoint: ss -tanoie (but TIME-WAIT; a lost SYN-ACK leaves a SYN-RECV)", inNetNS(s.wpPod.NSPath, "ss", "-tanoie", "exclude", "time-wait"))
	section("waypoint: ss -ltn", inNetNS(s.wpPod.NSPath, "ss", "-ltn"))
	section("waypoint: ip -s neigh", inNetNS(s.wpPod.NSPath, "ip", "-s", "neigh"))
	section("waypoint: ip -s link", inNetNS(s.wpPod.NSPath, "ip", "-s", "link"))
	section("node: bridge fdb (dynamic)", inNetNS(s.Box.NodeNSPath, "sh", "-c", "bridge fdb show br "+s.Box.Bridge+" | grep -v permanent"))
	section("node: ip -s link", inNetNS(s.Box.NodeNSPath, "ip", "-s", "link"))
	section("node: ip -s neigh", inNetNS(s.Box.NodeNSPath, "ip", "-s", "neigh"))
	section("node: iptables-save", inNetNS(s.Box.NodeNSPath, "iptables-save"))
	section("node: conntrack", inNetNS(s.Box.NodeNSPath, "sh", "-c", "cat /proc/net/nf_conntrack 2>&1 | wc -l"))
	if st, err := os.ReadFile("/proc/stat"); err == nil {
		var cpu []string
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "cpu") {
				cpu = append(cpu, l)
			}
		}
		section("/proc/stat (user nice system idle iowait irq softirq steal, in 10 ms)", strings.Join(cpu, "\n"))
	}
	if sn, err := os.ReadFile("/proc/net/softnet_stat"); err == nil {
		section("softnet_stat (processed dropped squeezed ...)", strings.TrimSpace(string(sn)))
	}
	fmt.Fprintf(&b, "--- since the scenarios began: the machine's CPU backlogs dropped %d packets; the box's links dropped: node: %s; client: %s; waypoint: %s\n",
		softnetDropped()-s.softnetAtStart, linkDropsSince(s.Box.NodeNSPath, s.linksAtStart[0]),
		linkDropsSince(s.client.NSPath, s.linksAtStart[1]), linkDropsSince(s.wpPod.NSPath, s.linksAtStart[2]))
	return b.String()
}

// softnetDropped is the sum over CPUs of /proc/net/softnet_stat's second
// column: packets the kernel dropped because a CPU's input backlog
// (net.core.netdev_max_backlog) was full. Every veth and loopback packet of
// every namespace on the machine passes that backlog, so another workload
// can make ours lose a SYN. -1 when it cannot be read.
func softnetDropped() int64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return -1
	}
	var sum int64
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			return -1
		}
		v, err := strconv.ParseInt(f[1], 16, 64)
		if err != nil {
			return -1
		}
		sum += v
	}
	return sum
}

// linkDrops are the drop and error counters (ip -s link) of a
// namespace's links, by name.
func linkDrops(nsPath string) (map[string][4]int64, error) {
	out := inNetNS(nsPath, "ip", "-j", "-s", "link")
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			RX struct{ Dropped, Errors int64 } `json:"rx"`
			TX struct{ Dropped, Errors int64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("ip -j -s link: %v: %.200s", err, out)
	}
	m := map[string][4]int64{}
	for _, k := range links {
		st := k.Stats
		m[k.Name] = [4]int64{st.RX.Dropped, st.RX.Errors, st.TX.Dropped, st.TX.Errors}
	}
	return m, nil
}

// linkDropsSince says which links of a namespace dropped packets since
// before (a linkDrops reading; nil: since they were made), or "none".
func linkDropsSince(nsPath string, before map[string][4]int64) string {
	now, err := linkDrops(nsPath)
	if err != nil {
		return err.Error()
	}
	var l []string
	for _, name := range slices.Sorted(maps.Keys(now)) {
		a, b := now[name], before[name]
		if a != b {
			l = append(l, fmt.Sprintf("%s rx dropped +%d errors +%d, tx dropped +%d errors +%d", name, a[0]-b[0], a[1]-b[1], a[2]-b[2], a[3]-b[3]))
		}
	}
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, "; ")
}

// stealTicks is the time the machine's hypervisor kept its CPUs from it
// (/proc/stat, all CPUs, in USER_HZ ticks): a stalled VM delays timers
// and packets alike. -1 when it cannot be read.
func stealTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	v, err := strconv.ParseInt(f[8], 10, 64)
	if err != nil {
		return -1
	}
	return v
}
