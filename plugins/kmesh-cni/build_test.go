package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// The CNI reference plugins the chain tests run before kmesh-cni, built
// from this release with `go install` (their own go.mod, not ours).
const referenceVersion = "v1.10.0"

var referencePlugins = []string{
	"plugins/main/bridge",
	"plugins/ipam/host-local",
	"plugins/main/loopback",
	"plugins/meta/portmap",
}

// emptyPluginName is the benchmarks' control plugin (internal/emptyplugin)
// as conflists name it.
const emptyPluginName = "kmesh-empty"

// grpcClientPluginName is kmesh-cni built with grpc-go's client instead
// of its own (registry, -tags kmesh_grpc_client): the ADD benchmark runs
// it beside the default build.
const grpcClientPluginName = "kmesh-cni-grpc"

// tmpRoot holds what this test process builds; TestMain removes it.
var tmpRoot string

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

// repoRoot is the module root, found from this file.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"CGO_ENABLED=0"}, env...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

var built struct {
	once sync.Once
	// paths is CNI_PATH: the reference plugins' folder, then kmesh-cni's.
	paths []string
	err   error
}

// pluginPaths builds kmesh-cni, kmesh-cni-kube and the empty plugin from
// this tree (once per test process) and the reference plugins (once per
// version, cached under bin/, which git ignores).
func pluginPaths(t testing.TB) []string {
	t.Helper()
	built.once.Do(func() {
		root := repoRoot()
		version := referenceVersion
		refDir := filepath.Join(root, "bin", "cni-plugins", version)
		missing := false
		for _, p := range referencePlugins {
			if _, err := os.Stat(filepath.Join(refDir, filepath.Base(p))); err != nil {
				missing = true
			}
		}
		if missing {
			// go install pkg@version builds with the plugins' own go.mod,
			// so it needs nothing from ours.
			args := []string{"install"}
			for _, p := range referencePlugins {
				args = append(args, "github.com/containernetworking/plugins/"+p+"@"+version)
			}
			if err := goCmd(os.TempDir(), []string{"GOBIN=" + refDir}, args...); err != nil {
				built.err = err
				return
			}
		}
		var err error
		if tmpRoot, err = os.MkdirTemp("", "kmesh-cni-test"); err != nil {
			built.err = err
			return
		}
		own := filepath.Join(tmpRoot, "bin")
		for _, b := range []struct{ name, pkg string }{
			{"kmesh-cni", "./plugins/kmesh-cni"},
			{"kmesh-cni-kube", "./plugins/kmesh-cni-kube"},
			{emptyPluginName, "./plugins/kmesh-cni/internal/emptyplugin"},
		} {
			if err := goCmd(root, nil, "build", "-o", filepath.Join(own, b.name), b.pkg); err != nil {
				built.err = err
				return
			}
		}
		built.paths = []string{refDir, own}
	})
	if built.err != nil {
		t.Fatalf("build CNI plugins: %v", built.err)
	}
	return built.paths
}

// buildGRPCClientPlugin builds kmesh-cni-grpc beside kmesh-cni.
func buildGRPCClientPlugin(t testing.TB) {
	t.Helper()
	own := pluginPaths(t)[1]
	if err := goCmd(repoRoot(), nil, "build", "-tags", "kmesh_grpc_client", "-o", filepath.Join(own, grpcClientPluginName), "./plugins/kmesh-cni"); err != nil {
		t.Fatalf("build %s: %v", grpcClientPluginName, err)
	}
}
