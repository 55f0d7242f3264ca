package kube

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// fakeAPI serves pods and namespaces from memory the way the API server
// does (JSON, Status objects for errors), and applies merge patches of
// annotations.
type fakeAPI struct {
	mu        sync.Mutex
	pods      map[string]*corev1.Pod
	nss       map[string]*corev1.Namespace
	forbidNS  bool
	delay     time.Duration
	patches   []string
	userAgent string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.userAgent = r.UserAgent()
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/"), "/")
	var obj any
	switch {
	case len(parts) == 2 && parts[0] == "namespaces" && r.Method == http.MethodGet:
		if f.forbidNS {
			writeStatus(w, apierrors.NewForbidden(corev1.Resource("namespaces"), parts[1], errors.New("no RBAC")))
			return
		}
		if ns, ok := f.nss[parts[1]]; ok {
			obj = ns
		}
	case len(parts) == 4 && parts[0] == "namespaces" && parts[2] == "pods":
		pod, ok := f.pods[parts[1]+"/"+parts[3]]
		if ok && r.Method == http.MethodPatch {
			body, _ := io.ReadAll(r.Body)
			f.patches = append(f.patches, r.Header.Get("Content-Type")+" "+string(body))
			var patch struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(body, &patch); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			for k, v := range patch.Metadata.Annotations {
				pod.Annotations[k] = v
			}
		}
		if ok {
			obj = pod
		}
	}
	if obj == nil {
		writeStatus(w, apierrors.NewNotFound(corev1.Resource("pods"), r.URL.Path))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(obj)
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.Kind, st.APIVersion = "Status", "v1"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(st)
}

func newFake(t *testing.T) (*fakeAPI, *Client) {
	f := &fakeAPI{pods: map[string]*corev1.Pod{}, nss: map[string]*corev1.Namespace{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := New(&rest.Config{Host: srv.URL, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func (f *fakeAPI) addPod(ns, name, uid string, labels map[string]string) {
	f.pods[ns+"/"+name] = &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid), Labels: labels},
	}
}

func (f *fakeAPI) addNS(name string, labels map[string]string) {
	f.nss[name] = &corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

var kmeshLabel = map[string]string{enrollment.LabelDataplaneMode: enrollment.ModeKmesh}

func TestDecideReadsPodAndNamespace(t *testing.T) {
	f, c := newFake(t)
	f.addNS("mesh", kmeshLabel)
	f.addNS("plain", nil)
	f.addPod("mesh", "a", "u1", nil)
	f.addPod("plain", "b", "u2", kmeshLabel)
	f.addPod("plain", "c", "u3", nil)
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
	if !strings.HasPrefix(f.userAgent, "kmesh-cni") {
		t.Errorf("user agent %q", f.userAgent)
	}

	if _, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "a", UID: "other"}); !errors.Is(err, ErrStalePod) {
		t.Errorf("stale UID: %v", err)
	}
	if _, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "gone"}); !apierrors.IsNotFound(err) {
		t.Errorf("missing pod: %v", err)
	}

	// Without the right to read namespaces the pod's label still decides,
	// and the reason says what is missing.
	f.forbidNS = true
	if d, err := c.Decide(ctx, conf.Pod{Namespace: "plain", Name: "b"}); err != nil || !d.Enroll {
		t.Errorf("forbidden namespace, labelled pod: %+v %v", d, err)
	}
	if d, err := c.Decide(ctx, conf.Pod{Namespace: "mesh", Name: "a"}); err != nil || d.Enroll || !strings.Contains(d.Reason, "grant") {
		t.Errorf("forbidden namespace, unlabelled pod: %+v %v", d, err)
	}
}

func TestAnnotatePodMergesOneAnnotation(t *testing.T) {
	f, c := newFake(t)
	f.addPod("ns", "p", "u", nil)
	f.pods["ns/p"].Annotations = map[string]string{"keep": "me"}
	if err := c.AnnotatePod(context.Background(), "ns", "p", enrollment.AnnotationRedirection, "enabled"); err != nil {
		t.Fatal(err)
	}
	got := f.pods["ns/p"].Annotations
	if got["keep"] != "me" || got[enrollment.AnnotationRedirection] != "enabled" {
		t.Fatalf("annotations %v", got)
	}
	if len(f.patches) != 1 || !strings.HasPrefix(f.patches[0], "application/merge-patch+json ") {
		t.Fatalf("patches %q", f.patches)
	}
	if err := c.AnnotatePod(context.Background(), "ns", "gone", "a", "b"); !apierrors.IsNotFound(errors.Unwrap(err)) {
		t.Fatalf("missing pod: %v", err)
	}
}

func TestDecideIsBoundedByTheContext(t *testing.T) {
	f, c := newFake(t)
	f.delay = 300 * time.Millisecond
	f.addPod("ns", "p", "u", nil)
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
