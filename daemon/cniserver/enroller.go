package cniserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/bpf/loader"
	"github.com/kmesh-go/kmesh/bpf/maps"
	"github.com/kmesh-go/kmesh/internal/podns"
)

// KernelEnroller enrolls pods the way the plugin does: the manage entry for
// the pod's netns cookie, and the tc program on its host-side veth.
type KernelEnroller struct {
	Manage *maps.Manage
	PinDir string
}

// Enroll writes the pod's manage entry and attaches the tc program to its
// host veth. A cookie that is already in the manage map was enrolled by
// kmesh-cni, which attaches tc itself (possibly at this very moment:
// EnrollPod runs while the plugin's attach does), or by an earlier Enroll:
// then the tc attachment is left to whoever wrote the entry.
func (k KernelEnroller) Enroll(p *cniv1.Pod) (uint64, error) {
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
	if _, present, err := k.Manage.Get(cookie); err != nil {
		return 0, err
	} else if present {
		return cookie, nil
	}
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
	if p.GetHostVeth() != "" {
		// The tc program is the pod's inbound authorization: a pod
		// enrolled without it would look meshed while its policies go
		// unenforced, so no veth is no enrollment.
		ifc, err := net.InterfaceByName(p.GetHostVeth())
		if err != nil {
			_ = k.Manage.Release(cookie)
			return 0, fmt.Errorf("pod %s/%s: host veth %q: %w (its inbound authorization cannot be attached)", p.GetNamespace(), p.GetName(), p.GetHostVeth(), err)
		}
		if err := loader.AttachPodTC(k.PinDir, loader.PodTCKey(p.GetContainerId(), p.GetHostVeth()), ifc.Index); err != nil {
			_ = k.Manage.Release(cookie)
			return 0, err
		}
	}
	return cookie, nil
}

func (k KernelEnroller) Release(p *cniv1.Pod) error {
	var errs []error
	if p.GetNetnsCookie() != 0 {
		errs = append(errs, k.Manage.Release(p.GetNetnsCookie()))
	}
	if p.GetHostVeth() != "" {
		errs = append(errs, loader.DetachPodTC(k.PinDir, loader.PodTCKey(p.GetContainerId(), p.GetHostVeth())))
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
