package main

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/internal/podns"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// checkNetns fails unless path is a network namespace.
func checkNetns(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	if st.Type != unix.NSFS_MAGIC {
		return errors.New("not a namespace file (want a bind mount of /proc/PID/ns/net)")
	}
	return nil
}

// podLink is what kmesh-cni learns inside the pod's netns, in one visit.
type podLink struct {
	cookie uint64
	// index and kind describe the pod's interface (CNI_IFNAME).
	index int
	kind  string
	// peer is IFLA_LINK: for a veth, its peer's ifindex on the node.
	peer int
}

// inspectPod reads the netns cookie and the pod interface. A missing
// interface is not an error here (kind stays empty): DEL and CHECK only
// need the cookie.
func inspectPod(nsPath, ifName string) (podLink, error) {
	var pl podLink
	err := podns.Do(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		pl.cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
		}
		if ifName == "" {
			return nil
		}
		l, err := netlink.LinkByName(ifName)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up %s: %w", ifName, err)
		}
		pl.index, pl.kind, pl.peer = l.Attrs().Index, l.Type(), l.Attrs().ParentIndex
		return nil
	})
	if err != nil {
		return podLink{}, fmt.Errorf("inspect netns %s: %w", nsPath, err)
	}
	return pl, nil
}

// errTopology means the pod's interface has no veth peer on the node.
var errTopology = errors.New("no host-side veth")

// hostVeth finds the pod interface's veth peer in this (the node's) netns.
// The peer index from inside the pod is unique on the node; the host link
// must point back at the pod interface, and when prevResult lists
// host-side interfaces (no sandbox) it must be one of them.
func hostVeth(pl podLink, ifName string, prev *conf.Prev) (string, int, error) {
	if pl.kind == "" {
		return "", 0, fmt.Errorf("%w: the pod has no interface %s", errTopology, ifName)
	}
	if pl.kind != "veth" {
		return "", 0, fmt.Errorf("%w: pod interface %s is a %s, not a veth", errTopology, ifName, pl.kind)
	}
	var hostNames []string
	for _, i := range prev.Interfaces {
		if i.Sandbox == "" {
			hostNames = append(hostNames, i.Name)
		}
	}
	try := func(l netlink.Link, err error) bool {
		return err == nil && l.Type() == "veth" && l.Attrs().ParentIndex == pl.index &&
			(len(hostNames) == 0 || slices.Contains(hostNames, l.Attrs().Name))
	}
	if pl.peer > 0 {
		if l, err := netlink.LinkByIndex(pl.peer); try(l, err) {
			return l.Attrs().Name, l.Attrs().Index, nil
		}
	}
	// No usable peer index: look at the host interfaces the chain reported.
	for _, name := range hostNames {
		if l, err := netlink.LinkByName(name); try(l, err) {
			return l.Attrs().Name, l.Attrs().Index, nil
		}
	}
	return "", 0, fmt.Errorf("%w: the veth peer of %s (ifindex %d on the node) is not in kmesh-cni's network namespace or not among prevResult's host interfaces %v", errTopology, ifName, pl.peer, hostNames)
}

// detachTC removes an attachment's tc filter and its record, if any.
func detachTC(bpfDir, key string) error {
	if err := podtc.Detach(bpfDir, key); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
