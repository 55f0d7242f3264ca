package kube

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/fakeapi"
)

func newFake(t *testing.T) (*fakeapi.API, *Client) {
	f := fakeapi.New()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := New(&rest.Config{Host: srv.URL, Timeout: time.Second})
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
	if _, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "gone"}); !apierrors.IsNotFound(err) {
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
	if err := c.AnnotatePod(context.Background(), "ns", "gone", "a", "b"); !apierrors.IsNotFound(errors.Unwrap(err)) {
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
	if cfg.Host != "https://127.0.0.1:6443" || cfg.BearerToken != "secret" || cfg.Timeout != 2*time.Second ||
		cfg.TLSClientConfig.CAFile != filepath.Join(dir, "ca.crt") {
		t.Fatalf("config %+v", cfg)
	}
}
