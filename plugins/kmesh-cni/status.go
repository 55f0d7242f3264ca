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

// status is ready when the data path is loaded and the daemon says it is
// ready; otherwise CNI error 50 with what is missing.
func (r *run) status() error {
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
