package nodebox

import (
	"context"
	"os"
	"path/filepath"
	"runtime"

	"github.com/kmesh-go/kmesh/internal/fortio"
	"github.com/kmesh-go/kmesh/tests/internal/gocmd"
)

// Versions of the outside programs a box runs, installed with `go install`
// from the Go module proxy (each with its own go.mod, not ours).
const (
	// CNIPluginsVersion is the release of the CNI reference plugins
	// (bridge, host-local, loopback, portmap); kmesh-cni's kernel tests
	// use the same one and share the cache under bin/cni-plugins.
	CNIPluginsVersion = "v1.10.0"
	// FortioVersion is the pinned fortio release (internal/fortio).
	FortioVersion = fortio.Version
)

var referencePlugins = []string{
	"plugins/main/bridge",
	"plugins/ipam/host-local",
	"plugins/main/loopback",
	"plugins/meta/portmap",
}

// Bins are the programs a box runs.
type Bins struct {
	Daemon, CNI, Kmeshctl string
	// Waypoint is kmesh-waypoint, the L7 proxy a waypoint pod runs.
	Waypoint string
	// CNIPath is CNI_PATH: the reference plugins' folder, then kmesh-cni's.
	CNIPath []string
	// Fortio is empty unless BuildOptions.Fortio asked for it.
	Fortio string
}

// BuildOptions says what to build and where.
type BuildOptions struct {
	// Root is the repository root. Default: found from this source file.
	Root string
	// Out receives kmesh-daemon, kmesh-cni, kmeshctl and kmesh-waypoint.
	// Default: Root/bin.
	Out string
	// Fortio also installs fortio (cached under Root/bin/fortio/<version>).
	Fortio bool
	// Logf reports each step; nil is quiet.
	Logf func(format string, args ...any)
}

// RepoRoot is the repository root, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles the product's binaries from the working tree (static, no
// cgo) and installs the reference CNI plugins (and fortio) once per version.
// One `go` command at a time: the machines have two cores.
func Build(ctx context.Context, o BuildOptions) (Bins, error) {
	if o.Root == "" {
		o.Root = RepoRoot()
	}
	if o.Out == "" {
		o.Out = filepath.Join(o.Root, "bin")
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	b := Bins{
		Daemon:   filepath.Join(o.Out, "kmesh-daemon"),
		CNI:      filepath.Join(o.Out, "kmesh-cni"),
		Kmeshctl: filepath.Join(o.Out, "kmeshctl"),
		Waypoint: filepath.Join(o.Out, "kmesh-waypoint"),
	}
	targets := []struct{ out, pkg string }{
		{b.Daemon, "./daemon"}, {b.CNI, "./plugins/kmesh-cni"}, {b.Kmeshctl, "./kmeshctl"},
		{b.Waypoint, "./waypoint/kmesh-waypoint"},
		// kmesh-cni's API client, found beside it.
		{filepath.Join(o.Out, "kmesh-cni-kube"), "./plugins/kmesh-cni-kube"},
	}
	for _, x := range targets {
		o.Logf("building %s", filepath.Base(x.out))
		if err := gocmd.Run(ctx, o.Root, nil, "build", "-o", x.out, x.pkg); err != nil {
			return b, err
		}
	}

	refDir, err := CNIPlugins(ctx, o.Root, o.Logf)
	if err != nil {
		return b, err
	}
	b.CNIPath = []string{refDir, filepath.Dir(b.CNI)}

	if o.Fortio {
		dir := filepath.Join(o.Root, "bin", "fortio", FortioVersion)
		b.Fortio = filepath.Join(dir, "fortio")
		if _, err := os.Stat(b.Fortio); err != nil {
			o.Logf("installing fortio %s", FortioVersion)
			if err := gocmd.Run(ctx, os.TempDir(), []string{"GOBIN=" + dir}, "install", "fortio.org/fortio@"+FortioVersion); err != nil {
				return b, err
			}
		}
	}
	return b, nil
}

// CNIPlugins installs the CNI reference plugins (bridge, host-local,
// loopback, portmap) of CNIPluginsVersion into root/bin/cni-plugins/<version>,
// those missing only, and returns that folder. nodebox and kubenode share it.
func CNIPlugins(ctx context.Context, root string, logf func(string, ...any)) (string, error) {
	refDir := filepath.Join(root, "bin", "cni-plugins", CNIPluginsVersion)
	var missing []string
	for _, p := range referencePlugins {
		if _, err := os.Stat(filepath.Join(refDir, filepath.Base(p))); err != nil {
			missing = append(missing, "github.com/containernetworking/plugins/"+p+"@"+CNIPluginsVersion)
		}
	}
	if len(missing) > 0 {
		if logf != nil {
			logf("installing the CNI reference plugins %s", CNIPluginsVersion)
		}
		if err := gocmd.Run(ctx, os.TempDir(), []string{"GOBIN=" + refDir}, append([]string{"install"}, missing...)...); err != nil {
			return "", err
		}
	}
	return refDir, nil
}
