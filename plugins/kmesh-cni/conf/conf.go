// Package conf parses what a runtime hands kmesh-cni: its entry of the
// conflist on stdin and the CNI_ARGS string. Every error is a CNI error
// (spec code, message an operator can act on), so callers return it as is.
package conf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Defaults for fields the conflist leaves out.
const (
	DefaultDaemonSocket = "/var/run/kmesh/cni.sock"
	DefaultBPFDir       = "/sys/fs/bpf/kmesh"
	DefaultStateDir     = "/var/run/kmesh/cni"
)

// Failure policies: what ADD does when the daemon (or the Kubernetes API)
// cannot be reached in time.
const (
	// FailOpen lets the pod start; the daemon catches up later.
	FailOpen = "open"
	// FailClosed fails ADD with code 11 so the runtime retries.
	FailClosed = "closed"
)

// Plugin-specific CNI error codes (the spec leaves 100+ to plugins).
const (
	// ErrEnroll: the pod could not be put under the data path.
	ErrEnroll uint = 100
	// ErrAttachTC: the tc program could not be attached to the host veth.
	ErrAttachTC uint = 101
	// ErrTopology: the pod's interface is not a veth with a peer on the
	// node, so there is nowhere to attach the tc program.
	ErrTopology uint = 102
	// ErrCheck: CHECK found the enrollment missing or different.
	ErrCheck uint = 103
	// ErrState: the state directory could not be read or written.
	ErrState uint = 104
	// ErrGC: GC could not remove some stale state.
	ErrGC uint = 105
)

// SupportedVersions are the CNI spec versions kmesh-cni speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Levels are the accepted logLevel values.
var Levels = []string{"debug", "info", "warn", "error"}

// Conf is kmesh-cni's entry in the conflist.
type Conf struct {
	types.PluginConf

	// Kubeconfig gives access to the Kubernetes API, where enrollment is
	// decided. Empty: DefaultEnroll decides.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// DaemonSocket is the node daemon's gRPC unix socket.
	DaemonSocket string `json:"daemonSocket,omitempty"`
	// BPFDir is the data path's pin directory on bpffs.
	BPFDir string `json:"bpfDir,omitempty"`
	// StateDir keeps one record per attachment, so DEL, CHECK and GC know
	// what ADD did, and the daemon can learn every pod after a restart.
	StateDir string `json:"stateDir,omitempty"`
	// FailurePolicy is FailOpen or FailClosed.
	FailurePolicy string `json:"failurePolicy,omitempty"`
	// DefaultEnroll decides enrollment when there is no kubeconfig.
	DefaultEnroll bool `json:"defaultEnroll,omitempty"`
	// LogFile receives the plugin's log; empty means stderr.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is one of Levels.
	LogLevel string `json:"logLevel,omitempty"`
}

// ownFields are the keys kmesh-cni reads, for spotting miscased ones.
var ownFields = []string{"kubeconfig", "daemonSocket", "bpfDir", "stateDir", "failurePolicy", "defaultEnroll", "logFile", "logLevel"}

// Parse decodes and validates the network configuration on stdin, with
// defaults filled in and prevResult (if any) decoded into PrevResult.
func Parse(stdin []byte) (*Conf, error) {
	c := &Conf{}
	dec := json.NewDecoder(bytes.NewReader(stdin))
	if err := dec.Decode(c); err != nil {
		return nil, decodeError(err)
	}
	if dec.More() {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network config: trailing data after the JSON object", "")
	}
	if err := checkFieldNames(stdin); err != nil {
		return nil, err
	}
	if !slices.Contains(SupportedVersions, c.CNIVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("cniVersion %q is not supported by kmesh-cni", c.CNIVersion),
			"set cniVersion to one of "+strings.Join(SupportedVersions, ", "))
	}
	if c.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config has no name", "give the conflist a name")
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode prevResult: "+err.Error(),
			"the previous plugin in the chain produced a result kmesh-cni cannot read")
	}
	return c, nil
}

// RequirePrevResult fails unless the conf carries the previous plugin's
// result, as a chained ADD needs.
func (c *Conf) RequirePrevResult() error {
	if c.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"kmesh-cni is a chained plugin and got no prevResult",
			"put kmesh-cni after the primary network plugin (e.g. bridge) in a .conflist; it cannot run on its own")
	}
	return nil
}

// Closed tells whether the failure policy is closed.
func (c *Conf) Closed() bool { return c.FailurePolicy == FailClosed }

func (c *Conf) setDefaults() {
	if c.DaemonSocket == "" {
		c.DaemonSocket = DefaultDaemonSocket
	}
	if c.BPFDir == "" {
		c.BPFDir = DefaultBPFDir
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.FailurePolicy == "" {
		c.FailurePolicy = FailOpen
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
}

func (c *Conf) validate() error {
	if c.FailurePolicy != FailOpen && c.FailurePolicy != FailClosed {
		return invalid("failurePolicy", c.FailurePolicy, `use "open" (pods start while the daemon is away) or "closed" (ADD fails so the runtime retries)`)
	}
	if !slices.Contains(Levels, c.LogLevel) {
		return invalid("logLevel", c.LogLevel, "use one of "+strings.Join(Levels, ", "))
	}
	paths := []struct {
		field, value string
		optional     bool
	}{
		{"daemonSocket", c.DaemonSocket, false},
		{"bpfDir", c.BPFDir, false},
		{"stateDir", c.StateDir, false},
		{"kubeconfig", c.Kubeconfig, true},
		{"logFile", c.LogFile, true},
	}
	for _, p := range paths {
		if p.optional && p.value == "" {
			continue
		}
		if !filepath.IsAbs(p.value) || strings.ContainsRune(p.value, 0) {
			return invalid(p.field, p.value, "give an absolute path")
		}
		if p.field != "kubeconfig" && p.field != "logFile" && filepath.Clean(p.value) == "/" {
			return invalid(p.field, p.value, "give a directory of its own, not /")
		}
	}
	return nil
}

func invalid(field, value, hint string) error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("kmesh-cni config: invalid %s %q", field, value), hint)
}

func decodeError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("decode network config: field %s must be a %s, not a JSON %s", te.Field, te.Type, te.Value), "")
	}
	return types.NewError(types.ErrDecodingFailure, "decode network config: "+err.Error(), "")
}

// checkFieldNames rejects keys that are ours but for their case: Go's JSON
// decoder would accept them silently and an operator's "failurepolicy:
// closed" would quietly become "open".
func checkFieldNames(stdin []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return decodeError(err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, own := range ownFields {
			if k != own && strings.EqualFold(k, own) {
				return types.NewError(types.ErrUnsupportedField,
					fmt.Sprintf("unsupported field %q (value %s) in the kmesh-cni config", k, clip(raw[k])),
					fmt.Sprintf("did you mean %q? field names are case-sensitive", own))
			}
		}
	}
	return nil
}

func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
