// Package conf parses what a runtime hands kmesh-cni: its entry of the
// conflist on stdin and the CNI_ARGS string. Every error is a CNI error
// (spec code, message an operator can act on), so callers return it as is.
package conf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
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
	// The spec's fields kmesh-cni uses.
	CNIVersion string
	Name       string
	Type       string
	// ValidAttachments is cni.dev/valid-attachments (GC).
	ValidAttachments []types.GCAttachment

	// Kubeconfig gives access to the Kubernetes API, where enrollment is
	// decided. Empty: DefaultEnroll decides.
	Kubeconfig string
	// DaemonSocket is the node daemon's gRPC unix socket.
	DaemonSocket string
	// BPFDir is the data path's pin directory on bpffs.
	BPFDir string
	// StateDir keeps one record per attachment, so DEL, CHECK and GC know
	// what ADD did, and the daemon can learn every pod after a restart.
	StateDir string
	// FailurePolicy is FailOpen or FailClosed.
	FailurePolicy string
	// DefaultEnroll decides enrollment when there is no kubeconfig.
	DefaultEnroll bool
	// LogFile receives the plugin's log; empty means stderr.
	LogFile string
	// LogLevel is one of Levels.
	LogLevel string

	// Prev is what kmesh-cni reads of prevResult; nil when there is none.
	Prev *Prev
}

// Parse decodes and validates the network configuration on stdin, with
// defaults filled in and prevResult (if any) read into Prev.
//
// Keys are matched exactly, as the spec writes them (encoding/json would
// fold their case): one that differs from ours only by case is refused
// rather than ignored.
func Parse(stdin []byte) (*Conf, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &doc); err != nil || doc == nil {
		return nil, decodeError("", err)
	}
	c := &Conf{}
	fields := map[string]any{
		"cniVersion": &c.CNIVersion, "name": &c.Name, "type": &c.Type,
		"cni.dev/valid-attachments": &c.ValidAttachments,
		"kubeconfig":                &c.Kubeconfig, "daemonSocket": &c.DaemonSocket, "bpfDir": &c.BPFDir,
		"stateDir": &c.StateDir, "failurePolicy": &c.FailurePolicy, "defaultEnroll": &c.DefaultEnroll,
		"logFile": &c.LogFile, "logLevel": &c.LogLevel,
	}
	for _, key := range slices.Sorted(maps.Keys(doc)) {
		v := doc[key]
		if key == "prevResult" {
			continue
		}
		to, ok := fields[key]
		if !ok {
			if err := miscased(key, v); err != nil {
				return nil, err
			}
			continue
		}
		if err := json.Unmarshal(v, to); err != nil {
			return nil, decodeError(key, err)
		}
	}
	if !slices.Contains(SupportedVersions, c.CNIVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("cniVersion %q is not supported by kmesh-cni", c.CNIVersion),
			"set cniVersion to one of "+strings.Join(SupportedVersions, ", "))
	}
	if c.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config has no name", "give the conflist a name")
	}
	if err := utils.ValidateNetworkName(c.Name); err != nil {
		return nil, err
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if prev := doc["prevResult"]; prev != nil && string(prev) != "null" {
		var err error
		if c.Prev, err = readPrev(prev, c.CNIVersion); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "decode prevResult: "+err.Error(),
				"the previous plugin in the chain produced a result kmesh-cni cannot read")
		}
	}
	return c, nil
}

// decodeError is a CNI error (code 6) saying where the JSON went wrong or
// what type a field (key; "" for the document) should have had.
func decodeError(key string, err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	msg := "decode network config: "
	switch {
	case err == nil: // the document was null
		msg += "want a JSON object, got a JSON null"
	case errors.As(err, &syntax):
		msg += fmt.Sprintf("invalid JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typ) && key == "":
		msg += fmt.Sprintf("want a JSON object, got a JSON %s", typ.Value)
	case errors.As(err, &typ):
		if typ.Field != "" {
			key += "." + typ.Field
		}
		msg += fmt.Sprintf("field %s must be a %s, not a JSON %s", key, typ.Type, typ.Value)
	default:
		msg += fmt.Sprintf("field %s: %v", key, err)
	}
	return types.NewError(types.ErrDecodingFailure, msg, "")
}

// ownFields are the keys kmesh-cni reads (besides the spec's), for
// spotting miscased ones.
var ownFields = []string{"kubeconfig", "daemonSocket", "bpfDir", "stateDir", "failurePolicy", "defaultEnroll", "logFile", "logLevel"}

// specFields are the spec's keys kmesh-cni reads.
var specFields = []string{"cniVersion", "name", "type", "prevResult", "cni.dev/valid-attachments"}

// miscased refuses a key that is one of ours but for its case: an
// operator's "failurepolicy": "closed" must not quietly become "open".
func miscased(key string, v json.RawMessage) error {
	for _, fields := range [][]string{ownFields, specFields} {
		for _, f := range fields {
			if strings.EqualFold(key, f) {
				return types.NewError(types.ErrUnsupportedField,
					fmt.Sprintf("unsupported field %q (value %s) in the kmesh-cni config", key, clip(v)),
					fmt.Sprintf("did you mean %q? field names are case-sensitive", f))
			}
		}
	}
	return nil
}

// RequirePrevResult fails unless the conf carries the previous plugin's
// result, as a chained ADD needs.
func (c *Conf) RequirePrevResult() error {
	if c.Prev == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"kmesh-cni is a chained plugin and got no prevResult",
			"put kmesh-cni after the primary network plugin (e.g. bridge) in a .conflist; it cannot run on its own")
	}
	return nil
}

// PrintPrevResult writes prevResult to w as the plugin's own result: the
// chain's result passes through kmesh-cni unchanged.
func (c *Conf) PrintPrevResult(w io.Writer) error {
	if err := c.RequirePrevResult(); err != nil {
		return err
	}
	if c.Prev.raw != nil {
		_, err := w.Write(c.Prev.raw)
		return err
	}
	r, err := c.Prev.result.GetAsVersion(c.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "prevResult: "+err.Error(), "")
	}
	return r.PrintTo(w)
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

func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
