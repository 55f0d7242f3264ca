package images

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	kmeshk8s "github.com/kmesh-go/kmesh/install/kubernetes"
)

func spec(t *testing.T, dir string) Spec {
	t.Helper()
	a := filepath.Join(dir, "a")
	if err := os.WriteFile(a, []byte("#!program a"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Ref: "kmesh-go/test:1",
		Files: []File{
			{Path: "/usr/local/bin/b", Data: []byte("program b")},
			{Path: "/opt/x/a", Source: a},
			{Path: "/etc/conf", Data: []byte("k=v"), Mode: 0o644},
		},
		Entrypoint: []string{"b"},
	}
}

// The same files give the same image, whenever and wherever they are built:
// file times on disk and the order files are listed in do not count.
func TestImageIsReproducible(t *testing.T) {
	dir := t.TempDir()
	s := spec(t, dir)
	first, err := WriteTarball(filepath.Join(dir, "1.tar"), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, "a"), Epoch.AddDate(30, 0, 0), Epoch.AddDate(30, 0, 0)); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(s.Files)
	second, err := WriteTarball(filepath.Join(dir, "2.tar"), s)
	if err != nil {
		t.Fatal(err)
	}
	if first.Digest != second.Digest || first.ID != second.ID {
		t.Fatalf("digests differ: %s/%s and %s/%s", first.Digest, first.ID, second.Digest, second.ID)
	}
	b1, _ := os.ReadFile(first.Path)
	b2, _ := os.ReadFile(second.Path)
	if !bytes.Equal(b1, b2) {
		t.Fatal("the two tarballs differ byte for byte")
	}

	s.Files[0].Data = []byte("k=w")
	third, err := WriteTarball(filepath.Join(dir, "3.tar"), s)
	if err != nil {
		t.Fatal(err)
	}
	if third.Digest == first.Digest {
		t.Fatal("a changed file left the digest as it was")
	}
}

// The layer lists parents before children in path order, all owned by root
// at Epoch, programs executable.
func TestLayerEntries(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img.tar")
	if _, err := WriteTarball(path, spec(t, dir)); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !cf.Created.Time.Equal(Epoch) || cf.OS != "linux" || cf.Architecture != "amd64" || !slices.Equal(cf.Config.Entrypoint, []string{"b"}) {
		t.Fatalf("config: %+v", cf)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: time %v owner %d:%d", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		names = append(names, h.Name)
		modes[h.Name] = h.Mode
	}
	want := []string{"etc/", "etc/conf", "opt/", "opt/x/", "opt/x/a", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/b"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	if modes["opt/x/a"] != 0o755 || modes["etc/conf"] != 0o644 || modes["tmp/"] != 0o1777 {
		t.Fatalf("modes %v", modes)
	}
}

func TestFileName(t *testing.T) {
	for ref, want := range map[string]string{DaemonRef: "kmesh-daemon.tar", PauseRef: "pause.tar", "x": "x.tar"} {
		if got := FileName(ref); got != want {
			t.Errorf("FileName(%q) = %q, want %q", ref, got, want)
		}
	}
}

// A relative output folder is taken from the caller's folder, not from the
// folders the go commands run in.
func TestBuildOptionsOutIsAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	o := BuildOptions{Root: "/repo", Out: "../bin/images/bin"}
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(wd), "bin", "images", "bin"); o.Out != want {
		t.Fatalf("Out = %q, want %q", o.Out, want)
	}
	o = BuildOptions{Root: "/repo"}
	if err := o.fill(); err != nil || o.Out != "/repo/bin/images/bin" {
		t.Fatalf("default Out = %q (%v)", o.Out, err)
	}
}

// Every program the build makes goes into a product image, each image's
// entrypoint is one of its own files, and the waypoint has its image.
func TestProductImages(t *testing.T) {
	b := Binaries{}
	for name := range ProductPrograms {
		b[name] = "/bin/" + name
	}
	used := map[string]bool{}
	refs := map[string]bool{}
	for _, s := range Product(b) {
		if refs[s.Ref] {
			t.Errorf("image %s listed twice", s.Ref)
		}
		refs[s.Ref] = true
		files := map[string]bool{}
		for _, f := range s.Files {
			if f.Source == "" {
				t.Errorf("%s: %s has no built program behind it", s.Ref, f.Path)
			}
			used[filepath.Base(f.Source)] = true
			files[f.Path] = true
		}
		if len(s.Entrypoint) == 0 || !files[filepath.Join("/usr/local/bin", s.Entrypoint[0])] {
			t.Errorf("%s: entrypoint %q is not a program in /usr/local/bin of the image", s.Ref, s.Entrypoint)
		}
	}
	for name := range ProductPrograms {
		if !used[name] {
			t.Errorf("%s is built but in no image", name)
		}
	}
	for _, ref := range []string{DaemonRef, InstallRef, WaypointRef} {
		if !refs[ref] {
			t.Errorf("no image %s", ref)
		}
	}
}

// Every image the manifests under install/kubernetes run is one make
// images builds, under the same name.
func TestManifestsRunBuiltImages(t *testing.T) {
	built := map[string]bool{}
	for _, s := range Product(Binaries{}) {
		built[s.Ref] = true
	}
	docs := []string{kmeshk8s.Waypoint}
	files, err := fs.Glob(kmeshk8s.Manifests, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := fs.ReadFile(kmeshk8s.Manifests, f)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	seen := 0
	for _, d := range docs {
		for _, m := range imageLine.FindAllStringSubmatch(d, -1) {
			seen++
			if !built[m[1]] {
				t.Errorf("a manifest runs image %s, which make images does not build", m[1])
			}
		}
	}
	if seen < 3 {
		t.Fatalf("found %d images in the manifests, want the daemon's, the installer's and the waypoint's", seen)
	}
}

var imageLine = regexp.MustCompile(`(?m)^\s*image:\s*(\S+)\s*$`)
