package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// istioCRDPath is where the Istio module keeps all its CRDs in one file.
const istioCRDPath = "manifests/charts/base/files/crd-all.gen.yaml"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// findIstioCRDs returns the CRD file of the Istio version that the tools
// module pins, so the CRDs match the istiod binary built from it. The go
// command fetches that module source into the module cache if it is not there.
func findIstioCRDs(ctx context.Context, toolsDir string) (string, error) {
	dir, err := moduleDir(ctx, toolsDir, "istio.io/istio")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, istioCRDPath)
	if _, err := os.Stat(path); err != nil {
		return "", err
	}
	return path, nil
}

// GatewayAPICRDs returns the Gateway API CRD manifests of one channel
// ("standard" or "experimental") of the sigs.k8s.io/gateway-api version
// the istiod build pins (tests/e2e/tools/go.mod), for Options.ExtraCRDFiles.
func GatewayAPICRDs(ctx context.Context, channel string) ([]string, error) {
	dir, err := moduleDir(ctx, filepath.Join(e2eDir(), "tools"), "sigs.k8s.io/gateway-api")
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(dir, "config", "crd", channel))
	if err != nil {
		return nil, fmt.Errorf("gateway-api channel %q: %w", channel, err)
	}
	var out []string
	for _, e := range entries {
		// Only the CRDs: the folder also holds a kustomization and
		// admission policies.
		if strings.HasPrefix(e.Name(), "gateway.networking.") && strings.HasSuffix(e.Name(), ".yaml") && !strings.Contains(e.Name(), "_vap_") {
			out = append(out, filepath.Join(dir, "config", "crd", channel, e.Name()))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no Gateway API CRDs under %s", filepath.Join(dir, "config", "crd", channel))
	}
	return out, nil
}

// moduleDir is where the module cache holds the version of module that
// the module at modDir pins.
func moduleDir(ctx context.Context, modDir, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate the %s module from %s (go mod download): %w: %s",
			module, modDir, err, strings.TrimSpace(stderr.String()))
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", fmt.Errorf("parse go mod download output: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return "", fmt.Errorf("go mod download %s in %s: %q", module, modDir, mod.Error)
	}
	return mod.Dir, nil
}

// applyCRDs applies every CRD in a multi-document YAML file server-side and
// returns their names.
func applyCRDs(ctx context.Context, dyn dynamic.Interface, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 64*1024)
	var names []string
	for {
		var obj map[string]interface{}
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if len(obj) == 0 {
			continue // an empty document between two "---"
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s: unexpected %s %q", path, u.GetKind(), u.GetName())
		}
		_, err := dyn.Resource(crdGVR).Apply(ctx, u.GetName(), u,
			metav1.ApplyOptions{FieldManager: "kmesh-e2e", Force: true})
		if err != nil {
			return nil, fmt.Errorf("apply CRD %s: %w", u.GetName(), err)
		}
		names = append(names, u.GetName())
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s holds no CRDs", path)
	}
	return names, nil
}

// waitCRDsEstablished waits until the apiserver serves every named CRD.
func waitCRDsEstablished(ctx context.Context, dyn dynamic.Interface, names []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pending := append([]string(nil), names...)
	for {
		var still []string
		var lastErr error
		for _, name := range pending {
			u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				lastErr = err
				still = append(still, name)
				continue
			}
			if !crdEstablished(u) {
				still = append(still, name)
			}
		}
		if len(still) == 0 {
			return nil
		}
		pending = still
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRDs not established after %s: %v (last error: %v)", timeout, pending, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func crdEstablished(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]interface{})
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
