// Package images builds the project's container images from static binaries
// with go-containerregistry: no Docker, no registry. Each image is one layer
// whose tar lists its entries in path order with fixed owners, modes and
// times, and a config with a fixed creation time, so the same binaries give
// the same digest on every machine. Images are written as docker-archive
// tarballs (one image each) that a node loads with
// `ctr -n k8s.io images import`.
//
// It lives in the tests module because go-containerregistry (and its
// dependencies) has no place in the product's go.mod: the product ships
// binaries, and images are how this repository's tests and users package
// them.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Epoch is the time every image and every file in it carries: a fixed one,
// so a rebuild of the same sources gives the same digest.
var Epoch = time.Unix(0, 0).UTC()

// File is one file of an image.
type File struct {
	// Path inside the image, absolute ("/usr/local/bin/kmesh-daemon").
	Path string
	// Source is the file on this machine to copy; Data is used when it is
	// empty.
	Source string
	Data   []byte
	// Mode is the permission bits; 0 means 0755 (these are programs).
	Mode os.FileMode
}

// Spec describes one image.
type Spec struct {
	// Ref is the name a node knows it by, "kmesh-go/kmesh-daemon:latest";
	// the manifests under install/kubernetes name the same.
	Ref        string
	Files      []File
	Entrypoint []string
	Cmd        []string
	// Env adds to PATH=/usr/local/bin:/usr/bin:/bin.
	Env []string
}

// Image builds the image a Spec describes.
func Image(s Spec) (v1.Image, error) {
	layerTar, err := layer(s.Files)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Ref, err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: l,
		History: v1.History{
			Created:   v1.Time{Time: Epoch},
			CreatedBy: "kmesh-go tests/images",
			Comment:   "static binaries",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Created = v1.Time{Time: Epoch}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Cmd
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, s.Env...)
	cf.Config.WorkingDir = "/"
	return mutate.ConfigFile(img, cf)
}

// layer is the tar of files, with every parent directory and /tmp, entries
// in path order, owned by root, stamped with Epoch.
func layer(files []File) ([]byte, error) {
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	byPath := map[string]entry{}
	addDir := func(p string, mode int64) {
		for d := p; d != "." && d != "/" && d != ""; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}}
			}
		}
		if mode != 0 {
			e := byPath[p]
			e.hdr.Mode = mode
			byPath[p] = e
		}
	}
	addDir("tmp", 0o1777)
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q must be absolute and clean", f.Path)
		}
		p := strings.TrimPrefix(f.Path, "/")
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("%s given twice", f.Path)
		}
		data := f.Data
		if f.Source != "" {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return nil, err
			}
		}
		mode := int64(f.Mode.Perm())
		if mode == 0 {
			mode = 0o755
		}
		addDir(path.Dir(p), 0)
		byPath[p] = entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data))}, data: data}
	}
	names := make([]string, 0, len(byPath))
	for p := range byPath {
		names = append(names, p)
	}
	slices.Sort(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		e := byPath[p]
		e.hdr.ModTime = Epoch
		e.hdr.Format = tar.FormatPAX
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Written is one image tarball on disk.
type Written struct {
	Ref string
	// Digest is the image's manifest digest; ID its config digest, which
	// is what `crictl images` lists as IMAGE ID.
	Digest, ID string
	Path       string
	Size       int64
}

// WriteTarball builds s and writes it as a docker-archive tarball at file.
func WriteTarball(file string, s Spec) (Written, error) {
	img, err := Image(s)
	if err != nil {
		return Written{}, err
	}
	tag, err := name.NewTag(s.Ref)
	if err != nil {
		return Written{}, fmt.Errorf("image name %q: %w", s.Ref, err)
	}
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return Written{}, fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return Written{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return Written{}, err
	}
	id, err := img.ConfigName()
	if err != nil {
		return Written{}, err
	}
	st, err := os.Stat(file)
	if err != nil {
		return Written{}, err
	}
	return Written{Ref: s.Ref, Digest: d.String(), ID: id.String(), Path: file, Size: st.Size()}, nil
}

// FileName is the tarball name for an image reference:
// "kmesh-go/kmesh-daemon:latest" -> "kmesh-daemon.tar".
func FileName(ref string) string {
	base := ref
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	base, _, _ = strings.Cut(base, ":")
	return base + ".tar"
}
