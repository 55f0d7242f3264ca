// Package bpfsys makes the few bpf(2) calls a process needs to use a loaded
// data path through its pins: open a pinned object, read and write map
// elements, ask an object's id. Nothing is loaded or probed, and it does
// not link cilium/ebpf: kmesh-cni, a process per pod, would pay about
// 0.3 ms of feature probes on its first pinned object, and cilium/ebpf's
// package initialisation on every run.
package bpfsys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrKeyNotExist is a lookup or delete of a key that is not in the map.
var ErrKeyNotExist = errors.New("key does not exist")

func bpf(cmd int, attr unsafe.Pointer, size uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
		if errno == unix.EINTR || errno == unix.EAGAIN && cmd == unix.BPF_OBJ_GET {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ObjectType is what a pinned object is.
type ObjectType int

// Object types, as bpffs reports them.
const (
	TypeMap ObjectType = iota + 1
	TypeProg
	TypeLink
)

// Object is an open file descriptor of a BPF map, program or link.
type Object struct {
	fd  int
	typ ObjectType
}

// Open opens the object pinned at path; want says what it must be. A
// missing pin is os.ErrNotExist.
func Open(path string, want ObjectType) (*Object, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, err
	}
	attr := struct {
		pathname  pointer
		bpfFD     uint32
		fileFlags uint32
	}{pathname: pointer{p: unsafe.Pointer(p)}}
	fd, err := bpf(unix.BPF_OBJ_GET, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open pin %s: %w", path, os.ErrNotExist)
		}
		return nil, fmt.Errorf("open pin %s: %w", path, err)
	}
	o := &Object{fd: int(fd)}
	// The kernel tells the kind of an fd by its anon inode's name.
	name, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", o.fd))
	switch {
	case err != nil:
		o.Close()
		return nil, fmt.Errorf("open pin %s: %w", path, err)
	case name == "anon_inode:bpf-map":
		o.typ = TypeMap
	case name == "anon_inode:bpf-prog":
		o.typ = TypeProg
	case name == "anon_inode:bpf_link":
		o.typ = TypeLink
	}
	if o.typ != want {
		o.Close()
		return nil, fmt.Errorf("pin %s is %s, not the expected kind of object", path, name)
	}
	return o, nil
}

// FD is the object's file descriptor.
func (o *Object) FD() int { return o.fd }

// Close releases the descriptor.
func (o *Object) Close() error {
	if o == nil || o.fd < 0 {
		return nil
	}
	err := unix.Close(o.fd)
	o.fd = -1
	return err
}

type mapElemAttr struct {
	mapFD uint32
	_     uint32
	key   pointer
	value pointer // or next_key
	flags uint64
}

// Lookup reads the value of key into value (both exactly the map's sizes).
func (o *Object) Lookup(key, value []byte) error {
	attr := mapElemAttr{mapFD: uint32(o.fd), key: ptr(key), value: ptr(value)}
	_, err := bpf(unix.BPF_MAP_LOOKUP_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	if errors.Is(err, unix.ENOENT) {
		return ErrKeyNotExist
	}
	return err
}

// Update flags (BPF_ANY, BPF_NOEXIST, BPF_EXIST).
const (
	UpdateAny     = unix.BPF_ANY
	UpdateNoExist = unix.BPF_NOEXIST
	UpdateExist   = unix.BPF_EXIST
)

// Update writes key's value as flags allow: UpdateAny creates or
// replaces, UpdateExist only replaces (ErrKeyNotExist otherwise).
func (o *Object) Update(key, value []byte, flags uint64) error {
	attr := mapElemAttr{mapFD: uint32(o.fd), key: ptr(key), value: ptr(value), flags: flags}
	_, err := bpf(unix.BPF_MAP_UPDATE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	if errors.Is(err, unix.ENOENT) {
		return ErrKeyNotExist
	}
	return err
}

// Delete removes key.
func (o *Object) Delete(key []byte) error {
	attr := mapElemAttr{mapFD: uint32(o.fd), key: ptr(key)}
	_, err := bpf(unix.BPF_MAP_DELETE_ELEM, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	if errors.Is(err, unix.ENOENT) {
		return ErrKeyNotExist
	}
	return err
}

// NextKey writes the key after key (the first one when key is nil) into
// next; it returns false after the last.
func (o *Object) NextKey(key, next []byte) (bool, error) {
	attr := mapElemAttr{mapFD: uint32(o.fd), key: ptr(key), value: ptr(next)}
	_, err := bpf(unix.BPF_MAP_GET_NEXT_KEY, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(key)
	runtime.KeepAlive(next)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return err == nil, err
}

// Info fills info (a struct bpf_map_info, bpf_prog_info or bpf_link_info
// prefix) for the object.
func (o *Object) Info(info []byte) error {
	attr := struct {
		bpfFD   uint32
		infoLen uint32
		info    pointer
	}{bpfFD: uint32(o.fd), infoLen: uint32(len(info)), info: ptr(info)}
	_, err := bpf(unix.BPF_OBJ_GET_INFO_BY_FD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(info)
	return err
}

// ID is the object's kernel-wide id: struct bpf_{map,prog,link}_info all
// begin with __u32 type, __u32 id.
func (o *Object) ID() (uint32, error) {
	var b [8]byte
	if err := o.Info(b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint32(b[4:]), nil
}

// pointer is a __aligned_u64 that holds a Go pointer, so the garbage
// collector and the stack copier see it (a uintptr would not keep what it
// points at in place across the call).
type pointer struct{ p unsafe.Pointer }

// The data path runs on 64-bit kernels only (its objects are bpfel, built
// for 64-bit hosts); this fails to compile where a pointer is not 8 bytes.
var _ [0]struct{} = [unsafe.Sizeof(pointer{}) - 8]struct{}{}

func ptr(b []byte) pointer {
	if len(b) == 0 {
		return pointer{}
	}
	return pointer{p: unsafe.Pointer(&b[0])}
}

// Borrow wraps an fd someone else owns; do not Close it.
func Borrow(fd int, typ ObjectType) *Object { return &Object{fd: fd, typ: typ} }

// CreateHash makes a hash map without preallocation (BPF_F_NO_PREALLOC).
func CreateHash(name string, keySize, valueSize, maxEntries uint32) (*Object, error) {
	attr := struct {
		mapType    uint32
		keySize    uint32
		valueSize  uint32
		maxEntries uint32
		mapFlags   uint32
		innerMapFD uint32
		numaNode   uint32
		mapName    [unix.BPF_OBJ_NAME_LEN]byte
	}{mapType: unix.BPF_MAP_TYPE_HASH, keySize: keySize, valueSize: valueSize, maxEntries: maxEntries, mapFlags: unix.BPF_F_NO_PREALLOC}
	copy(attr.mapName[:unix.BPF_OBJ_NAME_LEN-1], name)
	fd, err := bpf(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", name, err)
	}
	return &Object{fd: int(fd), typ: TypeMap}, nil
}

// Pin pins the object at path; a pin already there is os.ErrExist.
func (o *Object) Pin(path string) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	attr := struct {
		pathname  pointer
		bpfFD     uint32
		fileFlags uint32
	}{pathname: pointer{p: unsafe.Pointer(p)}, bpfFD: uint32(o.fd)}
	_, err = bpf(unix.BPF_OBJ_PIN, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("pin %s: %w", path, os.ErrExist)
	}
	if err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}
