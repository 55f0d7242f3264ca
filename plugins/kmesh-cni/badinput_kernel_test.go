package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/internal/testbed"
)

// runPlugin executes kmesh-cni once, as a runtime would, inside the node
// namespace, and returns its exit error, stdout and stderr.
func (e *env) runPlugin(command, netns, stdin string) (error, []byte, []byte) {
	e.t.Helper()
	paths := pluginPaths(e.t)
	var stdout, stderr bytes.Buffer
	var runErr error
	err := e.inNode(func() error {
		cmd := exec.Command(filepath.Join(paths[1], "kmesh-cni"))
		cmd.Env = []string{
			"CNI_COMMAND=" + command, "CNI_CONTAINERID=bad-input", "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
			"CNI_PATH=" + strings.Join(paths, ":"), "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad",
		}
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr = cmd.Run()
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return runErr, stdout.Bytes(), stderr.Bytes()
}

// Bad input: the spec's error code and a message that says what to fix,
// a non-zero exit, and nothing left behind.
func TestKernelBadInput(t *testing.T) {
	e := newEnv(t)
	podNS := testbed.NSPath(testbed.NewNamespace(t))
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"` + podNS + `"}],"ips":[{"address":"10.244.0.9/24","interface":0}]}`
	good := func(extra string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"kmtest","type":"kmesh-cni","bpfDir":%q,"stateDir":%q,"daemonSocket":%q,"defaultEnroll":true%s,"prevResult":%s}`,
			e.pins, e.state, e.daemon.Socket, extra, prev)
	}
	unreadable := filepath.Join(e.dir, "kubeconfig-garbage")
	if err := os.WriteFile(unreadable, []byte("{{{ not a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, netns, stdin string
		code               uint
		says               []string
	}{
		{"malformed JSON", podNS, `{"cniVersion":"1.0.0","name":`, types.ErrDecodingFailure, []string{"decode network config", "invalid JSON at byte 29"}},
		{"missing prevResult", podNS, strings.Replace(good(""), `,"prevResult":`+prev, "", 1), types.ErrInvalidNetworkConfig,
			[]string{"chained plugin", "no prevResult", "after the primary network plugin"}},
		{"unknown cniVersion", podNS, strings.Replace(good(""), `"cniVersion":"1.0.0","name"`, `"cniVersion":"7.0.0","name"`, 1), types.ErrIncompatibleCNIVersion,
			[]string{`cniVersion "7.0.0" is not supported`, "set cniVersion to one of", "1.1.0"}},
		{"the plugin's own netns", "/proc/self/ns/net", good(""), types.ErrInvalidNetNS,
			[]string{"netns from CNI_NETNS should not be the same"}},
		{"bad network name", podNS, strings.Replace(good(""), `"name":"`, `"name":"bad name `, 1), types.ErrInvalidNetworkConfig,
			[]string{"invalid characters found in network name"}},
		{"netns that does not exist", "/var/run/netns/kmesh-cni-no-such-netns", good(""), types.ErrInvalidEnvironmentVariables,
			[]string{"CNI_NETNS", "no such file"}},
		{"missing kubeconfig", podNS, good(`,"kubeconfig":"/nonexistent/kmesh-kubeconfig"`), types.ErrInvalidNetworkConfig,
			[]string{"read kubeconfig", "/nonexistent/kmesh-kubeconfig", "no such file", "kubeconfig field"}},
		{"unparsable kubeconfig", podNS, good(fmt.Sprintf(`,"kubeconfig":%q`, unreadable)), types.ErrInvalidNetworkConfig,
			[]string{"kubeconfig", unreadable}},
		{"bad failurePolicy", podNS, good(`,"failurePolicy":"sometimes"`), types.ErrInvalidNetworkConfig,
			[]string{`failurePolicy "sometimes"`, `"open"`, `"closed"`}},
		{"miscased field", podNS, good(`,"FailurePolicy":"closed"`), types.ErrUnsupportedField,
			[]string{`"FailurePolicy"`, `did you mean "failurePolicy"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runErr, stdout, stderr := e.runPlugin("ADD", tc.netns, tc.stdin)
			var exit *exec.ExitError
			if !errors.As(runErr, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("exit: %v (stdout %s)", runErr, stdout)
			}
			var ce types.Error
			if err := json.Unmarshal(stdout, &ce); err != nil {
				t.Fatalf("stdout is not CNI error JSON: %q (stderr %q)", stdout, stderr)
			}
			t.Logf("exit %d: %s", exit.ExitCode(), bytes.TrimSpace(stdout))
			if ce.Code != tc.code {
				t.Fatalf("code %d, want %d: %s", ce.Code, tc.code, stdout)
			}
			mustContain(t, "error", ce.Error(), tc.says...)
			e.requireClean()
			if e.daemon.Pod("bad-input") != nil {
				t.Fatal("the daemon was told of a pod whose ADD failed")
			}
		})
	}

	// Run alone through libcni, the way an operator would misconfigure it.
	t.Run("standalone in a conflist", func(t *testing.T) {
		list := e.conflist(netOpts{})
		list.Plugins = list.Plugins[2:]
		p := e.newPod("alone")
		err := e.inNode(func() error { _, err := e.cni.AddNetworkList(t.Context(), list, p.rt); return err })
		if ce := cniError(t, err); ce.Code != types.ErrInvalidNetworkConfig {
			t.Fatalf("code %d: %v", ce.Code, err)
		}
		mustContain(t, "error", err.Error(), "no prevResult")
		e.requireClean()
	})

	// DEL of something never added, without prevResult or netns: success.
	t.Run("DEL of nothing", func(t *testing.T) {
		stdin := strings.Replace(good(""), `,"prevResult":`+prev, "", 1)
		if runErr, stdout, stderr := e.runPlugin("DEL", "", stdin); runErr != nil {
			t.Fatalf("DEL: %v %s %s", runErr, stdout, stderr)
		}
		if runErr, stdout, stderr := e.runPlugin("DEL", "/var/run/netns/kmesh-cni-no-such-netns", stdin); runErr != nil {
			t.Fatalf("DEL with a missing netns: %v %s %s", runErr, stdout, stderr)
		}
		e.requireClean()
	})

	t.Run("VERSION", func(t *testing.T) {
		runErr, stdout, _ := e.runPlugin("VERSION", "", `{"cniVersion":"1.1.0"}`)
		if runErr != nil {
			t.Fatal(runErr)
		}
		var v struct {
			SupportedVersions []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(stdout, &v); err != nil || strings.Join(v.SupportedVersions, ",") != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
			t.Fatalf("VERSION: %s %v", stdout, err)
		}
	})
}
