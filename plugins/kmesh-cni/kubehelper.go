package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// helperName is kmesh-cni's client of the Kubernetes API, a binary of its
// own installed beside it (plugins/kmesh-cni-kube). The plugin talks to the
// API only when the daemon cannot decide, and linking a TLS stack cost
// every run ~0.4 ms of package initialisation; the helper costs ~1.5 ms
// more on the runs that need it.
const helperName = "kmesh-cni-kube"

// apiAnswer is kmesh-cni-kube's answer (its type answer).
type apiAnswer struct {
	Enroll    bool   `json:"enroll"`
	Reason    string `json:"reason"`
	Marked    bool   `json:"marked"`
	MarkError string `json:"markError"`
	Kind      string `json:"kind"`
	Err       string `json:"error"`
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
	args := []string{op, "--kubeconfig", r.conf.Kubeconfig, "--timeout", kubeTimeout.String()}
	if pod.IsSet() {
		args = append(args, "--namespace", pod.Namespace, "--name", pod.Name)
	}
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
	var a apiAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		return apiAnswer{}, fmt.Errorf("%s %s answered %q", helperName, op, out)
	}
	return a, nil
}

// kubeHelper runs kmesh-cni-kube mark or unmark for pod.
func (r *run) kubeHelper(op string, pod conf.Pod) error {
	a, err := r.askAPI(op, pod, false)
	if err != nil {
		return err
	}
	if a.Kind != "" {
		return errors.New(a.Err)
	}
	return nil
}

// kubeconfigHint is what an operator does about a kubeconfig ADD refuses.
const kubeconfigHint = "check the kubeconfig field of the kmesh-cni entry in the conflist (kmesh-install writes this file)"

// checkKubeconfig fails ADD with code 7 when the kubeconfig cannot be
// used, whoever decides the pod: a broken one shows at once, not at the
// first ADD the daemon cannot answer, when the plugin needs it. The plugin
// does not read the file itself (it links no YAML reader, whose package
// initialisation every run would pay): kmesh-cni-kube checks it once per
// version of the file, and the state directory remembers the version that
// passed (device, inode, size and times: a rewrite or a rename over it is
// a new version). Files the kubeconfig names (a CA, a token file) are
// checked with it, not watched.
func (r *run) checkKubeconfig() error {
	path := r.conf.Kubeconfig
	f, err := os.Open(path)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "kmesh-cni: read kubeconfig: "+err.Error(), kubeconfigHint)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "kmesh-cni: read kubeconfig: "+err.Error(), kubeconfigHint)
	}
	if !fi.Mode().IsRegular() {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("kmesh-cni: kubeconfig %s is not a file", path), kubeconfigHint)
	}
	version := path + "\n"
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		for _, v := range []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()} {
			version += strconv.FormatInt(v, 10) + " "
		}
	}
	sum := sha256.Sum256([]byte(path))
	stamp := filepath.Join(r.conf.StateDir, "kubeconfig-checked-"+hex.EncodeToString(sum[:8]))
	if b, err := os.ReadFile(stamp); err == nil && string(b) == version {
		return nil
	}
	a, err := r.askAPI("check", conf.Pod{}, false)
	if err != nil {
		// Nothing is known against the file; if the daemon cannot decide,
		// decide's own run of the helper says why it did not run.
		r.log.Warn("kubeconfig not checked", "error", err)
		return nil
	}
	if a.Kind != "" {
		return types.NewError(types.ErrInvalidNetworkConfig, "kmesh-cni: "+a.Err, kubeconfigHint)
	}
	tmp := stamp + ".tmp" + strconv.Itoa(os.Getpid())
	err = os.MkdirAll(r.conf.StateDir, 0o700)
	if err == nil {
		err = os.WriteFile(tmp, []byte(version), 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, stamp)
	}
	if err != nil {
		_ = os.Remove(tmp)
		r.log.Warn("remember the checked kubeconfig", "error", err)
	}
	return nil
}
