package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// Extensions a container runtime reads from the conf directory (libcni's
// ConfFiles as containerd and CRI-O call it). A .conflist holds a chain; the
// others hold one plugin.
var Extensions = []string{".conf", ".conflist", ".json"}

// IsList reports whether name is read as a chain rather than a single plugin.
func IsList(name string) bool { return strings.HasSuffix(name, ".conflist") }

// IsConfFile reports whether a runtime would read name as network config.
func IsConfFile(name string) bool {
	ext := filepath.Ext(name)
	for _, e := range Extensions {
		if ext == e {
			return true
		}
	}
	return false
}

// ErrNoPrimary means the conf directory has no usable network config yet,
// typically because the primary CNI plugin has not written it.
var ErrNoPrimary = errors.New("no primary network config")

// Skipped explains why one file in the conf directory was not taken as the
// primary network.
type Skipped struct {
	Name   string
	Reason string
}

// FindPrimary returns the name of the file a runtime uses as the node's
// network: the first, in lexical order, that parses and has a plugin other
// than kmesh-cni. It also returns the files it passed over, and why. With no
// such file the error wraps ErrNoPrimary.
func FindPrimary(dir string) (string, []Skipped, error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil, fmt.Errorf("%w: %q does not exist", ErrNoPrimary, dir)
		}
		return "", nil, fmt.Errorf("failed to read %q: %w", dir, err)
	}
	var skipped []Skipped
	for _, e := range entries {
		if e.IsDir() || !IsConfFile(e.Name()) {
			continue
		}
		doc, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			skipped = append(skipped, Skipped{e.Name(), err.Error()})
			continue
		}
		if err := checkPrimary(e.Name(), doc); err != nil {
			skipped = append(skipped, Skipped{e.Name(), err.Error()})
			continue
		}
		return e.Name(), skipped, nil
	}
	return "", skipped, fmt.Errorf("%w in %q", ErrNoPrimary, dir)
}

// CheckFile says why the file name in dir cannot be the primary network,
// or nil if it can (as FindPrimary judges each file).
func CheckFile(dir, name string) error {
	doc, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	return checkPrimary(name, doc)
}

// checkPrimary says why doc, read from a file called name, cannot be the
// primary network, or nil if it can.
func checkPrimary(name string, doc []byte) error {
	if IsList(name) {
		types, err := Types(doc)
		if err != nil {
			return err
		}
		// What the runtime's libcni will not load (no name, a flag it
		// cannot read) is no network to it, whatever its plugins.
		if _, err := libcni.NetworkConfFromBytes(doc); err != nil {
			return err
		}
		for _, t := range types {
			if t != PluginType {
				return nil
			}
		}
		return errors.New("has no plugin other than " + PluginType)
	}
	var conf struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(doc, &conf); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	switch conf.Type {
	case "":
		return errors.New(`no "type": a single-plugin config needs one`)
	case PluginType:
		return errors.New("is a " + PluginType + " config, not a network")
	}
	return nil
}

// ListName is the .conflist name that replaces a single-plugin file.
func ListName(name string) string {
	return strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
}

// FromConf turns a single-plugin config into a conflist with that plugin as
// its only entry. The plugin keeps all of its fields in their order; the
// list takes its name and cniVersion, as libcni's ConfListFromConf does.
func FromConf(doc []byte) ([]byte, error) {
	var conf struct {
		Name       string          `json:"name"`
		CNIVersion json.RawMessage `json:"cniVersion"`
		Type       string          `json:"type"`
	}
	if err := json.Unmarshal(doc, &conf); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if conf.Type == "" {
		return nil, errors.New(`no "type": not a single-plugin config`)
	}
	var plugin bytes.Buffer
	if err := json.Compact(&plugin, doc); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	if conf.CNIVersion != nil {
		b.WriteString(`  "cniVersion": ` + string(conf.CNIVersion) + ",\n")
	}
	name, _ := json.Marshal(conf.Name)
	b.WriteString(`  "name": ` + string(name) + ",\n")
	b.WriteString("  \"plugins\": [\n    ")
	if err := json.Indent(&b, plugin.Bytes(), "    ", "  "); err != nil {
		return nil, err
	}
	b.WriteString("\n  ]\n}\n")
	return b.Bytes(), nil
}
