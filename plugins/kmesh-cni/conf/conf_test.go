package conf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},{"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.244.0.5/24","interface":2}]}`

func TestParseFillsDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"k8s","type":"kmesh-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.DaemonSocket != DefaultDaemonSocket || c.BPFDir != DefaultBPFDir || c.StateDir != DefaultStateDir ||
		c.FailurePolicy != FailOpen || c.LogLevel != "info" || c.Kubeconfig != "" || c.DefaultEnroll || c.Closed() {
		t.Fatalf("defaults not filled: %+v", c)
	}
	if c.Prev != nil {
		t.Fatal("prevResult from nowhere")
	}
	if err := c.RequirePrevResult(); codeOf(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "chained plugin") {
		t.Fatalf("missing prevResult: %v", err)
	}
}

func TestParseReadsEveryField(t *testing.T) {
	in := `{"cniVersion":"0.3.1","name":"k8s","type":"kmesh-cni",
		"kubeconfig":"/etc/cni/net.d/kmesh-kubeconfig","daemonSocket":"/run/km/cni.sock",
		"bpfDir":"/sys/fs/bpf/km2","stateDir":"/run/km/state","failurePolicy":"closed",
		"defaultEnroll":true,"logFile":"/var/log/kmesh-cni.log","logLevel":"debug",
		"someOtherKey":{"kept":"ignored"},
		"prevResult":` + strings.Replace(prevResult, `"1.0.0"`, `"0.3.1"`, 1) + `}`
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	type own struct {
		Kubeconfig, DaemonSocket, BPFDir, StateDir, FailurePolicy string
		DefaultEnroll                                             bool
		LogFile, LogLevel                                         string
	}
	want := own{
		Kubeconfig: "/etc/cni/net.d/kmesh-kubeconfig", DaemonSocket: "/run/km/cni.sock", BPFDir: "/sys/fs/bpf/km2",
		StateDir: "/run/km/state", FailurePolicy: FailClosed, DefaultEnroll: true, LogFile: "/var/log/kmesh-cni.log", LogLevel: "debug",
	}
	got := own{c.Kubeconfig, c.DaemonSocket, c.BPFDir, c.StateDir, c.FailurePolicy, c.DefaultEnroll, c.LogFile, c.LogLevel}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if c.Prev == nil || len(c.Prev.Interfaces) != 3 || c.Prev.Interfaces[2] != (Interface{Name: "eth0", Mac: "aa:bb:cc:dd:ee:03", Sandbox: "/var/run/netns/p"}) ||
		len(c.Prev.IPs) != 1 || c.Prev.IPs[0] != netip.MustParsePrefix("10.244.0.5/24") {
		t.Fatalf("prevResult not read: %#v", c.Prev)
	}
	if err := c.RequirePrevResult(); err != nil {
		t.Fatal(err)
	}
}

func TestParseErrorsCarrySpecCodes(t *testing.T) {
	cases := []struct {
		name, in string
		code     uint
		says     string
	}{
		{"malformed JSON", `{"cniVersion":"1.0.0",`, types.ErrDecodingFailure, "decode network config"},
		{"not an object", `[1,2]`, types.ErrDecodingFailure, "decode network config"},
		{"trailing data", `{"cniVersion":"1.0.0","name":"n"} {}`, types.ErrDecodingFailure, "after top-level value"},
		{"null", `null`, types.ErrDecodingFailure, "want a JSON object"},
		{"wrong attachment", `{"cniVersion":"1.0.0","name":"n","cni.dev/valid-attachments":[{"ifname":5}]}`, types.ErrDecodingFailure, "cni.dev/valid-attachments.ifname must be a string"},
		{"wrong type", `{"cniVersion":"1.0.0","name":"n","defaultEnroll":"yes"}`, types.ErrDecodingFailure, "defaultEnroll must be a bool"},
		{"unknown version", `{"cniVersion":"9.9.9","name":"n"}`, types.ErrIncompatibleCNIVersion, `"9.9.9" is not supported`},
		{"version too old", `{"cniVersion":"0.2.0","name":"n"}`, types.ErrIncompatibleCNIVersion, "0.3.0, 0.3.1"},
		{"no version", `{"name":"n"}`, types.ErrIncompatibleCNIVersion, "set cniVersion"},
		{"no name", `{"cniVersion":"1.0.0"}`, types.ErrInvalidNetworkConfig, "no name"},
		{"bad policy", `{"cniVersion":"1.0.0","name":"n","failurePolicy":"maybe"}`, types.ErrInvalidNetworkConfig, `failurePolicy "maybe"`},
		{"bad level", `{"cniVersion":"1.0.0","name":"n","logLevel":"loud"}`, types.ErrInvalidNetworkConfig, "debug, info, warn, error"},
		{"relative socket", `{"cniVersion":"1.0.0","name":"n","daemonSocket":"cni.sock"}`, types.ErrInvalidNetworkConfig, "absolute path"},
		{"root state dir", `{"cniVersion":"1.0.0","name":"n","stateDir":"/"}`, types.ErrInvalidNetworkConfig, "not /"},
		{"relative kubeconfig", `{"cniVersion":"1.0.0","name":"n","kubeconfig":"kc"}`, types.ErrInvalidNetworkConfig, "kubeconfig"},
		{"miscased field", `{"cniVersion":"1.0.0","name":"n","failurepolicy":"closed"}`, types.ErrUnsupportedField, `did you mean "failurePolicy"`},
		{"bad prevResult", `{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"nonsense"}]}}`, types.ErrDecodingFailure, "prevResult"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if got := codeOf(t, err); got != tc.code {
				t.Fatalf("code %d, want %d: %v", got, tc.code, err)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("message %q does not say %q", err.Error(), tc.says)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	p, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b8f-11;Other=x")
	if err != nil {
		t.Fatal(err)
	}
	if p != (Pod{Name: "web-0", Namespace: "default", UID: "0b8f-11"}) || !p.IsSet() || p.String() != "default/web-0" {
		t.Fatalf("got %+v", p)
	}
	if p, err := ParseArgs(""); err != nil || p.IsSet() {
		t.Fatalf("empty: %+v %v", p, err)
	}
	for _, bad := range []string{
		"K8S_POD_NAME",
		"K8S_POD_NAME=../../secrets;K8S_POD_NAMESPACE=x",
		"K8S_POD_NAME=a;K8S_POD_NAMESPACE=Bad_NS",
		"K8S_POD_NAME=a;K8S_POD_NAMESPACE=ns;K8S_POD_UID=a/b",
	} {
		if _, err := ParseArgs(bad); codeOf(t, err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("%q: %v, want code 4", bad, err)
		}
	}
	// Half a pod is no pod: podman passes a container's name alone.
	for _, none := range []string{
		"IgnoreUnknown=1;K8S_POD_NAME=My_Web.app-1",
		"K8S_POD_NAME=a",
		"K8S_POD_NAMESPACE=ns;K8S_POD_UID=0b8f-11",
	} {
		if p, err := ParseArgs(none); err != nil || p != (Pod{}) {
			t.Errorf("%q: %+v %v, want no pod", none, p, err)
		}
	}
}

func codeOf(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T) is not a CNI error", err, err)
	}
	return e.Code
}
