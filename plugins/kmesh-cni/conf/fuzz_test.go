package conf

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParse: whatever a runtime puts on stdin, Parse neither panics nor
// returns anything but a CNI error with a config-related spec code, and
// what it accepts is fully valid. Seeds: testdata/fuzz/FuzzParse.
//
//	go test ./plugins/kmesh-cni/conf -run '^$' -fuzz '^FuzzParse$' -fuzztime=20s
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s","type":"kmesh-cni","prevResult":` + prevResult + `}`))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"k8s","failurePolicy":"closed","defaultEnroll":true}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := Parse(in)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("not a CNI error: %T %v", err, err)
			}
			switch e.Code {
			case types.ErrIncompatibleCNIVersion, types.ErrUnsupportedField, types.ErrDecodingFailure, types.ErrInvalidNetworkConfig:
			default:
				t.Fatalf("unexpected code %d: %v", e.Code, err)
			}
			if e.Msg == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if !slices.Contains(SupportedVersions, c.CNIVersion) || c.Name == "" {
			t.Fatalf("accepted version %q name %q", c.CNIVersion, c.Name)
		}
		if c.FailurePolicy != FailOpen && c.FailurePolicy != FailClosed {
			t.Fatalf("accepted failurePolicy %q", c.FailurePolicy)
		}
		if !slices.Contains(Levels, c.LogLevel) {
			t.Fatalf("accepted logLevel %q", c.LogLevel)
		}
		for _, p := range []string{c.DaemonSocket, c.BPFDir, c.StateDir} {
			if !filepath.IsAbs(p) {
				t.Fatalf("accepted relative path %q", p)
			}
		}
		for _, p := range []string{c.Kubeconfig, c.LogFile} {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("accepted relative path %q", p)
			}
		}
		if c.Prev != nil {
			// Passed on as the chain gave it, or as the library converts
			// it (FuzzPrevResult compares the two ways).
			if err := c.PrintPrevResult(io.Discard); err != nil {
				t.Fatalf("accepted a prevResult it cannot pass on: %v", err)
			}
		}
	})
}

// FuzzParseArgs: CNI_ARGS never panics and never lets a name through that
// could leave its API path.
func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=6f1c-22")
	f.Add("K8S_POD_NAME=a/../b;K8S_POD_NAMESPACE=x")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("want code 4, got %v", err)
			}
			return
		}
		for _, v := range []string{p.Name, p.Namespace, p.UID} {
			for _, bad := range []string{"/", "?", "#", "%", " ", ".."} {
				if strings.Contains(v, bad) {
					t.Fatalf("accepted %q in %+v", bad, p)
				}
			}
		}
	})
}
