package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/internal/jsontree"
)

// helperName is kmesh-cni's client of the Kubernetes API, a binary of its
// own installed beside it (plugins/kmesh-cni-kube). The plugin talks to the
// API only when the daemon cannot decide, and linking a TLS stack cost
// every run ~0.4 ms of package initialisation; the helper costs ~1.5 ms
// more on the runs that need it.
const helperName = "kmesh-cni-kube"

// apiAnswer is kmesh-cni-kube's answer.
type apiAnswer struct {
	enroll, marked    bool
	reason, markError string
	kind, err         string
}

// findHelper looks beside kmesh-cni's own binary, then in CNI_PATH.
func findHelper(cniPath string) (string, error) {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	dirs = append(dirs, filepath.SplitList(cniPath)...)
	for _, d := range dirs {
		p := filepath.Join(d, helperName)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed beside kmesh-cni or in CNI_PATH (%s); kmesh-install copies both", helperName, cniPath)
}

// askAPI runs kmesh-cni-kube op for pod, within the API timeout.
func (r *run) askAPI(op string, pod conf.Pod, mark bool) (apiAnswer, error) {
	bin, err := findHelper(r.args.Path)
	if err != nil {
		return apiAnswer{}, err
	}
	args := []string{op, "--kubeconfig", r.conf.Kubeconfig, "--namespace", pod.Namespace, "--name", pod.Name,
		"--timeout", kubeTimeout.String()}
	if pod.UID != "" {
		args = append(args, "--uid", pod.UID)
	}
	if mark {
		args = append(args, "--mark")
	}
	// The helper bounds itself; this bounds a helper that hangs anyway.
	ctx, cancel := context.WithTimeout(context.Background(), kubeTimeout+time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return apiAnswer{}, fmt.Errorf("%s %s: %v: %s", helperName, op, err, strings.TrimSpace(stderr.String()))
	}
	v, err := jsontree.Parse(out)
	if err != nil || v.Kind != jsontree.Object {
		return apiAnswer{}, fmt.Errorf("%s %s answered %q", helperName, op, out)
	}
	var a apiAnswer
	for _, f := range []struct {
		key string
		s   *string
		b   *bool
	}{{"enroll", nil, &a.enroll}, {"marked", nil, &a.marked}, {"reason", &a.reason, nil},
		{"markError", &a.markError, nil}, {"kind", &a.kind, nil}, {"error", &a.err, nil}} {
		m, ok := v.Get(f.key)
		switch {
		case !ok:
		case f.s != nil && m.Kind == jsontree.String:
			*f.s = m.Str
		case f.b != nil && m.Kind == jsontree.Bool:
			*f.b = m.Bool
		}
	}
	return a, nil
}

// kubeHelper runs kmesh-cni-kube mark or unmark for pod.
func (r *run) kubeHelper(op string, pod conf.Pod) error {
	a, err := r.askAPI(op, pod, false)
	if err != nil {
		return err
	}
	if a.kind != "" {
		return errors.New(a.err)
	}
	return nil
}
