// Package bpf holds the kmesh eBPF programs: the C sources in this folder and
// the objects compiled from them, embedded in Go so binaries need no clang.
//
// `make generate` rebuilds the objects with Debian's clang-19, then the Go
// side of the structs and enums they share with userspace (bpf/layout) from
// the new object's BTF; the results are committed and CI checks that they
// match the sources.
package bpf

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf -no-global-types kmesh src/kmesh.c -- -I./src/include
//go:generate go run ./internal/layoutgen -o layout/types.go kmesh_bpfel.o

import "github.com/cilium/ebpf"

// Spec returns every kmesh program and the maps they share, not yet loaded.
func Spec() (*ebpf.CollectionSpec, error) { return loadKmesh() }
