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
	// left counts the recorded attachments of each netns (every network's:
	// a pod's other network is no less an attachment of its netns). A
	// stale attachment releases its netns only when it is the last.
	left := map[uint64]int{}
	var stale []*cnistate.Record
	for _, rec := range recs {
		owned[tcKey(rec)] = true
		if rec.Cookie != 0 {
			left[rec.Cookie]++
		}
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
		cookie := rec.Cookie
		if left[rec.Cookie]--; left[rec.Cookie] > 0 {
			cookie = 0
		}
		if err := release(rec.BPFDir, tcKey(rec), cookie); err != nil {
			left[rec.Cookie]++ // its record stays
			errs = append(errs, fmt.Errorf("container %s: %w", rec.ContainerID, err))
			continue
		}
		// As in DEL: the daemon's sandbox goes with its last attachment.
		if cl != nil && (cookie != 0 || rec.Cookie == 0) {
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
