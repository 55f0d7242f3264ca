package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func cmdCheck(args *skel.CmdArgs) error {
	r, err := newRun("CHECK", args)
	if err != nil {
		return err
	}
	return r.done(r.check())
}

// check verifies what ADD set up: the same netns, the daemon's record, and
// the manage entry and tc filter of an enrolled pod. A daemon that lost the
// pod (it was down at ADD, or restarted) is told again here: CHECK
// repairs the registration and fails only when it cannot.
func (r *run) check() error {
	c, args := r.conf, r.args
	if err := c.RequirePrevResult(); err != nil {
		return err
	}
	dir, err := r.stateDir(false)
	if err != nil {
		return err
	}
	defer dir.Close()
	rec, ok, err := dir.Load(args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(conf.ErrState, err.Error(), "")
	}
	if !ok {
		return checkFailed("kmesh-cni has no record of container %s interface %s (ADD did not run, or DEL did)", args.ContainerID, args.IfName)
	}
	pl, err := inspectPod(args.Netns, "")
	if err != nil {
		return checkFailed("%v", err)
	}
	if pl.cookie != rec.Cookie {
		return checkFailed("netns %s has cookie %d, ADD enrolled %d: the sandbox's namespace was replaced", args.Netns, pl.cookie, rec.Cookie)
	}

	// The daemon's record, registering the pod again if the daemon lost
	// it. What the daemon says is the truth to check the kernel against:
	// it enrolls and releases pods when their labels change after ADD.
	var known *registry.Pod
	derr := r.daemon(func(ctx context.Context, cl *registry.Client) error {
		p, err := cl.Pod(ctx, rec.ContainerID, rec.IfName)
		if err != nil {
			return err
		}
		if p == nil {
			r.log.Info("daemon did not know the pod; registering it again")
			if _, err := cl.Enroll(ctx, podOf(rec)); err != nil {
				return err
			}
			p = podOf(rec)
		}
		known = p
		return nil
	})
	want, veth := rec.Enrolled, rec.HostVeth
	if known != nil {
		want = known.Enrolled
		// The daemon lists a row per attachment and this is this
		// one's; an older daemon keeps one per sandbox, the last one
		// added: the veth it names is this attachment's only when the
		// interface is (a pod in two networks has a filter on each).
		if known.HostVeth != "" && (known.CNIIfname == "" || known.CNIIfname == rec.IfName) {
			veth = known.HostVeth
		}
	}

	if want {
		m, err := openManage(rec.BPFDir)
		if err != nil {
			return checkFailed("%v", err)
		}
		_, present, err := m.Get(rec.Cookie)
		m.Close()
		if err != nil {
			return checkFailed("%v", err)
		}
		if !present {
			return checkFailed("netns %d of pod %s is missing from the manage map: the pod is out of the mesh", rec.Cookie, args.ContainerID)
		}
	}
	if want && veth != "" {
		a, present, err := podtc.Get(rec.BPFDir, podtc.Key(rec.ContainerID, veth))
		ifindex := rec.HostIfindex
		if veth != rec.HostVeth {
			ifindex = 0
		}
		switch {
		case err != nil:
			return checkFailed("%v", err)
		case !present:
			return checkFailed("no tc filter recorded for the pod on %s", veth)
		case !a.Live || ifindex != 0 && a.Ifindex != ifindex:
			return checkFailed("tc filter of the pod is on ifindex %d (live %v), want %s (ifindex %d)", a.Ifindex, a.Live, veth, ifindex)
		}
	}

	if derr != nil {
		code := conf.ErrCheck
		if errors.Is(derr, registry.ErrUnreachable) {
			code = types.ErrTryAgainLater
		}
		return types.NewError(code, "kmesh-cni CHECK: the daemon does not know the pod: "+derr.Error(), "start the kmesh daemon on this node; CHECK registers the pod again once it answers")
	}
	if !rec.Signaled {
		rec.Signaled = true
		if err := dir.Save(rec); err != nil {
			r.log.Warn("update state record", "error", err)
		}
	}
	return nil
}

func checkFailed(format string, a ...any) error {
	return types.NewError(conf.ErrCheck, "kmesh-cni CHECK: "+fmt.Sprintf(format, a...), "")
}
