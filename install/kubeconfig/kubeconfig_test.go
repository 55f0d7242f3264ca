package kubeconfig

import (
	"bytes"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

// The plugin reads the file with client-go, so client-go is the judge.
func TestBuildIsReadByClientGo(t *testing.T) {
	out, err := Build("https://10.96.0.1:443", []byte(testCA), "tok-123\n")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(out)
	if err != nil {
		t.Fatalf("clientcmd cannot load it: %v\n%s", err, out)
	}
	rest, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		t.Fatalf("no client config: %v", err)
	}
	if rest.Host != "https://10.96.0.1:443" || rest.BearerToken != "tok-123" || !bytes.Equal(rest.CAData, []byte(testCA)) {
		t.Errorf("client-go reads host %q token %q ca %q", rest.Host, rest.BearerToken, rest.CAData)
	}
}

func TestServerFromEnv(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "6443")
	got, err := ServerFromEnv()
	if err != nil || got != "https://[fd00::1]:6443" {
		t.Errorf("ServerFromEnv = %q, %v", got, err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := ServerFromEnv(); err == nil {
		t.Error("ServerFromEnv without the env: no error")
	}
}

func TestBuildRejectsMissingParts(t *testing.T) {
	for _, tc := range []struct {
		server, ca, token, want string
	}{
		{"", testCA, "t", "no API server"},
		{"https://x", testCA, " \n", "token is empty"},
		{"https://x", "", "t", "CA bundle is empty"},
	} {
		if _, err := Build(tc.server, []byte(tc.ca), tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Build(%q, %q, %q): %v, want %q", tc.server, tc.ca, tc.token, err, tc.want)
		}
	}
}
