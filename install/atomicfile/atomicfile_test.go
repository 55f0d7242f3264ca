package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteAndCopy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-x.conflist")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new"), 0o640); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("content %q", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	dst := filepath.Join(dir, "bin")
	if err := Copy(path, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dst); st.Mode().Perm() != 0o755 {
		t.Errorf("copy mode %v, want 0755", st.Mode().Perm())
	}
	if err := Copy(filepath.Join(dir, "missing"), dst, 0o755); err == nil {
		t.Error("Copy of a missing file: no error")
	}
	if err := Write(filepath.Join(dir, "no-such-dir", "f"), nil, 0o644); err == nil {
		t.Error("Write into a missing directory: no error")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		for _, e := range entries {
			t.Errorf("left in the directory: %s", e.Name())
		}
	}
}
