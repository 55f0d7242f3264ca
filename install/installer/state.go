package installer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/kmesh-go/kmesh/install/atomicfile"
)

// stateName is kept in the conf directory, beside the files it describes, so
// it lives as long as they do (a node's reboot clears /var/run, not
// /etc/cni/net.d). Runtimes read only .conf, .conflist and .json files.
const stateName = ".kmesh-install-state"

// state is what the installer must remember across its own restarts to undo
// its changes exactly.
type state struct {
	// Files are the conf files the entry was written to, by name.
	Files map[string]*fileState `json:"files"`
}

type fileState struct {
	// Set when the file is a conflist the installer made from a
	// single-plugin file: that file's name, bytes and mode, and the conflist
	// as made (without the entry). Uninstall puts the original back if the
	// conflist, minus the entry, is still what the installer made.
	FromName    string      `json:"fromName,omitempty"`
	FromContent []byte      `json:"fromContent,omitempty"`
	FromMode    os.FileMode `json:"fromMode,omitempty"`
	Made        []byte      `json:"made,omitempty"`
}

func loadState(path string) (*state, error) {
	s := &state{Files: map[string]*fileState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read the install state %q: %w", path, err)
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("failed to parse the install state %q (delete it to start afresh): %w", path, err)
	}
	if s.Files == nil {
		s.Files = map[string]*fileState{}
	}
	return s, nil
}

func (s *state) save(path string) error {
	if len(s.Files) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("failed to remove the install state %q: %w", path, err)
		}
		return nil
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}
