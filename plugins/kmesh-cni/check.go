package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/loader"
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

// check verifies what ADD set up: the same netns, its manage entry and tc
// link when ADD enrolled it, and the daemon's record. A daemon that lost
// the pod (it was down at ADD, or restarted) is told again here: CHECK
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

	if rec.Enrolled {
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
	if rec.TCKey != "" {
		a, present, err := loader.PodTC(rec.BPFDir, rec.TCKey)
		switch {
		case err != nil:
			return checkFailed("%v", err)
		case !present:
			return checkFailed("no tc link pinned for the pod on %s", rec.HostVeth)
		case !a.Live || a.Ifindex != rec.HostIfindex:
			return checkFailed("tc link of the pod is on ifindex %d (live %v), want %s (ifindex %d)", a.Ifindex, a.Live, rec.HostVeth, rec.HostIfindex)
		}
	}

	err = r.daemon(func(ctx context.Context, cl *registry.Client) error {
		known, err := cl.Pod(ctx, rec.ContainerID)
		if err != nil || known != nil {
			return err
		}
		r.log.Info("daemon did not know the pod; registering it again")
		_, err = cl.Enroll(ctx, rec.Pod())
		return err
	})
	if err != nil {
		code := conf.ErrCheck
		if errors.Is(err, registry.ErrUnreachable) {
			code = types.ErrTryAgainLater
		}
		return types.NewError(code, "kmesh-cni CHECK: the daemon does not know the pod: "+err.Error(), "start the kmesh daemon on this node; CHECK registers the pod again once it answers")
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
