package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/sys/unix"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/daemon/xds"
	"github.com/kmesh-go/kmesh/daemon/xds/xdstest"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

func denyNamespace(name, from string, dryRun bool) (string, *security.Authorization) {
	return xdstest.Policy(&security.Authorization{
		Name: name, Namespace: "default", Scope: security.Scope_NAMESPACE, Action: security.Action_DENY, DryRun: dryRun,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{{
			Namespaces: []*security.StringMatch{{MatchType: &security.StringMatch_Exact{Exact: from}}},
		}}}}}},
	})
}

// Policies from istiod reach the kernel: a new DENY resets an open
// connection and refuses new ones at connect(); a dry-run DENY refuses
// nothing but is counted.
func TestKernelDaemonAuthorization(t *testing.T) {
	f := newMeshFixture(t, 1)
	srv := f.servers[0]
	// The client is a workload of namespace "frontend".
	n, w := xdstest.Workload("uid-client", "frontend", "client", []string{f.client.IP4.String(), f.client.IP6.String()}, nil,
		func(w *workloadapi.Workload) { w.ServiceAccount = "web" })
	if err := f.xds.Set(xds.TypeAddress, map[string]types.Resource{n: w}); err != nil {
		t.Fatal(err)
	}
	// The server pod is enrolled, with its tc program, as kmesh-cni does.
	f.d.enroll(srv, "server-sandbox")
	err := podns.Do(testbed.NSPath(f.net.Node), func() error {
		ifc, err := net.InterfaceByName(srv.HostVeth)
		if err != nil {
			return err
		}
		return loader.AttachPodTC(f.pins, loader.PodTCKey("server-sandbox", srv.HostVeth), ifc.Index)
	})
	if err != nil {
		t.Fatal(err)
	}

	// An open connection, allowed so far; and one over IPv6, which the
	// enforcer resets its own way (internal/sockdiag).
	conn, err := f.client.Dial("tcp", "10.96.0.10:80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	if _, err := rd.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	conn6, err := f.client.Dial("tcp", "[fd00:96::10]:80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn6.Close()
	rd6 := bufio.NewReader(conn6)
	if _, err := rd6.ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	// Dry run first: nothing changes, the would-deny is counted.
	pn, p := denyNamespace("deny-frontend", "frontend", true)
	if err := f.xds.Set(xds.TypeAuthorization, map[string]types.Resource{pn: p}); err != nil {
		t.Fatal(err)
	}
	f.waitFor("dry-run policy in the kernel", func() bool {
		_, b, _ := f.d.get("/debug/config_dump")
		return strings.Contains(string(b), "deny-frontend")
	})
	time.Sleep(200 * time.Millisecond)
	if _, err := f.ask("10.96.0.10:80"); err != nil {
		t.Fatalf("dry-run policy refused a connection: %v", err)
	}
	if _, err := fmt.Fprintf(conn, "still here\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := rd.ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("open connection after a dry-run policy: %q %v", line, err)
	}
	f.waitFor("dry-run counted", func() bool {
		_, b, _ := f.d.get("/metrics")
		return strings.Contains(string(b), `kmesh_authz_connections_total{outcome="dry_run_denied",policy="default/deny-frontend"}`)
	})

	// Enforced: the open connection is reset, new ones fail at connect().
	pn, p = denyNamespace("deny-frontend", "frontend", false)
	start := time.Now()
	if err := f.xds.Set(xds.TypeAuthorization, map[string]types.Resource{pn: p}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		conn net.Conn
		rd   *bufio.Reader
	}{{conn, rd}, {conn6, rd6}} {
		_ = c.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.rd.ReadString('\n'); !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("open connection to %s after the DENY: %v, want a reset", c.conn.RemoteAddr(), err)
		}
	}
	t.Logf("open connections reset %s after the policy was pushed", time.Since(start).Round(time.Millisecond))
	f.waitFor("new connections refused", func() bool {
		_, err := f.client.Dial("tcp", "10.96.0.10:80", time.Second)
		return errors.Is(err, unix.EACCES)
	})
	// The enforcer counts the closed connections after it swept every pod,
	// which can be just after the client saw its reset.
	for _, want := range []string{`kmesh_authz_connections_total{outcome="denied",policy="default/deny-frontend"}`, "kmesh_authz_connections_closed_total 2"} {
		f.waitFor("/metrics to show "+want, func() bool {
			_, b, _ := f.d.get("/metrics")
			return strings.Contains(string(b), want)
		})
	}

	// Gone again: allowed.
	if err := f.xds.Set(xds.TypeAuthorization, map[string]types.Resource{pn: nil}); err != nil {
		t.Fatal(err)
	}
	f.waitFor("allowed after the policy is removed", func() bool {
		_, err := f.ask("10.96.0.10:80")
		return err == nil
	})
}
