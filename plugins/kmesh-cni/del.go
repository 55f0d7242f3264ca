package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func cmdDel(args *skel.CmdArgs) error {
	r, err := newRun("DEL", args)
	if err != nil {
		return err
	}
	return r.done(r.del())
}

// del undoes ADD, best effort: a missing record, netns, map entry, link or
// daemon is not an error. It fails only when the kernel refuses to remove
// something that is there, and then keeps the record so a retry can.
func (r *run) del() error {
	c, args := r.conf, r.args
	dir, err := r.stateDir(false)
	if err != nil {
		return err
	}
	defer dir.Close()

	rec, ok, err := dir.Load(args.ContainerID, args.IfName)
	if err != nil {
		r.log.Warn("unreadable state record; cleaning up from the netns", "error", err)
	}
	if !ok {
		// No record (ADD failed early, or the state was lost): undo what
		// can be found from the attachment itself.
		rec = &cnistate.Record{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, BPFDir: c.BPFDir}
	}
	rec.TCKey = tcKey(rec)
	if (rec.Cookie == 0 || rec.TCKey == "") && args.Netns != "" {
		// Also when ADD did not enroll: the daemon may have since, and
		// its tc attachment carries the same name.
		if pl, err := inspectPod(args.Netns, args.IfName); err == nil {
			if rec.Cookie == 0 {
				rec.Cookie = pl.cookie
			}
			if veth, _, err := hostVeth(pl, args.IfName, &conf.Prev{}); err == nil && rec.TCKey == "" {
				rec.TCKey = podtc.Key(args.ContainerID, veth)
			}
		}
	}
	// The cookie is released even when ADD did not enroll: the daemon may
	// have enrolled the pod since. Cookies are never reused, so this
	// cannot touch another pod. But the netns is the pod's, not this
	// attachment's: while another attachment of it is recorded (the pod
	// is in two networks), only this attachment's tc filter goes and the
	// netns stays in the mesh. The count and the release are one step
	// under the refs lock, so two DELs of a pod's two attachments cannot
	// each leave the entry to the other.
	unlock, err := dir.LockRefs()
	if err != nil {
		return types.NewError(conf.ErrState, err.Error(), "")
	}
	others, err := dir.Sharing(rec.Cookie, rec.ContainerID, rec.IfName)
	if err != nil {
		r.log.Warn("unreadable state records; counting the readable ones", "error", err)
	}
	cookie := rec.Cookie
	if len(others) > 0 {
		cookie = 0
	}
	if err := release(rec.BPFDir, rec.TCKey, cookie); err != nil {
		unlock()
		return types.NewError(conf.ErrEnroll, "kmesh-cni DEL: "+err.Error(), "the runtime retries DEL; the state record is kept until it succeeds")
	}
	err = dir.Remove(rec.ContainerID, rec.IfName)
	unlock()
	if err != nil {
		return types.NewError(conf.ErrState, err.Error(), "")
	}
	// The daemon registers a sandbox, not an attachment, and releasing it
	// releases its netns: it is told only when the last one goes.
	if len(others) > 0 {
		r.log.Info("deleted; the netns stays enrolled for its other attachments", "cookie", rec.Cookie, "hadRecord", ok,
			"others", len(others))
		return nil
	}
	if err := r.daemon(func(ctx context.Context, cl *registry.Client) error {
		return cl.Release(ctx, rec.ContainerID, rec.Netns, rec.Cookie)
	}); err != nil {
		r.log.Warn("daemon not told; it reconciles with the state directory when it starts", "error", err)
	}
	r.log.Info("deleted", "cookie", rec.Cookie, "hadRecord", ok)
	return nil
}
