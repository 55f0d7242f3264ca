// Package cniconf edits CNI network configuration files: it adds, updates and
// removes the kmesh-cni entry of a conflist while keeping every other byte of
// the file, converts a single-plugin .conf into a .conflist, and finds the
// primary network's file in a conf directory the way container runtimes do.
package cniconf

import (
	"bytes"
	"encoding/json"
)

// PluginType is the "type" of the kmesh-cni entry: the binary's name.
const PluginType = "kmesh-cni"

// Entry is the kmesh-cni plugin's own configuration in the chain. Empty
// fields are left out so the plugin applies its defaults.
type Entry struct {
	Kubeconfig    string `json:"kubeconfig,omitempty"`
	DaemonSocket  string `json:"daemonSocket,omitempty"`
	BPFDir        string `json:"bpfDir,omitempty"`
	StateDir      string `json:"stateDir,omitempty"`
	FailurePolicy string `json:"failurePolicy,omitempty"`
	DefaultEnroll *bool  `json:"defaultEnroll,omitempty"`
	LogFile       string `json:"logFile,omitempty"`
	LogLevel      string `json:"logLevel,omitempty"`
}

// MarshalJSON puts "type" first, as people expect to read it in a conflist.
func (e Entry) MarshalJSON() ([]byte, error) {
	type fields Entry // drops this method, so the next call cannot recurse
	body, err := json.Marshal(fields(e))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(`{"type":"` + PluginType + `"`)
	if len(body) > 2 {
		b.WriteByte(',')
		b.Write(body[1:])
	} else {
		b.WriteByte('}')
	}
	return b.Bytes(), nil
}
