// Package kube is kmesh-cni's narrow view of the Kubernetes API: read a pod
// and its namespace, annotate a pod.
//
// It speaks the REST API with a small HTTP/1.1 client of its own (httpc.go)
// and encoding/json and reads the kubeconfig itself, without client-go. The plugin is a process per pod:
// linking client-go, apimachinery and k8s.io/api costs about 1.5-2 ms of
// package initialisation (and a 30 MB binary) on every run, whether it
// talks to the API or not, against a 5 ms budget for the whole plugin.
// Three requests do not need a generic client; the kubeconfig fields a
// node agent's credentials use are supported (see Config), anything else
// is refused with a clear error.
package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/kubeconfig"
)

// Config is how to reach the API server, as read from a kubeconfig.
type Config = kubeconfig.Config

// LoadConfig reads a kubeconfig file (see kubeconfig.Load).
func LoadConfig(path string, timeout time.Duration) (*Config, error) {
	return kubeconfig.Load(path, timeout)
}

// Client reads pods and namespaces and annotates pods.
type Client struct {
	base  *url.URL
	token string
	http  *httpClient
}

// New builds a client from cfg (not modified). Proxy settings come from
// the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as client-go
// reads them.
func New(cfg *Config) (*Client, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.Server, "/"))
	if err != nil || base.Host == "" || (base.Scheme != "https" && base.Scheme != "http") {
		return nil, fmt.Errorf("API server %q is not an http(s) URL", cfg.Server)
	}
	h := &httpClient{base: base, dial: cfg.Dial, timeout: cfg.Timeout}
	if base.Scheme == "https" {
		h.tls = &tls.Config{ServerName: cfg.ServerName, InsecureSkipVerify: cfg.Insecure} //nolint:gosec // the kubeconfig asked for it
		if len(cfg.CAData) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.CAData) {
				return nil, errors.New("the kubeconfig's certificate authority holds no PEM certificate")
			}
			h.tls.RootCAs = pool
		}
		if len(cfg.CertData) > 0 || len(cfg.KeyData) > 0 {
			cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
			if err != nil {
				return nil, fmt.Errorf("the kubeconfig's client certificate: %w", err)
			}
			h.tls.Certificates = []tls.Certificate{cert}
		}
	}
	if h.dial == nil {
		h.dial = (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	if h.proxy, err = proxyFor(base, os.Getenv); err != nil {
		return nil, err
	}
	return &Client{base: base, token: cfg.Token, http: h}, nil
}

// Close drops the connections the client keeps for its next requests.
func (c *Client) Close() { c.http.close() }

// StatusError is an error answer of the API server.
type StatusError struct {
	Code    int    // HTTP status
	Reason  string // e.g. NotFound, Forbidden
	Message string
}

func (e *StatusError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	if e.Reason == "" {
		return fmt.Sprintf("the API server answered %d", e.Code)
	}
	return fmt.Sprintf("the API server answered %d %s", e.Code, e.Reason)
}

func isStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// IsNotFound tells whether err is the API server's 404.
func IsNotFound(err error) bool { return isStatus(err, 404) }

// IsForbidden tells whether err is the API server's 403.
func IsForbidden(err error) bool { return isStatus(err, 403) }

// IsUnauthorized tells whether err is the API server's 401.
func IsUnauthorized(err error) bool { return isStatus(err, 401) }

// statusReason names the statuses kmesh-cni tells apart, for an answer
// without a Status body. (A switch: a map here would be built at every
// run's start.)
func statusReason(code int) string {
	switch code {
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "NotFound"
	case 409:
		return "Conflict"
	case 422:
		return "Invalid"
	case 429:
		return "TooManyRequests"
	case 500:
		return "InternalError"
	case 503:
		return "ServiceUnavailable"
	case 504:
		return "Timeout"
	}
	return ""
}

// do sends one request and decodes a JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	header := []string{"Accept", "application/json", "User-Agent", "kmesh-cni"}
	if contentType != "" {
		header = append(header, "Content-Type", contentType)
	}
	if c.token != "" {
		header = append(header, "Authorization", "Bearer "+c.token)
	}
	status, b, err := c.http.do(ctx, method, c.base.EscapedPath()+path, header, body)
	if err != nil {
		return err
	}
	if status < 200 || status > 299 {
		se := &StatusError{Code: status, Reason: statusReason(status)}
		var st struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &st) == nil {
			if st.Reason != "" {
				se.Reason = st.Reason
			}
			se.Message = st.Message
		}
		return se
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode the API server's answer: %w", err)
	}
	return nil
}

