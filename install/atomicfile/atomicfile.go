// Package atomicfile writes files so that a reader sees either the old content
// or the new content, never a mix: the container runtime may read a conflist
// at any moment, and the kubelet may exec a CNI binary at any moment.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write replaces path with data: it writes a temporary file in the same
// directory, syncs it, sets mode, renames it over path and syncs the directory.
func Write(path string, data []byte, mode os.FileMode) error {
	return write(path, mode, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// Copy replaces dst with the content of src, atomically, with the given mode.
func Copy(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("failed to open %q: %w", src, err)
	}
	defer in.Close()
	return write(dst, mode, func(f *os.File) error {
		_, err := io.Copy(f, in)
		return err
	})
}

func write(path string, mode os.FileMode, fill func(*os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// The leading dot and the suffix keep the runtime from reading the
	// temporary file as a network config (it only reads .conf, .conflist, .json).
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("failed to create a temporary file for %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return fmt.Errorf("failed to write %q: %w", tmp.Name(), err)
	}
	// CreateTemp makes 0600 files; the mode is set explicitly so the umask
	// does not matter either.
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("failed to chmod %q: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("failed to sync %q: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("failed to close %q: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("failed to rename %q to %q: %w", tmp.Name(), path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename durable across a crash of the node.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to open directory %q: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("failed to sync directory %q: %w", dir, err)
	}
	return nil
}
