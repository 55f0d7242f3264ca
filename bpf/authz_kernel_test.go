package bpf_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/daemon/authz"
	"github.com/kmesh-go/kmesh/daemon/model"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// authzFixture: a server pod guarded by policies (tc on its veth), an
// enrolled client and a client that is not enrolled, each with a settable
// identity.
type authzFixture struct {
	*fixture
	server   *testbed.Pod
	outsider *testbed.Pod
	idents   []authz.Identity
	nextPS   uint32
	livePS   uint32
}

const (
	serverWID   = 100
	clientWID   = 200
	outsiderWID = 201
)

func newAuthzFixture(t *testing.T) *authzFixture {
	f := &authzFixture{fixture: newFixture(t, 1, loader.Sizes{}), nextPS: 1}
	f.server = f.servers[0]
	for _, port := range []uint16{9090, 9443} {
		f.server.ServeTCP(t, port, fmt.Sprintf("s0-%d", port))
	}
	f.outsider = f.net.AddPod(t, "outsider")
	for i, ns := range []string{"frontend", "backend", "evil"} {
		for j, sa := range []string{"web", "api", "default"} {
			f.idents = append(f.idents, authz.Identity{ID: uint32(1 + i*3 + j), TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa})
		}
	}
	err := podns.Do(testbed.NSPath(f.net.Node), func() error {
		ifc, err := net.InterfaceByName(f.server.HostVeth)
		if err != nil {
			return err
		}
		return loader.AttachPodTC(f.pins, "server", ifc.Index)
	})
	if err != nil {
		t.Fatal(err)
	}
	f.setIdentity(clientWID, f.client, 1)
	f.setIdentity(outsiderWID, f.outsider, 1)
	// The enrolled client knows its own workload, so connect() authorizes.
	if err := f.manage.Enroll(f.cookie, maps.Enrollment{WorkloadID: clientWID}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *authzFixture) setIdentity(wid uint32, p *testbed.Pod, identity uint32) {
	f.t.Helper()
	if err := f.maps.UpsertBackend(maps.Backend{ID: wid, Addresses: []netip.Addr{p.IP4, p.IP6}, Identity: identity}); err != nil {
		f.t.Fatal(err)
	}
}

// guard compiles policies and makes them guard the server (nil: none).
func (f *authzFixture) guard(policies []*model.AuthzPolicy) *maps.AuthzTables {
	f.t.Helper()
	var txn maps.Txn
	var tables *maps.AuthzTables
	ps := uint32(0)
	if policies != nil {
		var err error
		tables, err = authz.Compile(policies, f.idents, policyIDs, 1<<20)
		if err != nil {
			f.t.Fatal(err)
		}
		ps = f.nextPS
		f.nextPS++
		txn.PolicySets = []maps.PolicySet{{ID: ps, Tables: tables}}
	}
	if f.livePS != 0 {
		txn.DeletePolicySets = []uint32{f.livePS}
	}
	txn.Backends = []maps.Backend{{ID: serverWID, Addresses: []netip.Addr{f.server.IP4, f.server.IP6}, Identity: 4, PolicySet: ps}}
	if err := f.maps.Apply(txn); err != nil {
		f.t.Fatal(err)
	}
	f.livePS = ps
	return tables
}

func policyIDs(key string) uint32 {
	var n uint32
	fmt.Sscanf(key, "ns/p%d", &n)
	return n + 1
}

// outcome of one connection attempt.
type outcome int

const (
	allowed   outcome = iota
	refused           // ECONNREFUSED: reset by the server side's tc program
	forbidden         // EACCES: refused by connect() in the client
	timedOut
)

func (o outcome) String() string {
	return [...]string{"allowed", "reset (ECONNREFUSED)", "EACCES", "timeout"}[o]
}

func attempt(t *testing.T, p *testbed.Pod, dst netip.AddrPort) (outcome, time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := p.Dial("tcp", dst.String(), 3*time.Second)
	took := time.Since(start)
	switch {
	case err == nil:
		c.Close()
		return allowed, took
	case errors.Is(err, unix.ECONNREFUSED):
		return refused, took
	case errors.Is(err, unix.EACCES):
		return forbidden, took
	case strings.Contains(err.Error(), "timeout"):
		return timedOut, took
	}
	t.Fatalf("connect %s: %v", dst, err)
	return 0, 0
}

func strs(kind model.MatchKind, v ...string) []model.StringMatch {
	var out []model.StringMatch
	for _, s := range v {
		out = append(out, model.NewStringMatch(kind, s))
	}
	return out
}

func pol(n int, action model.Action, m model.Match) *model.AuthzPolicy {
	return &model.AuthzPolicy{Key: fmt.Sprintf("ns/p%d", n), Name: fmt.Sprintf("p%d", n), Namespace: "ns", Action: action,
		Groups: [][][]model.Match{{{m}}}}
}

// Each kind of match allows and denies as Istio specifies, through both
// paths: tc for a client outside the mesh, connect() for an enrolled one.
func TestKernelAuthzMatchTypes(t *testing.T) {
	f := newAuthzFixture(t)
	evil := uint32(7)    // evil/web
	backend := uint32(5) // backend/api
	srv := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(f.server.IP4, port) }

	cases := []struct {
		name     string
		policies []*model.AuthzPolicy
		identity uint32 // of both clients
	}{
		{"no policies", nil, evil},
		{"DENY namespace evil, from evil", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{Namespaces: strs(model.MatchExact, "evil")})}, evil},
		{"DENY namespace evil, from backend", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{Namespaces: strs(model.MatchExact, "evil")})}, backend},
		{"DENY not_namespaces backend", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{NotNamespaces: strs(model.MatchExact, "backend")})}, evil},
		{"ALLOW service account api", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{ServiceAccounts: []model.SAMatch{{Namespace: "backend", ServiceAccount: "api"}}})}, backend},
		{"ALLOW service account api, from web", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{ServiceAccounts: []model.SAMatch{{ServiceAccount: "api"}}})}, evil},
		{"ALLOW principal prefix", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{Principals: strs(model.MatchPrefix, "cluster.local/ns/backend/")})}, backend},
		{"DENY not_principals", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{NotPrincipals: strs(model.MatchExact, "cluster.local/ns/backend/sa/api")})}, evil},
		{"DENY source CIDR", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{SourceIPs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}})}, backend},
		// IPv4-mapped: an IPv6 prefix (as ztunnel takes it) no IPv4
		// source is in, though its key is that of 10.244.0.0/24.
		{"ALLOW IPv4-mapped source CIDR", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{SourceIPs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.244.0.0/120")}})}, backend},
		{"DENY not_source CIDR", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{NotSourceIPs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}})}, backend},
		{"ALLOW destination port 9090", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{DestinationPorts: []uint16{9090}})}, backend},
		{"DENY not_destination_ports 9090", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{NotDestinationPorts: []uint16{9090}})}, backend},
		{"ALLOW destination IP", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{DestinationIPs: []netip.Prefix{netip.PrefixFrom(f.servers[0].IP4, 32)}})}, backend},
		{"DENY not_destination IP", []*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{NotDestinationIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})}, backend},
		{"dry-run DENY denies nothing", []*model.AuthzPolicy{func() *model.AuthzPolicy {
			p := pol(1, model.ActionDeny, model.Match{Namespaces: strs(model.MatchExact, "evil")})
			p.DryRun = true
			return p
		}()}, evil},
		{"unknown source never matches an identity clause", []*model.AuthzPolicy{pol(1, model.ActionAllow, model.Match{NotNamespaces: strs(model.MatchExact, "x")}), pol(2, model.ActionAllow, model.Match{Namespaces: strs(model.MatchPrefix, "")})}, 0},
	}
	for _, c := range cases {
		f.guard(c.policies)
		f.setIdentity(clientWID, f.client, c.identity)
		f.setIdentity(outsiderWID, f.outsider, c.identity)
		id := authz.Identity{ID: c.identity}
		for _, x := range f.idents {
			if x.ID == c.identity {
				id = x
			}
		}
		for _, port := range []uint16{serverPort, 9090} {
			for _, client := range []*testbed.Pod{f.client, f.outsider} {
				conn := model.Conn{Src: model.Peer{IP: client.IP4, Known: id.ID != 0, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, TrustDomain: id.TrustDomain},
					DstIP: f.server.IP4, DstPort: port}
				want := allowed
				if !model.Evaluate(c.policies, conn).Allow {
					want = refused
					if client == f.client {
						want = forbidden
					}
				}
				got, took := attempt(t, client, srv(port))
				if got != want {
					t.Errorf("%s: %s to port %d: %s, want %s", c.name, client.Name, port, got, want)
				}
				if got == refused && took > 10*time.Millisecond {
					t.Errorf("%s: the reset took %s (want < 10ms)", c.name, took)
				}
			}
		}
	}
	st, err := f.maps.AuthzStats()
	if err != nil {
		t.Fatal(err)
	}
	if st[2][2] == 0 { // policy p1 -> id 2, dry-run deny
		t.Errorf("dry-run would-deny not counted: %v", st)
	}
	if st[authz.NoAllowID][1] == 0 {
		t.Errorf("denials for want of an ALLOW not counted: %v", st)
	}
}

