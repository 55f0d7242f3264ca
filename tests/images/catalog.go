package images

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/kmesh-go/kmesh/internal/fortio"
	"github.com/kmesh-go/kmesh/tests/internal/gocmd"
)

// Names of the images, as install/kubernetes and the tests' pods name them.
const (
	DaemonRef   = "kmesh-go/kmesh-daemon:latest"
	InstallRef  = "kmesh-go/kmesh-install:latest"
	WaypointRef = "kmesh-go/kmesh-waypoint:latest"
	PauseRef    = "kmesh-go/pause:1"
)

// FortioVersion is the pinned fortio release without its "v" (an image
// tag), and FortioRef the tests' fortio image.
var (
	FortioVersion = strings.TrimPrefix(fortio.Version, "v")
	FortioRef     = "kmesh-go/fortio:" + FortioVersion
)

// Binaries are the static programs the images are made of, by name.
type Binaries map[string]string

// Product is the product's images: the daemon (with kmeshctl, for
// `kubectl exec ... kmeshctl`), the installer (with the CNI plugin and
// its API client, which it copies onto the node) and the waypoint (with
// kmeshctl, for `kubectl exec deploy/waypoint -- kmeshctl waypoint routes`,
// which reads the waypoint's admin on the pod's loopback).
func Product(b Binaries) []Spec {
	return []Spec{
		{
			Ref: DaemonRef,
			Files: []File{
				{Path: "/usr/local/bin/kmesh-daemon", Source: b["kmesh-daemon"]},
				{Path: "/usr/local/bin/kmeshctl", Source: b["kmeshctl"]},
			},
			Entrypoint: []string{"kmesh-daemon"},
		},
		{
			Ref: InstallRef,
			Files: []File{
				{Path: "/usr/local/bin/kmesh-install", Source: b["kmesh-install"]},
				// kmesh-install's --binaries-dir default.
				{Path: "/opt/kmesh/bin/kmesh-cni", Source: b["kmesh-cni"]},
				{Path: "/opt/kmesh/bin/kmesh-cni-kube", Source: b["kmesh-cni-kube"]},
			},
			Entrypoint: []string{"kmesh-install"},
		},
		{
			Ref: WaypointRef,
			Files: []File{
				{Path: "/usr/local/bin/kmesh-waypoint", Source: b["kmesh-waypoint"]},
				{Path: "/usr/local/bin/kmeshctl", Source: b["kmeshctl"]},
			},
			Entrypoint: []string{"kmesh-waypoint"},
		},
	}
}

// Workloads is the tests' own images: fortio (HTTP/TCP/gRPC echo server and
// load generator) and the pods' sandbox (pause).
func Workloads(b Binaries) []Spec {
	return []Spec{
		{
			Ref:        FortioRef,
			Files:      []File{{Path: "/usr/local/bin/fortio", Source: b["fortio"]}},
			Entrypoint: []string{"fortio"},
			Cmd:        []string{"server"},
		},
		{
			Ref:        PauseRef,
			Files:      []File{{Path: "/pause", Source: b["pause"]}},
			Entrypoint: []string{"/pause"},
		},
	}
}

// ProductPrograms are the product's packages that go into images, by
// binary name, relative to the repository root.
var ProductPrograms = map[string]string{
	"kmesh-daemon":   "./daemon",
	"kmeshctl":       "./kmeshctl",
	"kmesh-install":  "./install/kmesh-install",
	"kmesh-cni":      "./plugins/kmesh-cni",
	"kmesh-cni-kube": "./plugins/kmesh-cni-kube",
	"kmesh-waypoint": "./waypoint/kmesh-waypoint",
}

// BuildOptions says where the sources are and where binaries go.
type BuildOptions struct {
	// Root is the repository root; default: found from this source file.
	Root string
	// Out receives the binaries; default Root/bin/images/bin.
	Out string
	// Logf reports each step; nil is quiet.
	Logf func(format string, args ...any)
}

// fill sets the defaults and makes Out absolute: the go commands run in
// other folders (the root, the tests module), so a relative Out (make
// images passes ../bin/images/bin from tests/) would land beside the
// repository instead.
func (o *BuildOptions) fill() error {
	if o.Root == "" {
		o.Root = RepoRoot()
	}
	if o.Out == "" {
		o.Out = filepath.Join(o.Root, "bin", "images", "bin")
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return err
	}
	o.Out = out
	return nil
}

// RepoRoot is the repository root, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BuildBinaries compiles what the images hold: the product's programs from
// the working tree, pause from this module, fortio from the module proxy.
// Static (no cgo), -trimpath and no VCS stamp, so the bytes depend on the
// sources only; one go command at a time (the machines have two cores).
func BuildBinaries(ctx context.Context, o BuildOptions) (Binaries, error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	b := Binaries{}
	flags := []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid="}

	var pkgs []string
	for name, pkg := range ProductPrograms {
		b[name] = filepath.Join(o.Out, name)
		pkgs = append(pkgs, pkg)
	}
	o.Logf("building %s", strings.Join(pkgs, " "))
	// One go build for all of them writes each main package's binary into
	// the -o directory, named after its folder; rename where that differs.
	if err := gocmd.Run(ctx, o.Root, nil, append(append([]string{"build"}, flags...), append([]string{"-o", o.Out + "/"}, pkgs...)...)...); err != nil {
		return nil, err
	}
	for name, pkg := range ProductPrograms {
		if built := filepath.Join(o.Out, filepath.Base(pkg)); built != b[name] {
			if err := os.Rename(built, b[name]); err != nil {
				return nil, err
			}
		}
	}

	b["pause"] = filepath.Join(o.Out, "pause")
	o.Logf("building pause")
	if err := gocmd.Run(ctx, filepath.Join(o.Root, "tests"), nil, append(append([]string{"build"}, flags...), "-o", b["pause"], "./images/pause")...); err != nil {
		return nil, err
	}

	b["fortio"] = filepath.Join(o.Out, "fortio")
	o.Logf("building fortio v%s", FortioVersion)
	if err := gocmd.Run(ctx, os.TempDir(), []string{"GOBIN=" + o.Out}, append(append([]string{"install"}, flags...), "fortio.org/fortio@v"+FortioVersion)...); err != nil {
		return nil, err
	}
	return b, nil
}

// WriteAll builds every Spec and writes its tarball into dir.
func WriteAll(dir string, specs []Spec) ([]Written, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []Written
	for _, s := range specs {
		w, err := WriteTarball(filepath.Join(dir, FileName(s.Ref)), s)
		if err != nil {
			return out, err
		}
		out = append(out, w)
	}
	return out, nil
}
