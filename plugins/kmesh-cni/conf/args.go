package conf

import (
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Pod identifies the Kubernetes pod behind a sandbox, from CNI_ARGS. Every
// field is empty under a runtime that is not Kubernetes.
type Pod struct {
	Name      string
	Namespace string
	UID       string
}

// IsSet tells whether CNI_ARGS named a pod.
func (p Pod) IsSet() bool { return p.Name != "" && p.Namespace != "" }

// String is namespace/name, for logs and messages.
func (p Pod) String() string {
	if !p.IsSet() {
		return "(no Kubernetes pod)"
	}
	return p.Namespace + "/" + p.Name
}

// ParseArgs reads the K8S_POD_* keys of CNI_ARGS ("K=V;K=V"). Other keys
// are ignored whatever IgnoreUnknown says: kmesh-cni sits in chains whose
// runtimes pass keys for other plugins. A pod's names that Kubernetes
// would not accept are refused, since they end up in API paths.
func ParseArgs(s string) (Pod, error) {
	var p Pod
	if s == "" {
		return p, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return Pod{}, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", clip([]byte(pair))), "")
		}
		switch k {
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	// A pod is named by both keys (kubelet's runtimes always pass both).
	// One without the other names no Kubernetes pod: podman's CNI backend
	// passes the container's name as K8S_POD_NAME alone (for the dnsname
	// plugin), and a container name may hold capitals and underscores.
	// Refusing it failed every such container's ADD; it is a sandbox that
	// is not a Kubernetes pod, which defaultEnroll decides.
	if p.Name == "" || p.Namespace == "" {
		return Pod{}, nil
	}
	if !isDNSSubdomain(p.Name) {
		return Pod{}, argError("K8S_POD_NAME", p.Name)
	}
	if !isDNSLabel(p.Namespace) {
		return Pod{}, argError("K8S_POD_NAMESPACE", p.Namespace)
	}
	if p.UID != "" && !isUID(p.UID) {
		return Pod{}, argError("K8S_POD_UID", p.UID)
	}
	return p, nil
}

func argError(key, value string) error {
	return types.NewError(types.ErrInvalidEnvironmentVariables,
		fmt.Sprintf("CNI_ARGS: %s=%q is not a valid Kubernetes value", key, clip([]byte(value))), "")
}

// isDNSSubdomain is Kubernetes' rule for object names (RFC 1123 subdomain).
func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

// isDNSLabel is Kubernetes' rule for namespace names (RFC 1123 label).
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

func isUID(s string) bool {
	if len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
