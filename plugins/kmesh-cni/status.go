package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func cmdStatus(args *skel.CmdArgs) error {
	r, err := newRun("STATUS", args)
	if err != nil {
		return err
	}
	return r.done(r.status())
}

// status is ready when ADD can serve pods. Under failurePolicy closed that
// needs the data path loaded and the daemon ready; otherwise CNI error 50
// with what is missing. Under open ADD serves pods without either (it
// enrolls in the kernel, or lets the pod start for the daemon to enroll
// later), so STATUS succeeds and only logs what is missing: the spec asks
// for zero whenever ADD can be served, and a runtime marks the node's
// network not ready while STATUS fails, which would make a daemon restart
// stop the node taking pods.
func (r *run) status() error {
	err := r.ready()
	if err != nil && !r.conf.Closed() {
		r.log.Info("ADD serves pods under failurePolicy open, but the mesh is not ready", "error", err)
		return nil
	}
	return err
}

// ready tells whether the data path is loaded and the daemon says it is
// ready, as a CNI error 50 when not.
func (r *run) ready() error {
	c := r.conf
	m, err := openManage(c.BPFDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "kmesh-cni: "+err.Error(), "")
	}
	m.Close()
	var msg string
	var ready bool
	err = r.daemon(func(ctx context.Context, cl *registry.Client) error {
		st, err := cl.Status(ctx)
		if err == nil {
			ready, msg = st.Ready, st.Message
		}
		return err
	})
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "kmesh-cni: "+err.Error(), "start the kmesh daemon on this node")
	}
	if !ready {
		if msg == "" {
			msg = "no reason given"
		}
		return types.NewError(types.ErrPluginNotAvailable, "kmesh daemon is not ready: "+msg, "")
	}
	return nil
}
