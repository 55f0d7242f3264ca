package conf_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/conf"
	"github.com/kmesh-go/kmesh/daemon/configfile"
	"github.com/kmesh-go/kmesh/install/cniconf"
	"github.com/kmesh-go/kmesh/install/installer"
	pluginconf "github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// decodeDemo reads the demo file the strict way: unknown top-level keys and
// unknown protobuf fields are errors, so a misspelt field cannot hide.
func decodeDemo(t *testing.T) ([]*workloadapi.Address, []*security.Authorization) {
	t.Helper()
	js, err := yaml.YAMLToJSON(conf.DemoDaemonConfig)
	if err != nil {
		t.Fatalf("kmesh-demo.yaml is not YAML: %v", err)
	}
	var file struct {
		Addresses      []json.RawMessage `json:"addresses"`
		Authorizations []json.RawMessage `json:"authorizations"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("kmesh-demo.yaml top level: %v", err)
	}
	var addrs []*workloadapi.Address
	for i, raw := range file.Addresses {
		a := &workloadapi.Address{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Errorf("addresses[%d]: %v", i, err)
			continue
		}
		addrs = append(addrs, a)
	}
	var authz []*security.Authorization
	for i, raw := range file.Authorizations {
		a := &security.Authorization{}
		if err := protojson.Unmarshal(raw, a); err != nil {
			t.Errorf("authorizations[%d]: %v", i, err)
			continue
		}
		authz = append(authz, a)
	}
	return addrs, authz
}

func ip(t *testing.T, b []byte) string {
	t.Helper()
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		t.Errorf("%x is not an IP address", b)
	}
	return a.String()
}

func TestDemoDaemonConfig(t *testing.T) {
	addrs, authz := decodeDemo(t)
	var services []*workloadapi.Service
	var workloads []*workloadapi.Workload
	for _, a := range addrs {
		if s := a.GetService(); s != nil {
			services = append(services, s)
		}
		if w := a.GetWorkload(); w != nil {
			workloads = append(workloads, w)
		}
	}
	if len(services) != 1 || len(workloads) != 3 || len(authz) != 1 {
		t.Fatalf("%d services, %d workloads, %d policies; want 1, 3, 1", len(services), len(workloads), len(authz))
	}
	svc := services[0]
	if len(svc.GetAddresses()) != 1 || ip(t, svc.GetAddresses()[0].GetAddress()) != "10.96.0.10" {
		t.Errorf("service VIPs %v, want 10.96.0.10", svc.GetAddresses())
	}
	if p := svc.GetPorts(); len(p) != 1 || p[0].GetServicePort() != 80 || p[0].GetTargetPort() != 8080 {
		t.Errorf("service ports %v, want 80 -> 8080", p)
	}
	key := svc.GetNamespace() + "/" + svc.GetHostname()
	for i, w := range workloads {
		if got, want := ip(t, w.GetAddresses()[0]), netip.AddrFrom4([4]byte{10, 244, 0, byte(11 + i)}).String(); got != want || len(w.GetAddresses()) != 1 {
			t.Errorf("workload %s: addresses %v, want %s", w.GetName(), w.GetAddresses(), want)
		}
		if w.GetStatus() != workloadapi.WorkloadStatus_HEALTHY {
			t.Errorf("workload %s is %v", w.GetName(), w.GetStatus())
		}
		ports := w.GetServices()[key].GetPorts()
		if len(w.GetServices()) != 1 || len(ports) != 1 || ports[0].GetServicePort() != 80 || ports[0].GetTargetPort() != 8080 {
			t.Errorf("workload %s: services %v, want %s 80 -> 8080", w.GetName(), w.GetServices(), key)
		}
		if !strings.HasSuffix(w.GetUid(), "/"+w.GetNamespace()+"/"+w.GetName()) {
			t.Errorf("workload uid %q does not end in its namespace/name", w.GetUid())
		}
	}
	if a := authz[0]; a.GetAction() != security.Action_DENY || a.GetScope() != security.Scope_NAMESPACE {
		t.Errorf("policy %v", a)
	}
}

// The daemon itself accepts every entry.
func TestDemoDaemonConfigLoadsInTheDaemon(t *testing.T) {
	res, rejected, err := configfile.Parse(conf.DemoDaemonConfig)
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range rejected {
		t.Errorf("the daemon rejects %s: %v", name, err)
	}
	if len(res) != 5 {
		t.Errorf("the daemon reads %d resources, want 5", len(res))
	}
}

func TestExampleConflist(t *testing.T) {
	list, err := libcni.ConfListFromBytes(conf.ExampleConflist)
	if err != nil {
		t.Fatalf("libcni rejects the example: %v", err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if got := strings.Join(types, " "); got != "bridge portmap kmesh-cni" {
		t.Fatalf("chain %q, want bridge portmap kmesh-cni", got)
	}
	var ipam struct {
		IPAM struct{ Type string } `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &ipam); err != nil || ipam.IPAM.Type != "host-local" {
		t.Errorf("bridge IPAM %q (%v), want host-local", ipam.IPAM.Type, err)
	}

	// The entry has only fields the plugin reads.
	var entry struct {
		Type string `json:"type"`
		cniconf.Entry
	}
	dec := json.NewDecoder(bytes.NewReader(list.Plugins[2].Bytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&entry); err != nil {
		t.Errorf("kmesh-cni entry: %v", err)
	}

	// The plugin reads it as a runtime hands it over (libcni adds the list's
	// name and cniVersion).
	var fields map[string]any
	if err := json.Unmarshal(list.Plugins[2].Bytes, &fields); err != nil {
		t.Fatal(err)
	}
	fields["name"], fields["cniVersion"] = list.Name, list.CNIVersion
	stdin, _ := json.Marshal(fields)
	pc, err := pluginconf.Parse(stdin)
	if err != nil {
		t.Fatalf("kmesh-cni rejects the example entry: %v", err)
	}
	if pc.Kubeconfig != entry.Kubeconfig || pc.DaemonSocket != entry.DaemonSocket || pc.BPFDir != entry.BPFDir ||
		pc.FailurePolicy != entry.FailurePolicy || pc.LogLevel != entry.LogLevel {
		t.Errorf("kmesh-cni reads %+v", pc)
	}

	// It is exactly what kmesh-install writes with its defaults.
	cfg, err := installer.ParseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Entry.Kubeconfig = cfg.KubeconfigPath
	if entry.Entry != cfg.Entry {
		t.Errorf("example entry %+v, kmesh-install writes %+v", entry.Entry, cfg.Entry)
	}
	bare, _, err := cniconf.Remove(conf.ExampleConflist)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(cfg.Entry)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cniconf.Upsert(bare, want); err != nil || !bytes.Equal(got, conf.ExampleConflist) {
		t.Errorf("kmesh-install would write (err %v):\n%s", err, got)
	}
}
