package kubenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The kubelet writes a few machine-wide sysctls at start (not per network
// namespace, so the node's own namespace does not contain them). They are
// recorded before the node starts and written back when it goes.
var kubeletSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// hostState is what the machine looked like before the node started: the
// sysctls above and the host network namespace's iptables chains (v4 and
// v6). The kubelet and its plugins run in the node's own network and mount
// namespaces, so the chains and mounts should never change; restore checks
// that and removes what a change added.
type hostState struct {
	Sysctls map[string]string   `json:"sysctls"`
	Chains  map[string][]string `json:"chains"` // "iptables/nat" -> chain names
}

func recordHost() (*hostState, error) {
	h := &hostState{Sysctls: map[string]string{}}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", k, err)
		}
		h.Sysctls[k] = strings.TrimSpace(string(b))
	}
	chains, err := hostChains()
	if err != nil {
		return nil, err
	}
	h.Chains = chains
	return h, nil
}

// hostChains lists the chains of every table of iptables and ip6tables in
// this (the host's) network namespace.
func hostChains() (map[string][]string, error) {
	out := map[string][]string{}
	for _, tool := range []string{"iptables", "ip6tables"} {
		b, err := exec.Command(tool + "-save").Output()
		if err != nil {
			return nil, fmt.Errorf("%s-save: %w", tool, err)
		}
		table := ""
		for _, line := range strings.Split(string(b), "\n") {
			switch {
			case strings.HasPrefix(line, "*"):
				table = tool + "/" + line[1:]
				out[table] = out[table][:0:0]
			case strings.HasPrefix(line, ":") && table != "":
				name, _, _ := strings.Cut(line[1:], " ")
				out[table] = append(out[table], name)
			}
		}
	}
	return out, nil
}

// restore writes the recorded sysctls back and removes chains that appeared
// in the host's tables since (flushing them first); it reports what it had
// to change.
func (h *hostState) restore() (changed []string, err error) {
	var errs []error
	for k, want := range h.Sysctls {
		p := filepath.Join("/proc/sys", k)
		b, rerr := os.ReadFile(p)
		if rerr == nil && strings.TrimSpace(string(b)) == want {
			continue
		}
		if werr := os.WriteFile(p, []byte(want), 0o644); werr != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, want, werr))
			continue
		}
		changed = append(changed, fmt.Sprintf("sysctl %s=%s (was %s)", k, want, strings.TrimSpace(string(b))))
	}
	now, cerr := hostChains()
	if cerr != nil {
		return changed, errors.Join(append(errs, cerr)...)
	}
	for table, chains := range now {
		tool, tbl, _ := strings.Cut(table, "/")
		for _, c := range chains {
			if slices.Contains(h.Chains[table], c) || !strings.HasPrefix(c, "KUBE-") {
				continue
			}
			// A KUBE- chain in the host's tables: the node's kubelet
			// escaped its namespace. Rules that jump to it go first.
			if err := removeChain(tool, tbl, c); err != nil {
				errs = append(errs, err)
				continue
			}
			changed = append(changed, fmt.Sprintf("%s chain %s", table, c))
		}
	}
	return changed, errors.Join(errs...)
}

func removeChain(tool, table, chain string) error {
	b, err := exec.Command(tool+"-save", "-t", table).Output()
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "-A ") && strings.Contains(line, "-j "+chain) {
			args := append([]string{"-t", table, "-D"}, strings.Fields(line)[1:]...)
			_ = run(tool, args...)
		}
	}
	if err := run(tool, "-t", table, "-F", chain); err != nil {
		return err
	}
	return run(tool, "-t", table, "-X", chain)
}

func (h *hostState) save(path string) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func loadHostState(path string) (*hostState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h hostState
	return &h, json.Unmarshal(b, &h)
}
