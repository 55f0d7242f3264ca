package podtc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsID names a network namespace by its nsfs inode, which is what a
// record can keep: an ifindex means something only inside its namespace.
type netnsID struct{ Dev, Ino uint64 }

var (
	errNetnsNotFound = errors.New("network namespace not reachable from this process")
	errLinkGone      = errors.New("interface gone")
)

// currentNetns is the namespace of the calling thread.
func currentNetns() (netnsID, error) {
	return statNetns("/proc/thread-self/ns/net")
}

func statNetns(path string) (netnsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return netnsID{}, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return netnsID{Dev: st.Dev, Ino: st.Ino}, nil
}

// findNetns looks for a path to the namespace id: the init process's, the
// named ones (ip netns, CNI runtimes' bind mounts), then every process's.
// Only for processes that did not attach the filter themselves (a daemon
// restart, GC, CHECK): on a node they all share the host's namespace and
// never get here.
func findNetns(id netnsID) (string, error) {
	match := func(p string) bool {
		got, err := statNetns(p)
		return err == nil && got == id
	}
	if p := "/proc/1/ns/net"; match(p) {
		return p, nil
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if p := filepath.Join(dir, e.Name()); match(p) {
				return p, nil
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if c := e.Name()[0]; c < '0' || c > '9' {
			continue
		}
		if p := filepath.Join("/proc", e.Name(), "ns/net"); match(p) {
			return p, nil
		}
	}
	return "", errNetnsNotFound
}

// tcConn is a netlink route socket in one network namespace, for kmesh's
// filter on host veths there.
type tcConn struct {
	ns  netns.NsHandle // netns.None(): the calling thread's
	h   *netlink.Handle
	raw *nl.NetlinkSocket // for replace-only requests, made when needed
}

// dialTC opens a netlink socket in the namespace id, entering nothing
// when it is the caller's own.
func dialTC(id netnsID) (*tcConn, error) {
	c := &tcConn{ns: netns.None()}
	if cur, err := currentNetns(); err != nil || cur != id {
		path, err := findNetns(id)
		if err != nil {
			return nil, err
		}
		if c.ns, err = netns.GetFromPath(path); err != nil {
			return nil, fmt.Errorf("%w: open %s: %v", errNetnsNotFound, path, err)
		}
		// The path may have been re-bound between the lookup and the open.
		var st unix.Stat_t
		if err := unix.Fstat(int(c.ns), &st); err != nil || (netnsID{st.Dev, st.Ino}) != id {
			c.ns.Close()
			return nil, errNetnsNotFound
		}
	}
	h, err := netlink.NewHandleAt(c.ns, unix.NETLINK_ROUTE)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	c.h = h
	return c, nil
}

func (c *tcConn) close() {
	if c.h != nil {
		c.h.Close()
	}
	if c.raw != nil {
		c.raw.Close()
	}
	if c.ns.IsOpen() {
		c.ns.Close()
	}
}

// linkName returns the name of interface ifindex, errLinkGone if there is
// none.
func (c *tcConn) linkName(ifindex int) (string, error) {
	if !c.ns.IsOpen() {
		// The calling thread's namespace, where kmesh-cni attaches on
		// every ADD: one ioctl, no netlink answer to read.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq("")
		if err != nil {
			return "", err
		}
		ifr.SetUint32(uint32(ifindex))
		err = unix.IoctlIfreq(fd, unix.SIOCGIFNAME, ifr)
		if errors.Is(err, unix.ENODEV) {
			return "", errLinkGone
		}
		if err != nil {
			return "", fmt.Errorf("SIOCGIFNAME %d: %w", ifindex, err)
		}
		return ifr.Name(), nil
	}
	l, err := c.h.LinkByIndex(ifindex)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return "", errLinkGone
	}
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

// sameLink fails with errLinkGone unless ifindex is still the interface
// called name: an index can be reused by a new interface.
func (c *tcConn) sameLink(ifindex int, name string) error {
	got, err := c.linkName(ifindex)
	if err != nil {
		return err
	}
	if got != name {
		return errLinkGone
	}
	return nil
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// podFilter is kmesh's filter running the program behind progFD (-1: no
// program, for a delete).
func podFilter(ifindex, progFD int) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    handle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  priority,
		},
		Fd:           progFD,
		Name:         Prog,
		DirectAction: true,
	}
}

// attach makes sure the interface has a clsact qdisc (one that is there
// already, ours or another tool's, is used as it is) and creates or
// replaces kmesh's filter on its egress.
func (c *tcConn) attach(ifindex, progFD int) error {
	if err := c.h.QdiscAdd(clsact(ifindex)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	if err := c.h.FilterReplace(podFilter(ifindex, progFD)); err != nil {
		return fmt.Errorf("add cls_bpf filter: %w", err)
	}
	return nil
}

// replace points kmesh's existing filter on interface ifindex (still
// called name) at the program behind progFD. It never creates one: a filter DEL removed
// meanwhile stays removed (os.ErrNotExist).
func (c *tcConn) replace(ifindex int, name string, progFD int) error {
	if err := c.sameLink(ifindex, name); err != nil {
		return err
	}
	if c.raw == nil {
		s, err := nl.GetNetlinkSocketAt(c.ns, netns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		c.raw = s
	}
	// RTM_NEWTFILTER without NLM_F_CREATE: change the filter if it is
	// there, ENOENT (or EINVAL without a clsact qdisc) if not.
	req := nl.NewNetlinkRequest(unix.RTM_NEWTFILTER, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: c.raw}}
	req.AddData(&nl.TcMsg{
		Family:  nl.FAMILY_ALL,
		Ifindex: int32(ifindex),
		Handle:  handle,
		Parent:  netlink.HANDLE_MIN_EGRESS,
		Info:    netlink.MakeHandle(priority, nl.Swap16(unix.ETH_P_ALL)),
	})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("bpf")))
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	opts.AddRtAttr(nl.TCA_BPF_FD, nl.Uint32Attr(uint32(progFD)))
	opts.AddRtAttr(nl.TCA_BPF_NAME, nl.ZeroTerminated(Prog))
	opts.AddRtAttr(nl.TCA_BPF_FLAGS, nl.Uint32Attr(nl.TCA_BPF_FLAG_ACT_DIRECT))
	req.AddData(opts)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		return os.ErrNotExist
	}
	return err
}

// present reports whether kmesh's filter is on the egress of interface
// ifindex (still called name).
func (c *tcConn) present(ifindex int, name string) (bool, error) {
	if err := c.sameLink(ifindex, name); err != nil {
		return false, err
	}
	fs, err := c.h.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		// No clsact qdisc: no filter.
		return false, nil
	}
	for _, f := range fs {
		a := f.Attrs()
		if _, ok := f.(*netlink.BpfFilter); ok && a.Priority == priority && a.Handle == handle {
			return true, nil
		}
	}
	return false, nil
}

// detach removes kmesh's filter from interface ifindex (still called
// name), if it is there, and nothing else.
func (c *tcConn) detach(ifindex int, name string) error {
	ok, err := c.present(ifindex, name)
	if err != nil || !ok {
		return err
	}
	if err := c.h.FilterDel(podFilter(ifindex, -1)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete cls_bpf filter: %w", err)
	}
	return nil
}
