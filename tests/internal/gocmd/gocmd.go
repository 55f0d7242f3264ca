// Package gocmd runs the go command for the test tools that build the
// product (nodebox, images): a package of its own so neither pulls in the
// other's dependencies to share it.
package gocmd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Path is the go command: on PATH, else beside the running toolchain's
// GOROOT or in /usr/local/go (sudo and CI shells may lack the PATH entry).
func Path() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	for _, p := range []string{filepath.Join(runtime.GOROOT(), "bin", "go"), "/usr/local/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

// Run runs go with args in dir, static (CGO_ENABLED=0) and outside any
// workspace, with env added; its output comes back in the error.
func Run(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, Path(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"CGO_ENABLED=0", "GOWORK=off"}, env...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
