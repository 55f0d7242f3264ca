// Package fakeapi is an in-test Kubernetes API server for the few calls
// kmesh-cni makes: get a pod, get a namespace, merge-patch a pod's
// annotations. It answers the way the API server does (JSON objects,
// Status objects for errors), so the real client code runs against it.
package fakeapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// API holds pods and namespaces in memory. Use it as an http.Handler.
type API struct {
	mu   sync.Mutex
	pods map[string]*corev1.Pod
	nss  map[string]*corev1.Namespace
	// ForbidNamespaces answers 403 to namespace reads (missing RBAC).
	forbidNS bool
	delay    time.Duration
	patches  []string
	agent    string
	requests int
}

// New returns an empty API.
func New() *API {
	return &API{pods: map[string]*corev1.Pod{}, nss: map[string]*corev1.Namespace{}}
}

// AddPod stores a pod; labels and annotations may be nil.
func (a *API) AddPod(ns, name, uid string, labels, annotations map[string]string, mod ...func(*corev1.Pod)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID(uid), Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
	}
	for _, m := range mod {
		m(p)
	}
	a.pods[ns+"/"+name] = p
}

// AddNamespace stores a namespace.
func (a *API) AddNamespace(name string, labels map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nss[name] = &corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// Annotations returns a copy of a pod's annotations.
func (a *API) Annotations(ns, name string) map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	if p, ok := a.pods[ns+"/"+name]; ok {
		for k, v := range p.Annotations {
			out[k] = v
		}
	}
	return out
}

// Patches lists the patches received, as "<content type> <body>".
func (a *API) Patches() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.patches...)
}

// UserAgent is the User-Agent of the last request.
// Requests counts the requests served.
func (a *API) Requests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests
}

func (a *API) UserAgent() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.agent
}

// ForbidNamespaces makes namespace reads fail with 403.
func (a *API) ForbidNamespaces(forbid bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forbidNS = forbid
}

// SetDelay makes every answer wait this long.
func (a *API) SetDelay(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.delay = d
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	delay := a.delay
	a.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-r.Context().Done():
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests++
	a.agent = r.UserAgent()
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/"), "/")
	var obj any
	switch {
	case len(parts) == 2 && parts[0] == "namespaces" && r.Method == http.MethodGet:
		if a.forbidNS {
			writeStatus(w, apierrors.NewForbidden(corev1.Resource("namespaces"), parts[1], errors.New("no RBAC")))
			return
		}
		if ns, ok := a.nss[parts[1]]; ok {
			obj = ns
		}
	case len(parts) == 4 && parts[0] == "namespaces" && parts[2] == "pods":
		pod, ok := a.pods[parts[1]+"/"+parts[3]]
		if ok && r.Method == http.MethodPatch {
			body, _ := io.ReadAll(r.Body)
			a.patches = append(a.patches, r.Header.Get("Content-Type")+" "+string(body))
			// A JSON merge patch: null removes a key.
			var patch struct {
				Metadata struct {
					Annotations map[string]*string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(body, &patch); err != nil {
				writeStatus(w, apierrors.NewBadRequest(err.Error()))
				return
			}
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			for k, v := range patch.Metadata.Annotations {
				if v == nil {
					delete(pod.Annotations, k)
				} else {
					pod.Annotations[k] = *v
				}
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
