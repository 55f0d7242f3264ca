package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config is how to reach the API server, as read from a kubeconfig.
type Config struct {
	// Server is the API server's URL, e.g. https://10.96.0.1:443.
	Server string
	// CAData (PEM) verifies the server; empty uses the system roots.
	CAData     []byte
	ServerName string
	Insecure   bool
	// CertData and KeyData (PEM) authenticate with a client certificate.
	CertData, KeyData []byte
	// Token is a bearer token.
	Token string
	// Timeout bounds every request.
	Timeout time.Duration
	// Dial replaces the TCP dialer (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// kubeconfig is the part of a kubeconfig file LoadConfig reads. Field
// names are the file's.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData []byte `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
			TLSServerName            string `json:"tls-server-name"`
			ProxyURL                 string `json:"proxy-url"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string          `json:"token"`
			TokenFile             string          `json:"tokenFile"`
			ClientCertificate     string          `json:"client-certificate"`
			ClientCertificateData []byte          `json:"client-certificate-data"`
			ClientKey             string          `json:"client-key"`
			ClientKeyData         []byte          `json:"client-key-data"`
			Username              string          `json:"username"`
			Exec                  json.RawMessage `json:"exec"`
			AuthProvider          json.RawMessage `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// LoadConfig reads a kubeconfig file, YAML or JSON (relative paths in
// it resolve against its folder), into a Config whose every request ends
// within timeout. It supports what node agents' kubeconfigs use: a server
// with a CA (file or data) or insecure-skip-tls-verify and
// tls-server-name; a token, token file or client certificate. exec and
// auth-provider credentials, basic auth and proxy-url are refused.
func LoadConfig(path string, timeout time.Duration) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("parse kubeconfig %s: %w", path, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("kubeconfig %s: %s", path, fmt.Sprintf(format, a...))
	}
	// The current context, or the only one there is.
	ctxName := kc.CurrentContext
	if ctxName == "" && len(kc.Contexts) == 1 {
		ctxName = kc.Contexts[0].Name
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return nil, bad("no context %q (set current-context)", ctxName)
	}
	cfg := &Config{Timeout: timeout}
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	readFile := func(what, p string) ([]byte, error) {
		b, err := os.ReadFile(resolve(p))
		if err != nil {
			return nil, bad("%s: %v", what, err)
		}
		return b, nil
	}
	found = false
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		found = true
		cl := c.Cluster
		if cl.Server == "" {
			return nil, bad("cluster %q has no server", clusterName)
		}
		if cl.ProxyURL != "" {
			return nil, bad("cluster %q: proxy-url is not supported by kmesh-cni", clusterName)
		}
		cfg.Server, cfg.Insecure, cfg.ServerName = cl.Server, cl.InsecureSkipTLSVerify, cl.TLSServerName
		cfg.CAData = cl.CertificateAuthorityData
		if cl.CertificateAuthority != "" {
			if cfg.CAData, err = readFile("certificate-authority", cl.CertificateAuthority); err != nil {
				return nil, err
			}
		}
	}
	if !found {
		return nil, bad("context %q names cluster %q, which is not there", ctxName, clusterName)
	}
	found = userName == ""
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		found = true
		us := u.User
		switch {
		case len(us.Exec) > 0 && string(us.Exec) != "null":
			return nil, bad("user %q: exec credential plugins are not supported by kmesh-cni; use a token or a client certificate", userName)
		case len(us.AuthProvider) > 0 && string(us.AuthProvider) != "null":
			return nil, bad("user %q: auth-provider is not supported by kmesh-cni; use a token or a client certificate", userName)
		case us.Username != "":
			return nil, bad("user %q: basic authentication is not supported by kmesh-cni; use a token or a client certificate", userName)
		}
		cfg.Token = us.Token
		if cfg.Token == "" && us.TokenFile != "" {
			t, err := readFile("tokenFile", us.TokenFile)
			if err != nil {
				return nil, err
			}
			cfg.Token = strings.TrimSpace(string(t))
		}
		cfg.CertData, cfg.KeyData = us.ClientCertificateData, us.ClientKeyData
		if us.ClientCertificate != "" {
			if cfg.CertData, err = readFile("client-certificate", us.ClientCertificate); err != nil {
				return nil, err
			}
		}
		if us.ClientKey != "" {
			if cfg.KeyData, err = readFile("client-key", us.ClientKey); err != nil {
				return nil, err
			}
		}
	}
	if !found {
		return nil, bad("context %q names user %q, who is not there", ctxName, userName)
	}
	return cfg, nil
}