// Random policies, random identities, every port: the kernel decides as
// the reference evaluator does, on both paths.
func TestKernelAuthzAgreesWithReference(t *testing.T) {
	f := newAuthzFixture(t)
	r := rand.New(rand.NewPCG(3, 5))
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("10.244.0.0/24"), netip.PrefixFrom(f.client.IP4, 32), netip.PrefixFrom(f.outsider.IP4, 32),
		netip.PrefixFrom(f.server.IP4, 32), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"),
	}
	ports := []uint16{serverPort, 9090, 9443}
	namespaces := []string{"frontend", "backend", "evil"}
	accounts := []string{"web", "api", "default"}
	randMatch := func() model.Match {
		var m model.Match
		for field := range 12 {
			if r.IntN(4) != 0 {
				continue
			}
			switch field {
			case 0:
				m.Namespaces = strs(model.MatchExact, namespaces[r.IntN(3)])
			case 1:
				m.NotNamespaces = strs(model.MatchExact, namespaces[r.IntN(3)])
			case 2:
				m.ServiceAccounts = []model.SAMatch{{ServiceAccount: accounts[r.IntN(3)]}}
			case 3:
				m.NotServiceAccounts = []model.SAMatch{{Namespace: namespaces[r.IntN(3)], ServiceAccount: accounts[r.IntN(3)]}}
			case 4:
				m.Principals = strs(model.MatchSuffix, "/sa/"+accounts[r.IntN(3)])
			case 5:
				m.NotPrincipals = strs(model.MatchPrefix, "cluster.local/ns/"+namespaces[r.IntN(3)])
			case 6:
				m.SourceIPs = []netip.Prefix{prefixes[r.IntN(len(prefixes))]}
			case 7:
				m.NotSourceIPs = []netip.Prefix{prefixes[r.IntN(len(prefixes))]}
			case 8:
				m.DestinationIPs = []netip.Prefix{prefixes[r.IntN(len(prefixes))]}
			case 9:
				m.NotDestinationIPs = []netip.Prefix{prefixes[r.IntN(len(prefixes))]}
			case 10:
				m.DestinationPorts = []uint16{ports[r.IntN(3)]}
			case 11:
				m.NotDestinationPorts = []uint16{ports[r.IntN(3)]}
			}
		}
		return m
	}
	checked := 0
	for round := range 40 {
		var policies []*model.AuthzPolicy
		for i := range 1 + r.IntN(4) {
			p := pol(i, model.Action(r.IntN(2)), randMatch())
			p.DryRun = r.IntN(8) == 0
			if r.IntN(3) == 0 {
				p.Groups[0] = append(p.Groups[0], []model.Match{randMatch(), randMatch()})
			}
			policies = append(policies, p)
		}
		f.guard(policies)
		for _, client := range []*testbed.Pod{f.client, f.outsider} {
			id := authz.Identity{}
			if r.IntN(5) != 0 {
				id = f.idents[r.IntN(len(f.idents))]
			}
			wid := uint32(clientWID)
			if client == f.outsider {
				wid = outsiderWID
			}
			f.setIdentity(wid, client, id.ID)
			for _, port := range ports {
				conn := model.Conn{Src: model.Peer{IP: client.IP4, Known: id.ID != 0, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount, TrustDomain: id.TrustDomain},
					DstIP: f.server.IP4, DstPort: port}
				want := allowed
				if !model.Evaluate(policies, conn).Allow {
					want = refused
					if client == f.client {
						want = forbidden
					}
				}
				if got, _ := attempt(t, client, netip.AddrPortFrom(f.server.IP4, port)); got != want {
					t.Fatalf("round %d: %s (identity %+v) to port %d: kernel %s, reference %s\npolicies: %+v", round, client.Name, id, port, got, want, policies)
				}
				checked++
			}
		}
	}
	t.Logf("%d connections decided as the reference evaluator decides", checked)
}

