package layout_test

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"

	kbpf "github.com/kmesh-go/kmesh/bpf"
	"github.com/kmesh-go/kmesh/bpf/layout"
)

// Every map's key and value in the compiled object must have the same size
// and the same field offsets as its Go mirror, or the daemon would write
// garbage the kernel misreads.
func TestLayoutsMatchBTF(t *testing.T) {
	spec, err := kbpf.Spec()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		mapName    string
		key, value any
	}{
		{"km_manage", uint64(0), layout.ManageValue{}},
		{"km_frontend", layout.FrontendKey{}, layout.FrontendValue{}},
		{"km_service", uint32(0), layout.ServiceValue{}},
		{"km_port", layout.PortKey{}, layout.PortValue{}},
		{"km_portovr", layout.PortOverrideKey{}, layout.PortOverrideValue{}},
		{"km_endpoint", layout.EndpointKey{}, layout.EndpointValue{}},
		{"km_backend", uint32(0), layout.BackendValue{}},
		{"km_affinity", layout.AffinityKey{}, layout.AffinityValue{}},
		{"km_sock", int32(0), layout.SockValue{}},
		{"km_tcp_sock", uint64(0), layout.SockValue{}},
		{"km_udp_rev", layout.UDPRevKey{}, layout.UDPRevValue{}},
		{"km_config", uint32(0), layout.ConfigValue{}},
		{"km_authz_ps", uint32(0), layout.AuthzPSValue{}},
		{"km_authz_ident", layout.AuthzIdentKey{}, layout.AuthzClass{}},
		{"km_authz_src", layout.AuthzCIDRKey{}, layout.AuthzClass{}},
		{"km_authz_dst", layout.AuthzCIDRKey{}, layout.AuthzClass{}},
		{"km_authz_port", layout.AuthzPortKey{}, layout.AuthzClass{}},
		{"km_authz_verdict", layout.AuthzVerdictKey{}, layout.AuthzVerdict{}},
		{"km_authz_stats", layout.AuthzStatKey{}, uint64(0)},
		{"km_sockhash", layout.Tuple{}, uint64(0)},
		{"km_wp_sock", uint64(0), uint64(0)},
		{"km_redir_in", layout.Tuple{}, uint64(0)},
	}
	for _, c := range cases {
		ms, ok := spec.Maps[c.mapName]
		if !ok {
			t.Errorf("map %s missing from the object", c.mapName)
			continue
		}
		compare(t, c.mapName+" key", ms.Key, reflect.TypeOf(c.key))
		compare(t, c.mapName+" value", ms.Value, reflect.TypeOf(c.value))
	}
	// The event record has no map of its own: find it in the object's BTF.
	var ev *btf.Struct
	if err := spec.Types.TypeByName("km_conn_event", &ev); err != nil {
		t.Fatalf("km_conn_event: %v", err)
	}
	compare(t, "km_conn_event", ev, reflect.TypeOf(layout.ConnEvent{}))
	if got := spec.Maps["km_stats"].MaxEntries; got != uint32(layout.StatMax) {
		t.Errorf("km_stats has %d entries, Go knows %d stats", got, layout.StatMax)
	}
}

func compare(t *testing.T, what string, bt btf.Type, gt reflect.Type) {
	t.Helper()
	size, err := btf.Sizeof(bt)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if uintptr(size) != gt.Size() {
		t.Errorf("%s: C is %d bytes, Go %s is %d", what, size, gt, gt.Size())
		return
	}
	st, ok := btf.UnderlyingType(bt).(*btf.Struct)
	if !ok || gt.Kind() != reflect.Struct {
		return
	}
	if len(st.Members) != gt.NumField() {
		t.Errorf("%s: C has %d fields, Go %s has %d", what, len(st.Members), gt, gt.NumField())
		return
	}
	for i, m := range st.Members {
		f := gt.Field(i)
		msize, _ := btf.Sizeof(m.Type)
		if uintptr(m.Offset.Bytes()) != f.Offset || uintptr(msize) != f.Type.Size() {
			t.Errorf("%s: field %s at %d size %d, Go %s at %d size %d",
				what, m.Name, m.Offset.Bytes(), msize, f.Name, f.Offset, f.Type.Size())
		}
	}
}

func TestVersionMatchesC(t *testing.T) {
	spec, err := kbpf.Spec()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := spec.Variables["km_layout_version"]
	if !ok {
		t.Fatal("km_layout_version missing from the object")
	}
	var got uint32
	if err := v.Get(&got); err != nil {
		t.Fatal(err)
	}
	if got != layout.Version {
		t.Fatalf("object built for layout %d, Go mirrors layout %d", got, layout.Version)
	}
}
