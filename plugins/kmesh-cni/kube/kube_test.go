package kube

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakeapi"
)

func newFake(t *testing.T) (*fakeapi.API, *Client) {
	f := fakeapi.New()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := New(&Config{Server: srv.URL, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

var kmeshLabel = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}

func TestDecideReadsPodAndNamespace(t *testing.T) {
	f, c := newFake(t)
	f.AddNamespace("mesh", kmeshLabel)
	f.AddNamespace("plain", nil)
	f.AddPod("mesh", "a", "u1", nil, nil)
	f.AddPod("plain", "b", "u2", kmeshLabel, nil)
	f.AddPod("plain", "c", "u3", nil, nil)
	ctx := context.Background()

	for _, tc := range []struct {
		pod    conf.Pod
		enroll bool
	}{
		{conf.Pod{Namespace: "mesh", Name: "a", UID: "u1"}, true},
		{conf.Pod{Namespace: "plain", Name: "b"}, true},
		{conf.Pod{Namespace: "plain", Name: "c", UID: "u3"}, false},
	} {
		d, err := c.Decide(ctx, tc.pod)
		if err != nil || d.Enroll != tc.enroll {
			t.Errorf("%s: %+v %v, want enroll=%v", tc.pod, d, err, tc.enroll)
		}
	}
	if !strings.HasPrefix(f.UserAgent(), "kmesh-cni") {
		t.Errorf("user agent %q", f.UserAgent())
	}

	if _, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "a", UID: "other"}); !errors.Is(err, ErrStalePod) {
		t.Errorf("stale UID: %v", err)
	}
	if _, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "gone"}); !IsNotFound(err) {
		t.Errorf("missing pod: %v", err)
	}

	// Without the right to read namespaces the pod's label still decides,
	// and the reason says what is missing.
	f.ForbidNamespaces(true)
	if d, err := c.Decide(ctx, conf.Pod{Namespace: "plain", Name: "b"}); err != nil || !d.Enroll {
		t.Errorf("forbidden namespace, labelled pod: %+v %v", d, err)
	}
	if d, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "a"}); err != nil || d.Enroll || !strings.Contains(d.Reason, "grant") {
		t.Errorf("forbidden namespace, unlabelled pod: %+v %v", d, err)
	}
}

func TestAnnotatePodMergesOneAnnotation(t *testing.T) {
	f, c := newFake(t)
	f.AddPod("ns", "p", "u", nil, map[string]string{"keep": "me"})
	if err := c.AnnotatePod(context.Background(), "ns", "p", enrollment.AnnotationRedirection, "enabled"); err != nil {
		t.Fatal(err)
	}
	got := f.Annotations("ns", "p")
	if got["keep"] != "me" || got[enrollment.AnnotationRedirection] != "enabled" {
		t.Fatalf("annotations %v", got)
	}
	if len(f.Patches()) != 1 || !strings.HasPrefix(f.Patches()[0], "application/merge-patch+json ") {
		t.Fatalf("patches %q", f.Patches())
	}
	if err := c.AnnotatePod(context.Background(), "ns", "gone", "a", "b"); !IsNotFound(err) {
		t.Fatalf("missing pod: %v", err)
	}
}

func TestDecideIsBoundedByTheContext(t *testing.T) {
	f, c := newFake(t)
	f.SetDelay(300 * time.Millisecond)
	f.AddPod("ns", "p", "u", nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Decide(ctx, conf.Pod{Namespace: "ns", Name: "p"}); err == nil {
		t.Fatal("a slow API answered within 50ms?")
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("Decide waited %v past its deadline", d)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfig(filepath.Join(dir, "missing"), time.Second); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing kubeconfig: %v", err)
	}
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("{{{not yaml"), 0o600)
	if _, err := LoadConfig(garbage, time.Second); err == nil {
		t.Fatal("garbage kubeconfig accepted")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("apiVersion: v1\nkind: Config\n"), 0o600)
	if _, err := LoadConfig(empty, time.Second); err == nil {
		t.Fatal("kubeconfig without a cluster accepted")
	}
	good := filepath.Join(dir, "kubeconfig")
	os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("x"), 0o600)
	os.WriteFile(good, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", certificate-authority: ca.crt}}]
users: [{name: u, user: {token: secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600)
	cfg, err := LoadConfig(good, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "https://127.0.0.1:6443" || cfg.Token != "secret" || cfg.Timeout != 2*time.Second || string(cfg.CAData) != "x" {
		t.Fatalf("config %+v", cfg)
	}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "PEM") {
		t.Fatalf("a CA that is not PEM: %v", err)
	}

	// What a node agent's kubeconfig may hold, and what kmesh-cni refuses.
	os.WriteFile(filepath.Join(dir, "token"), []byte("from-file\n"), 0o600)
	for _, tc := range []struct {
		name, user string
		check      func(*Config) bool
		refuse     string
	}{
		{"token file", "{tokenFile: token}", func(c *Config) bool { return c.Token == "from-file" }, ""},
		{"client certificate data", "{client-certificate-data: Y2VydA==, client-key-data: a2V5}",
			func(c *Config) bool { return string(c.CertData) == "cert" && string(c.KeyData) == "key" }, ""},
		{"exec plugin", "{exec: {command: aws}}", nil, "exec credential plugins are not supported"},
		{"auth provider", "{auth-provider: {name: gcp}}", nil, "auth-provider is not supported"},
		{"basic auth", "{username: a, password: b}", nil, "basic authentication is not supported"},
	} {
		path := filepath.Join(dir, "kc-"+strings.ReplaceAll(tc.name, " ", "-"))
		os.WriteFile(path, []byte(`{"clusters":[{"name":"c","cluster":{"server":"https://k:6443","insecure-skip-tls-verify":true}}],
"users":[{"name":"u","user":`+yamlFlowToJSON(tc.user)+`}],"contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}]}`), 0o600)
		cfg, err := LoadConfig(path, time.Second)
		switch {
		case tc.refuse != "" && (err == nil || !strings.Contains(err.Error(), tc.refuse)):
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.refuse)
		case tc.refuse == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.refuse == "" && (!tc.check(cfg) || !cfg.Insecure):
			t.Errorf("%s: config %+v", tc.name, cfg)
		}
	}
}

// yamlFlowToJSON quotes a one-level YAML flow map's keys and values.
func yamlFlowToJSON(s string) string {
	b, err := yaml.YAMLToJSON([]byte(s))
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The client verifies the server with the kubeconfig's CA and sends the
// token, over HTTPS as against a real API server.
func TestClientOverTLS(t *testing.T) {
	f := fakeapi.New()
	f.AddNamespace("ns", nil)
	f.AddPod("ns", "p", "u", map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}, nil)
	var auth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		f.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := New(&Config{Server: srv.URL, CAData: ca, Token: "tok", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Decide(context.Background(), conf.Pod{Namespace: "ns", Name: "p", UID: "u"})
	if err != nil || !d.Enroll {
		t.Fatalf("decision %+v %v", d, err)
	}
	if auth != "Bearer tok" {
		t.Fatalf("Authorization %q", auth)
	}
	// Without the CA the server is not trusted.
	c, _ = New(&Config{Server: srv.URL, Timeout: 2 * time.Second})
	if _, err := c.Pod(context.Background(), "ns", "p"); err == nil {
		t.Fatal("a server signed by an unknown CA was trusted")
	}
}