// Service traffic is authorized against the backend the kernel picked.
func TestKernelAuthzThroughService(t *testing.T) {
	f := newAuthzFixture(t)
	f.upsert(f.service(1, maps.Random, 0))
	f.guard([]*model.AuthzPolicy{pol(1, model.ActionDeny, model.Match{DestinationPorts: []uint16{serverPort}})})
	if got, _ := attempt(t, f.client, netip.AddrPortFrom(vip4, 80)); got != forbidden {
		t.Fatalf("enrolled client via the VIP: %s, want EACCES", got)
	}
	// IPv6 through the tc program: the outsider cannot use the VIP (not
	// enrolled), so it goes straight to the pod's IPv6 address. This is
	// the outsider's first IPv6 packet, and once in many runs it took a
	// SYN retransmit (1 s) to be reset; neighbour discovery between the
	// fresh namespaces is the likely cause (not proven). So the first
	// attempt is checked for its verdict only and the second for the
	// time.
	if got, _ := attempt(t, f.outsider, netip.AddrPortFrom(f.server.IP6, serverPort)); got != refused {
		t.Fatalf("outsider over IPv6: %s, want a reset", got)
	}
	if got, took := attempt(t, f.outsider, netip.AddrPortFrom(f.server.IP6, serverPort)); got != refused || took > 10*time.Millisecond {
		t.Fatalf("outsider over IPv6: %s in %s, want a reset within 10ms", got, took)
	}
	f.guard(nil)
	if got, _ := attempt(t, f.client, netip.AddrPortFrom(vip4, 80)); got != allowed {
		t.Fatalf("after removing the policy: %s", got)
	}
}
