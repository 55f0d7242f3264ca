package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func cmdGC(args *skel.CmdArgs) error {
	r, err := newRun("GC", args)
	if err != nil {
		return err
	}
	return r.done(r.gc())
}

// gc removes the enrollment of every attachment of this network that is
// not in cni.dev/valid-attachments, then tc attachments whose filter or interface is gone
// and that no record owns. It removes as much as it can and reports the
// rest.
func (r *run) gc() error {
	c := r.conf
	valid := map[types.GCAttachment]bool{}
	for _, a := range c.ValidAttachments {
		valid[a] = true
	}
	// Exclusive: no ADD is halfway through while GC decides what is stale.
	dir, err := r.stateDir(true)
	if err != nil {
		return err
	}
	defer dir.Close()

	recs, err := dir.List()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	owned := map[string]bool{}
	var stale []*cnistate.Record
	for _, rec := range recs {
		owned[tcKey(rec)] = true
		if rec.Network != c.Name || valid[types.GCAttachment{ContainerID: rec.ContainerID, IfName: rec.IfName}] {
			continue
		}
		stale = append(stale, rec)
	}
	var cl *registry.Client
	if len(stale) > 0 {
		if cl, err = registry.Dial(c.DaemonSocket); err != nil {
			cl = nil
		}
	}
	defer func() {
		if cl != nil {
			cl.Close()
		}
	}()
	for _, rec := range stale {
		if err := release(rec.BPFDir, tcKey(rec), rec.Cookie); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", rec.ContainerID, err))
			continue
		}
		if cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), daemonTimeout)
			if err := cl.Release(ctx, rec.ContainerID, rec.Netns, rec.Cookie); err != nil {
				r.log.Warn("daemon not told of a stale pod", "container", rec.ContainerID, "error", err)
				if errors.Is(err, registry.ErrUnreachable) {
					cl.Close()
					cl = nil // do not wait for it again
				}
			}
			cancel()
		}
		if err := dir.Remove(rec.ContainerID, rec.IfName); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Info("removed stale attachment", "container", rec.ContainerID, "ifname", rec.IfName, "cookie", rec.Cookie)
	}

	// Attachments left by runs that lost their record, whose filter or
	// interface is gone.
	keys, err := podtc.Keys(c.BPFDir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, key := range keys {
		if owned[key] {
			continue
		}
		a, ok, err := podtc.Get(c.BPFDir, key)
		if err != nil || !ok || a.Live {
			continue
		}
		if err := detachTC(c.BPFDir, key); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(conf.ErrGC, "kmesh-cni GC could not remove everything: "+err.Error(), "GC runs again later; the rest was removed")
	}
	return nil
}
