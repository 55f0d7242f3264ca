// Package kube is kmesh-cni's narrow view of the Kubernetes API: read a pod
// and its namespace, annotate a pod. Only kmesh-cni-kube links it: the
// plugin runs that helper when the daemon cannot decide, so the TLS stack,
// net/http and the YAML reader cost the plugin's other runs nothing.
//
// Three REST calls over net/http and encoding/json, and the kubeconfig read
// with sigs.k8s.io/yaml (config.go), rather than client-go: a helper
// linking client-go's clientset and clientcmd initialised its packages in
// ~5 ms against this one's ~0.7 ms (GODEBUG=inittrace=1, on the loaded
// 2-core test machine) and was 32 MB against 10 MB, for three requests
// made only when the daemon cannot decide. The kubeconfig fields a node
// agent's credentials use are supported (see Config); anything else is
// refused with a clear error.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// Client reads pods and namespaces and annotates pods.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// maxBody bounds an answer's body; an object kmesh-cni reads is far
// smaller.
const maxBody = 16 << 20

// New builds a client from cfg (not modified). Proxy settings come from
// the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as client-go
// reads them.
func New(cfg *Config) (*Client, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.Server, "/"))
	if err != nil || base.Host == "" || (base.Scheme != "https" && base.Scheme != "http") {
		return nil, fmt.Errorf("API server %q is not an http(s) URL", cfg.Server)
	}
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, DialContext: cfg.Dial, ForceAttemptHTTP2: true}
	if tr.DialContext == nil {
		tr.DialContext = (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	if base.Scheme == "https" {
		tr.TLSClientConfig = &tls.Config{ServerName: cfg.ServerName, InsecureSkipVerify: cfg.Insecure} //nolint:gosec // the kubeconfig asked for it
		if len(cfg.CAData) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cfg.CAData) {
				return nil, errors.New("the kubeconfig's certificate authority holds no PEM certificate")
			}
			tr.TLSClientConfig.RootCAs = pool
		}
		if len(cfg.CertData) > 0 || len(cfg.KeyData) > 0 {
			cert, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
			if err != nil {
				return nil, fmt.Errorf("the kubeconfig's client certificate: %w", err)
			}
			tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		}
	}
	return &Client{base: base, token: cfg.Token, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Close drops the connections the client keeps for its next requests.
func (c *Client) Close() { c.http.CloseIdleConnections() }

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

// do sends one request and decodes a JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "kmesh-cni")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("read the API server's answer: %w", err)
	}
	if len(b) > maxBody {
		return fmt.Errorf("the API server's answer is larger than %d bytes", maxBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &StatusError{Code: resp.StatusCode, Reason: http.StatusText(resp.StatusCode)}
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
