package kubenode

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Kubectl runs the pinned kubectl against the node's apiserver, from the
// node's network namespace (where the apiserver listens), and returns its
// standard output.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	return n.KubectlIn(ctx, nil, args...)
}

// KubectlIn is Kubectl with stdin (e.g. `apply -f -`).
func (n *Node) KubectlIn(ctx context.Context, stdin []byte, args ...string) (string, error) {
	argv := append([]string{"nsenter", "--net=" + n.NetNSPath, "--",
		filepath.Join(n.cfg.BinDir, "kubectl"),
		"--kubeconfig=" + n.CP.Kubeconfig,
		"--cache-dir=" + n.path("kubectl-cache"),
	}, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = n.env()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Apply is `kubectl apply -f -` of a manifest.
func (n *Node) Apply(ctx context.Context, manifest string) error {
	_, err := n.KubectlIn(ctx, []byte(manifest), "apply", "-f", "-")
	return err
}

// KubectlPath is the pinned kubectl binary.
func (n *Node) KubectlPath() string { return filepath.Join(n.cfg.BinDir, "kubectl") }

// MountNSPath is the node's mount namespace file, for nsenter --mount.
func (n *Node) MountNSPath() string { return n.mnt.File }
