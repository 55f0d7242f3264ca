package kubenode

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/images"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

// referencePlugins are the CNI reference plugins the node's network uses
// (containerd runs loopback itself).
var referencePlugins = []string{"plugins/main/bridge", "plugins/ipam/host-local", "plugins/main/loopback"}

// Prepare builds what a node runs from this working tree: the images
// (kmesh-daemon, kmesh-install, kmesh-waypoint, fortio, pause) into
// Root/bin/images, and the CNI reference plugins (cached under
// Root/bin/cni-plugins, shared with nodebox); it finds the Gateway API's
// CRDs in the module cache. It returns a Config with Images,
// CNIPluginsDir and ExtraCRDFiles set.
func Prepare(ctx context.Context, logf func(string, ...any)) (Config, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	root := images.RepoRoot()
	out := filepath.Join(root, "bin", "images")
	bins, err := images.BuildBinaries(ctx, images.BuildOptions{Root: root, Out: filepath.Join(out, "bin"), Logf: logf})
	if err != nil {
		return Config{}, err
	}
	written, err := images.WriteAll(out, append(images.Product(bins), images.Workloads(bins)...))
	if err != nil {
		return Config{}, err
	}
	cfg := Config{Logf: logf}
	// The Gateway API, for waypoints: istiod watches the kinds it finds at
	// start.
	if cfg.ExtraCRDFiles, err = controlplane.GatewayAPICRDs(ctx, "experimental"); err != nil {
		return Config{}, err
	}
	for _, w := range written {
		cfg.Images = append(cfg.Images, w.Path)
	}

	cfg.CNIPluginsDir = filepath.Join(root, "bin", "cni-plugins", nodebox.CNIPluginsVersion)
	var missing []string
	for _, p := range referencePlugins {
		if _, err := os.Stat(filepath.Join(cfg.CNIPluginsDir, filepath.Base(p))); err != nil {
			missing = append(missing, "github.com/containernetworking/plugins/"+p+"@"+nodebox.CNIPluginsVersion)
		}
	}
	if len(missing) > 0 {
		logf("installing the CNI reference plugins %s", nodebox.CNIPluginsVersion)
		cmd := exec.CommandContext(ctx, images.GoTool(), append([]string{"install"}, missing...)...)
		cmd.Dir = os.TempDir()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOBIN="+cfg.CNIPluginsDir)
		if b, err := cmd.CombinedOutput(); err != nil {
			return Config{}, fmt.Errorf("go install %s: %v\n%s", strings.Join(missing, " "), err, b)
		}
	}
	return cfg, nil
}
