// Package kubeconfig builds the kubeconfig the kmesh-cni plugin uses to read
// pods and namespaces: the install container's service-account token and CA,
// and the API server the pod was given in its environment.
package kubeconfig

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// ServerFromEnv returns the API server URL from KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT, which the kubelet sets in every container.
func ServerFromEnv() (string, error) {
	host := os.Getenv("KUBERNETES_SERVICE_HOST")
	port := os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (they are, in a pod)")
	}
	return (&url.URL{Scheme: "https", Host: net.JoinHostPort(host, port)}).String(), nil
}

// Build returns a kubeconfig for server that trusts the PEM bundle ca and
// authenticates with token.
func Build(server string, ca []byte, token string) ([]byte, error) {
	if server == "" {
		return nil, errors.New("no API server")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("the service-account token is empty")
	}
	if len(ca) == 0 {
		return nil, errors.New("the CA bundle is empty")
	}
	const name = "kmesh-cni"
	cfg := config{
		APIVersion: "v1",
		Kind:       "Config",
		Clusters: []namedCluster{{Name: "local", Cluster: cluster{
			Server:                   server,
			CertificateAuthorityData: ca, // base64 in the YAML, as kubectl expects
		}}},
		Users:          []namedUser{{Name: name, User: user{Token: token}}},
		Contexts:       []namedContext{{Name: name, Context: context{Cluster: "local", User: name}}},
		CurrentContext: name,
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to encode the kubeconfig: %w", err)
	}
	return out, nil
}

// The subset of the kubeconfig format (client-go's clientcmd/api/v1) that the
// plugin needs, so this package does not pull in client-go.
type config struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string  `json:"name"`
	Cluster cluster `json:"cluster"`
}

type cluster struct {
	Server                   string `json:"server"`
	CertificateAuthorityData []byte `json:"certificate-authority-data"`
}

type namedUser struct {
	Name string `json:"name"`
	User user   `json:"user"`
}

type user struct {
	Token string `json:"token"`
}

type namedContext struct {
	Name    string  `json:"name"`
	Context context `json:"context"`
}

type context struct {
	Cluster string `json:"cluster"`
	User    string `json:"user"`
}
