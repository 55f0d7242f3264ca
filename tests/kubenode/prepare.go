package kubenode

import (
	"context"
	"path/filepath"

	"github.com/kmesh-go/kmesh/tests/e2e/controlplane"
	"github.com/kmesh-go/kmesh/tests/images"
	"github.com/kmesh-go/kmesh/tests/nodebox"
)

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

	if cfg.CNIPluginsDir, err = nodebox.CNIPlugins(ctx, root, logf); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