// Pod is what kmesh-cni reads of a pod.
type Pod struct {
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		UID         string            `json:"uid"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork    bool `json:"hostNetwork"`
		InitContainers []struct {
			Name string `json:"name"`
		} `json:"initContainers"`
		Containers []struct {
			Name string `json:"name"`
		} `json:"containers"`
	} `json:"spec"`
}

// Enrollment is what the enrollment rules read of the pod.
func (p *Pod) Enrollment() enrollment.Pod {
	v := enrollment.Pod{HostNetwork: p.Spec.HostNetwork, Labels: p.Metadata.Labels, Annotations: p.Metadata.Annotations}
	for _, c := range p.Spec.InitContainers {
		v.Containers = append(v.Containers, c.Name)
	}
	for _, c := range p.Spec.Containers {
		v.Containers = append(v.Containers, c.Name)
	}
	return v
}

// Namespace is what kmesh-cni reads of a namespace.
type Namespace struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
}

// Pod reads a pod.
func (c *Client) Pod(ctx context.Context, namespace, name string) (*Pod, error) {
	pod := &Pod{}
	if err := c.do(ctx, "GET", "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name), "", nil, pod); err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}

// Namespace reads a namespace.
func (c *Client) Namespace(ctx context.Context, name string) (*Namespace, error) {
	ns := &Namespace{}
	if err := c.do(ctx, "GET", "/api/v1/namespaces/"+url.PathEscape(name), "", nil, ns); err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return ns, nil
}

// AnnotatePod sets one annotation on a pod with a merge patch, leaving the
// others alone.
func (c *Client) AnnotatePod(ctx context.Context, namespace, name, key, value string) error {
	if err := c.patchAnnotation(ctx, namespace, name, key, &value); err != nil {
		return fmt.Errorf("annotate pod %s/%s with %s=%s: %w", namespace, name, key, value, err)
	}
	return nil
}

// RemovePodAnnotation removes one annotation from a pod (absent is fine).
func (c *Client) RemovePodAnnotation(ctx context.Context, namespace, name, key string) error {
	if err := c.patchAnnotation(ctx, namespace, name, key, nil); err != nil {
		return fmt.Errorf("remove annotation %s from pod %s/%s: %w", key, namespace, name, err)
	}
	return nil
}

// patchAnnotation sets key to *value, or removes it when value is nil (a
// merge patch's null).
func (c *Client) patchAnnotation(ctx context.Context, namespace, name, key string, value *string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]*string{key: value}}})
	if err != nil {
		return err
	}
	return c.do(ctx, "PATCH", "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name),
		"application/merge-patch+json", patch, nil)
}

// Decision is whether a pod is enrolled and why, in words an operator
// reads in the daemon's pod list.
type Decision struct {
	Enroll bool
	Reason string
}

// ErrStalePod means CNI_ARGS names a pod whose UID differs from the one the
// API has: the pod was deleted and recreated under the same name.
var ErrStalePod = errors.New("pod UID differs from CNI_ARGS")

// Decide reads the pod and its namespace (in parallel) and applies the
// enrollment rules the daemon applies too (internal/enrollment). A UID that
// does not match is ErrStalePod.
func (c *Client) Decide(ctx context.Context, p conf.Pod) (Decision, error) {
	type nsResult struct {
		ns  *Namespace
		err error
	}
	nsc := make(chan nsResult, 1)
	go func() {
		ns, err := c.Namespace(ctx, p.Namespace)
		nsc <- nsResult{ns, err}
	}()
	pod, err := c.Pod(ctx, p.Namespace, p.Name)
	nsr := <-nsc
	if err != nil {
		return Decision{}, err
	}
	if p.UID != "" && pod.Metadata.UID != p.UID {
		return Decision{}, fmt.Errorf("%w: %s/%s has UID %s, CNI_ARGS says %s", ErrStalePod, p.Namespace, p.Name, pod.Metadata.UID, p.UID)
	}
	if nsr.err != nil && !IsForbidden(nsr.err) {
		return Decision{}, nsr.err
	}
	// Without "get namespaces" the pod's own label still decides, and the
	// reason says what is missing.
	var nsLabels map[string]string
	if nsr.ns != nil {
		nsLabels = nsr.ns.Metadata.Labels
	}
	var d Decision
	d.Enroll, d.Reason = enrollment.Decide(pod.Enrollment(), nsLabels)
	if nsr.err != nil && !d.Enroll {
		d.Reason += "; namespace labels unreadable (grant kmesh-cni get on namespaces): " + nsr.err.Error()
	}
	return d, nil
}
