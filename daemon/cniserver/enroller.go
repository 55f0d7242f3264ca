package cniserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
)

// KernelEnroller enrolls pods the way the plugin does: the manage entry for
// the pod's netns cookie, and the tc program on the host-side veth of each
// of its attachments.
type KernelEnroller struct {
	Manage *maps.Manage
	PinDir string
}

// Enroll writes the sandbox's manage entry and attaches the tc program to
// the host veth of each of its attachments (atts: one record per CNI
// interface, all in one netns). The tc program is the pod's inbound
// authorization and sits on each veth: traffic that arrives on a veth
// without it is not authorized at all.
//
// A cookie already in the manage map keeps its entry (kmesh-cni, or an
// earlier Enroll, wrote it with the workload filled in), and only the
// attachments with no live filter get one: Attach of a key that is there
// replaces its filter in place, so this cannot undo the plugin's. The
// registry does not pass the attachment whose ADD is running (see Add).
func (k KernelEnroller) Enroll(atts []*cniv1.Pod) (uint64, error) {
	if len(atts) == 0 {
		return 0, errors.New("no attachment to enroll")
	}
	p := atts[0]
	cookie := p.GetNetnsCookie()
	if p.GetNetnsPath() != "" {
		if _, err := os.Stat(p.GetNetnsPath()); err == nil {
			c, err := podns.Cookie(p.GetNetnsPath())
			if err != nil {
				return 0, err
			}
			cookie = c
		}
	}
	if cookie == 0 {
		return 0, fmt.Errorf("pod %s/%s: netns %q is gone and no cookie is known", p.GetNamespace(), p.GetName(), p.GetNetnsPath())
	}
	_, present, err := k.Manage.Get(cookie)
	if err != nil {
		return 0, err
	}
	if !present {
		var ip netip.Addr
		if len(p.GetIps()) > 0 {
			if pr, err := netip.ParsePrefix(p.GetIps()[0]); err == nil {
				ip = pr.Addr()
			} else if a, err := netip.ParseAddr(p.GetIps()[0]); err == nil {
				ip = a
			}
		}
		if err := k.Manage.Enroll(cookie, maps.Enrollment{ClientID: maps.ClientIDFor(ip)}); err != nil {
			return 0, err
		}
	}
	// undo takes back what this call did, so a failure leaves the pod as
	// it was: enrolled without a veth's filter, its inbound policies would
	// go unenforced on that veth.
	var attached []string
	undo := func() {
		for _, key := range attached {
			_ = loader.DetachPodTC(k.PinDir, key)
		}
		if !present {
			_ = k.Manage.Release(cookie)
		}
	}
	withVeth, gone := 0, 0
	for _, a := range atts {
		if a.GetHostVeth() == "" {
			continue
		}
		withVeth++
		key := loader.PodTCKey(a.GetContainerId(), a.GetHostVeth())
		if present {
			if cur, ok, err := loader.PodTC(k.PinDir, key); err == nil && ok && cur.Live {
				continue
			}
		}
		ifc, err := net.InterfaceByName(a.GetHostVeth())
		if err != nil {
			if attachmentGone(a) {
				// Its DEL ran (the plugin tells the daemon of a sandbox's
				// last attachment only): no traffic can come that way.
				gone++
				continue
			}
			undo()
			return 0, fmt.Errorf("pod %s/%s: host veth %q: %w (its inbound authorization cannot be attached)", a.GetNamespace(), a.GetName(), a.GetHostVeth(), err)
		}
		if err := loader.AttachPodTC(k.PinDir, key, ifc.Index); err != nil {
			undo()
			return 0, err
		}
		attached = append(attached, key)
	}
	if withVeth > 0 && gone == withVeth {
		undo()
		return 0, fmt.Errorf("pod %s/%s: none of its interfaces is left in netns %q", p.GetNamespace(), p.GetName(), p.GetNetnsPath())
	}
	return cookie, nil
}

// attachmentGone reports whether the pod-side interface of an attachment
// is no longer in the pod's netns: a veth pair goes as a whole, so its host
// end is gone for good, not misnamed. Without the name or the netns, that
// cannot be told and the attachment counts as there.
func attachmentGone(a *cniv1.Pod) bool {
	if a.GetCniIfname() == "" || a.GetNetnsPath() == "" {
		return false
	}
	var missing bool
	err := podns.Do(a.GetNetnsPath(), func() error {
		// The list, not InterfaceByName: that one's "no such interface"
		// cannot be told from a failure to read the table.
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		missing = !slices.ContainsFunc(ifs, func(i net.Interface) bool { return i.Name == a.GetCniIfname() })
		return nil
	})
	return err == nil && missing
}

// Release takes the sandbox's netns out of the data path and the tc
// program off every attachment's host veth.
func (k KernelEnroller) Release(atts []*cniv1.Pod) error {
	var errs []error
	released := map[uint64]bool{}
	for _, p := range atts {
		if c := p.GetNetnsCookie(); c != 0 && !released[c] {
			released[c] = true
			errs = append(errs, k.Manage.Release(c))
		}
		if p.GetHostVeth() != "" {
			errs = append(errs, loader.DetachPodTC(k.PinDir, loader.PodTCKey(p.GetContainerId(), p.GetHostVeth())))
		}
	}
	return errors.Join(errs...)
}

func (k KernelEnroller) Enrolled(cookie uint64) (bool, error) {
	_, ok, err := k.Manage.Get(cookie)
	return ok, err
}

func (k KernelEnroller) List() (map[uint64]bool, error) {
	all, err := k.Manage.List()
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]bool, len(all))
	for c := range all {
		out[c] = true
	}
	return out, nil
}
