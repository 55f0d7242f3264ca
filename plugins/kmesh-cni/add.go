package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/manage"
	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/internal/cgroupv2"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/podcgroup"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

func cmdAdd(args *skel.CmdArgs) error {
	r, err := newRun("ADD", args)
	if err != nil {
		return err
	}
	return r.done(r.add())
}

func (r *run) add() (retErr error) {
	c, args := r.conf, r.args
	// 1. Validate everything before touching anything.
	if err := c.RequirePrevResult(); err != nil {
		return err
	}
	prev := c.Prev
	pod, err := conf.ParseArgs(args.Args)
	if err != nil {
		return err
	}
	if err := checkNetns(args.Netns); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err),
			"the runtime must pass the path of the pod sandbox's network namespace")
	}

	r.connectDaemon()
	// What enrollment needs besides the pod's netns is found meanwhile;
	// for a pod that is not enrolled it is thrown away.
	prep := prepare(c.BPFDir, pod.UID)
	defer prep.close()

	// 2. Decide: Kubernetes labels, or defaultEnroll without a kubeconfig.
	decision, err := r.decide(pod)
	if err != nil {
		return err
	}
	r.step("decided")
	// An enrolled pod decided from the API was marked there (the
	// annotation operators and tools look for); an ADD that fails from
	// here on takes the mark back. A pod the daemon decided is marked by
	// the daemon.
	marked := decision.marked
	unmark := func() {
		if marked {
			if err := r.kubeHelper("unmark", pod); err != nil {
				r.log.Warn("take the annotation back", "pod", pod, "error", err)
			}
			marked = false
		}
	}
	defer func() {
		// An earlier ADD of this attachment (a runtime's retry), or
		// another attachment of the pod, enrolled it and marked it so:
		// their mark stays.
		if retErr != nil && marked && !r.enrollmentRemains() {
			unmark()
		}
	}()

	// 3. One visit to the pod netns: its cookie and its interface.
	pl, err := inspectPod(args.Netns, args.IfName)
	if err != nil {
		return types.NewError(conf.ErrEnroll, "read the pod's network namespace: "+err.Error(), "")
	}
	rec := r.newRecord(pod, prev, pl.cookie, decision)
	// The host veth of every pod: the daemon needs it to attach tc when a
	// label change enrolls the pod later.
	veth, ifindex, vethErr := hostVeth(pl, args.IfName, prev)
	rec.HostVeth, rec.HostIfindex = veth, ifindex
	r.step("inspected netns")

	dir, err := r.stateDir(false)
	if err != nil {
		return err
	}
	defer dir.Close()
	// The record of an earlier ADD of this attachment. The spec forbids a
	// second ADD without a DEL in between, but runtimes retry ADD after a
	// timeout: if this one fails, what the earlier one set up stays.
	r.prior, _, err = dir.Load(args.ContainerID, args.IfName)
	if err != nil {
		r.log.Warn("unreadable record of an earlier ADD; replacing it", "error", err)
	}
	r.cookie = pl.cookie

	// 4. Enroll in the kernel: the manage entry now, the tc filter on the
	// host veth alongside the daemon call.
	//
	// Enrollment is the netns's, not the attachment's: a pod decided out
	// whose netns another attachment of the sandbox enrolled (its ADD ran
	// before a label change) follows the netns and is enrolled too, tc on
	// its own veth. Reporting it out instead would leave an enrolled netns
	// with a veth whose inbound traffic nobody authorizes (fail-open), and
	// tell the daemon the sandbox is out, so the label change it applies
	// (SetEnrolled) would find nothing to do and the netns would stay in
	// for good. Enrolled, the daemon holds the sandbox in and its watch,
	// seeing the labels say out, releases every attachment at once.
	var tc <-chan error
	follow := !decision.Enroll && netnsEnrolled(prep.wait(), pl.cookie)
	if follow {
		rec.Reason += followsNetns
	}
	if decision.Enroll || follow {
		if tc, err = r.enroll(dir, rec, vethErr, prev, prep.wait(), follow); err != nil {
			return err
		}
	} else if err := dir.Save(rec); err != nil {
		return types.NewError(conf.ErrState, err.Error(), "")
	}
	// fail undoes ADD once the attach has finished, so nothing is attached
	// after the undo (the mark is taken back on the way out).
	var kept *cnistate.Record
	fail := func(err error) error {
		if tc != nil {
			<-tc
		}
		kept = r.undo(dir, rec)
		return err
	}

	// 5. Tell the daemon, enrolled or not, within a bounded time.
	daemonEnrolled := false
	err = r.daemon(func(ctx context.Context, cl *registry.Client) error {
		var err error
		daemonEnrolled, err = cl.Enroll(ctx, podOf(rec))
		return err
	})
	if err != nil {
		if c.Closed() && decision.Enroll {
			return fail(types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("kmesh-cni: pod %s not enrolled: %v", pod, err),
				"failurePolicy is closed, so the pod waits for the kmesh daemon and the runtime retries; start the daemon on this node or set failurePolicy to open"))
		}
		r.log.Warn("daemon not told; it reads the state directory when it is back", "error", err)
	} else {
		rec.Signaled = true
	}
	r.step("told the daemon")
	if rec.Signaled {
		// Saved while the filter is still being attached (an undo below
		// removes the record all the same).
		if err := dir.Save(rec); err != nil {
			r.log.Warn("update state record", "error", err)
		}
	}
	if tc != nil {
		if err := <-tc; err != nil {
			tc = nil
			err = fail(types.NewError(conf.ErrAttachTC, fmt.Sprintf("kmesh-cni: attach tc to host veth %s: %v", rec.HostVeth, err), ""))
			if rec.Signaled {
				// The daemon's registration is put back to what is left,
				// not released: releasing the sandbox would release the
				// netns another attachment keeps enrolled.
				_ = r.daemon(func(ctx context.Context, cl *registry.Client) error {
					if kept != nil {
						_, err := cl.Enroll(ctx, podOf(kept))
						return err
					}
					return cl.Release(ctx, rec.ContainerID, rec.Netns, rec.Cookie)
				})
			}
			return err
		}
		r.step("attached tc")
	}

	// The mark follows what happened: a pod decided from the API that ADD
	// could not enroll (no data path loaded yet) is marked only if the
	// daemon enrolled it.
	switch enrolled := rec.Enrolled || daemonEnrolled; {
	case decision.markError != "":
		r.log.Warn("annotate pod", "pod", pod, "error", decision.markError)
	case decision.viaAPI && enrolled && !marked:
		if err := r.kubeHelper("mark", pod); err != nil {
			r.log.Warn("annotate pod", "pod", pod, "error", err)
		}
	case marked && !enrolled:
		unmark()
	}
	r.log.Info("added", "pod", pod, "enrolled", rec.Enrolled, "reason", rec.Reason, "cookie", rec.Cookie,
		"hostVeth", rec.HostVeth, "daemon", rec.Signaled, "took", time.Since(r.start).Round(time.Microsecond))

	// 6. Pass the chain's result on unchanged.
	return c.PrintPrevResult(os.Stdout)
}

// decideTimeout bounds the question to the daemon, which answers from
// memory: one that does not answer this fast leaves the decision to the
// API server.
const decideTimeout = 250 * time.Millisecond

// daemonDecision is the daemon's decision for pod, if it has one.
func (r *run) daemonDecision(pod conf.Pod) (decision, bool) {
	var d *registry.Decision
	err := r.daemonWithin(decideTimeout, func(ctx context.Context, cl *registry.Client) error {
		var err error
		d, err = cl.Decide(ctx, pod.Namespace, pod.Name, pod.UID)
		return err
	})
	if err != nil || !d.Known {
		if err != nil {
			r.log.Debug("the daemon did not decide; asking the API server", "error", err)
		}
		return decision{}, false
	}
	return decision{Enroll: d.Enroll, Reason: d.Reason + " (from the daemon's watch of the API)"}, true
}

// decision is whether a pod is enrolled and why, in words an operator
// reads in the daemon's pod list.
type decision struct {
	Enroll bool
	Reason string
	// viaAPI: kmesh-cni-kube decided, from the API server; marked: it
	// annotated the pod too (markError: it could not).
	viaAPI    bool
	marked    bool
	markError string
}

// decide returns the enrollment decision. Failing to reach the API fails
// ADD under the closed policy; under open the pod starts without the mesh
// and the daemon decides when it sees the pod.
func (r *run) decide(pod conf.Pod) (decision, error) {
	c := r.conf
	if c.Kubeconfig == "" {
		return decision{Enroll: c.DefaultEnroll, Reason: fmt.Sprintf("no kubeconfig; defaultEnroll is %v", c.DefaultEnroll)}, nil
	}
	if !pod.IsSet() {
		return decision{Enroll: c.DefaultEnroll, Reason: fmt.Sprintf("CNI_ARGS names no Kubernetes pod; defaultEnroll is %v", c.DefaultEnroll)}, nil
	}
	// A kubeconfig that cannot be used is an error even when the daemon
	// would answer: it is this plugin's configuration.
	if err := r.checkKubeconfig(); err != nil {
		return decision{}, err
	}
	// The daemon watches the API: its answer spares a process, a TLS
	// handshake and two reads of the API server (~5 ms). It also marks the
	// pod once ADD registers it.
	if d, ok := r.daemonDecision(pod); ok {
		return d, nil
	}
	a, err := r.askAPI("decide", pod, true)
	if err != nil {
		a = apiAnswer{Kind: "unreachable", Err: err.Error()}
	}
	switch a.Kind {
	case "":
		return decision{Enroll: a.Enroll, Reason: a.Reason, viaAPI: true, marked: a.Marked, markError: a.MarkError}, nil
	case "config":
		return decision{}, types.NewError(types.ErrInvalidNetworkConfig, "kmesh-cni: "+a.Err, kubeconfigHint)
	case "stale":
		return decision{Reason: a.Err}, nil
	case "notfound":
		return decision{Reason: "not in the Kubernetes API: " + a.Err}, nil
	case "forbidden":
		if c.Closed() {
			return decision{}, types.NewError(types.ErrInvalidNetworkConfig,
				"kmesh-cni cannot read pods: "+a.Err, "grant kmesh-cni's service account get on pods and namespaces, and patch on pods")
		}
		return decision{Reason: "Kubernetes API refused kmesh-cni: " + a.Err}, nil
	default:
		if c.Closed() {
			return decision{}, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("kmesh-cni: Kubernetes API did not answer for pod %s: %s", pod, a.Err),
				"failurePolicy is closed: the runtime retries; check the API server's reachability from this node")
		}
		return decision{Reason: "Kubernetes API unreachable, enrollment left to the daemon: " + a.Err}, nil
	}
}

func (r *run) newRecord(pod conf.Pod, prev *conf.Prev, cookie uint64, d decision) *cnistate.Record {
	rec := &cnistate.Record{
		Network:      r.conf.Name,
		ContainerID:  r.args.ContainerID,
		IfName:       r.args.IfName,
		Netns:        r.args.Netns,
		Cookie:       cookie,
		PodName:      pod.Name,
		PodNamespace: pod.Namespace,
		PodUID:       pod.UID,
		BPFDir:       r.conf.BPFDir,
		Reason:       d.Reason,
		// The decision, kept apart from what was done: a pod ADD could
		// not enroll is enrolled by the daemon when it starts.
		WantEnrolled: d.Enroll,
		Created:      time.Now().UTC(),
	}
	for _, ip := range prev.IPs {
		rec.IPs = append(rec.IPs, ip.Addr().Unmap().String())
	}
	for _, i := range prev.Interfaces {
		rec.Interfaces = append(rec.Interfaces, cnistate.Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
	}
	return rec
}

// prepared is what enrolling a pod needs that does not depend on its
// netns: its cgroup and the pinned manage map. prepare finds them on
// another goroutine while ADD decides and visits the pod's netns, which
// takes about as long; close releases them.
type prepared struct {
	done       chan struct{}
	cgroupPath string
	cgroupID   uint64
	manage     *manage.Map
	manageErr  error
}

func prepare(bpfDir, podUID string) *prepared {
	p := &prepared{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		if podUID != "" {
			if mnt, err := cgroupv2.Mountpoint(); err == nil {
				p.cgroupPath, p.cgroupID, _ = podcgroup.Find(mnt, podUID)
			}
		}
		p.manage, p.manageErr = openManage(bpfDir)
	}()
	return p
}

func (p *prepared) wait() *prepared {
	<-p.done
	return p
}

func (p *prepared) close() {
	<-p.done
	if p.manage != nil {
		p.manage.Close()
	}
}

// followsNetns is appended to Reason when the pod was decided out but is
// enrolled with its netns, which another attachment enrolled.
const followsNetns = "; enrolled all the same: another attachment of the sandbox enrolled its netns, and the daemon applies the labels to the whole sandbox"

// netnsEnrolled reports whether the pod's netns has a manage entry: an
// earlier ADD of another attachment (or of this one), or the daemon,
// enrolled it. Without the map nothing is enrolled.
func netnsEnrolled(p *prepared, cookie uint64) bool {
	if p.manage == nil || p.manageErr != nil || cookie == 0 {
		return false
	}
	_, present, err := p.manage.Get(cookie)
	return err == nil && present
}

// enroll starts the tc attachment on the host veth (vethErr says why there
// is none), whose outcome arrives on the returned channel, and writes the
// manage entry. The record is saved first, so a
// run killed halfway leaves what DEL and GC need to undo it. On error
// nothing is left behind.
//
// follow: the pod was decided out, and is enrolled only because its netns
// is (see add). It writes no manage entry: if the entry went in between
// (the last other attachment's DEL, the daemon's release), the pod is
// left out as decided.
func (r *run) enroll(dir *cnistate.Dir, rec *cnistate.Record, vethErr error, prev *conf.Prev, p *prepared, follow bool) (<-chan error, error) {
	c := r.conf
	if vethErr != nil {
		return nil, types.NewError(conf.ErrTopology, "kmesh-cni cannot enroll the pod: "+vethErr.Error(),
			"kmesh needs a veth-based primary plugin (bridge, ptp, ...); or opt the pod out with label istio.io/dataplane-mode=none")
	}
	veth, ifindex := rec.HostVeth, rec.HostIfindex
	rec.CgroupPath, rec.CgroupID = p.cgroupPath, p.cgroupID
	r.step("found pod cgroup")

	m, err := p.manage, p.manageErr
	if errors.Is(err, errNoDatapath) {
		if c.Closed() {
			return nil, types.NewError(types.ErrTryAgainLater, "kmesh-cni: "+err.Error(),
				"failurePolicy is closed: the runtime retries until the kmesh daemon has loaded the data path")
		}
		rec.Reason += cnistate.NotEnrolledYet + err.Error()
		if err := dir.Save(rec); err != nil {
			return nil, types.NewError(conf.ErrState, err.Error(), "")
		}
		return nil, nil
	}
	if err != nil {
		return nil, types.NewError(conf.ErrEnroll, "kmesh-cni: "+err.Error(), "")
	}

	rec.Enrolled, rec.TCKey = true, podtc.Key(rec.ContainerID, veth)
	// The record and the manage entry under the refs lock: a DEL of
	// another attachment of this netns either sees this record and keeps
	// the entry, or releases it before this writes it.
	unlock, err := dir.LockRefs()
	if err != nil {
		return nil, types.NewError(conf.ErrState, err.Error(), "")
	}
	// An entry that is there already is the pod's from an earlier ADD (of
	// this attachment or another) or from the daemon, which may have
	// filled in its workload since: it is left as it is, and a failure of
	// this ADD leaves it too.
	_, present, err := m.Get(rec.Cookie)
	if follow && err == nil && !present {
		// Released since add looked: the pod stays out, as decided.
		rec.Enrolled, rec.TCKey = false, ""
		rec.Reason = strings.TrimSuffix(rec.Reason, followsNetns)
		err = dir.Save(rec)
		unlock()
		if err != nil {
			return nil, types.NewError(conf.ErrState, err.Error(), "")
		}
		return nil, nil
	}
	if err := dir.Save(rec); err != nil {
		unlock()
		return nil, types.NewError(conf.ErrState, err.Error(), "")
	}
	done := make(chan error, 1)
	go func() { done <- podtc.Attach(c.BPFDir, rec.TCKey, ifindex) }()

	if err == nil && !present {
		r.madeEntry = true
		// The consistent-hashing key from the pod's address, as the
		// daemon computes it when it enrolls a pod.
		var ip netip.Addr
		if len(prev.IPs) > 0 {
			ip = prev.IPs[0].Addr()
		}
		err = m.Enroll(rec.Cookie, manage.Enrollment{ClientID: manage.ClientIDFor(ip.Unmap())})
	}
	unlock()
	if err != nil {
		<-done
		r.undo(dir, rec)
		return nil, types.NewError(conf.ErrEnroll, "kmesh-cni: "+err.Error(), "")
	}
	r.step("wrote manage entry")
	return done, nil
}

// undo takes back what this ADD did for rec when it fails, and only that:
// a manage entry it did not write (an earlier ADD's, the daemon's), or
// one another attachment of the netns still needs, stays; so does the tc
// filter an earlier ADD of this attachment attached (the same name), and
// that ADD's record is put back. It returns the record left for the
// netns (that one, or another attachment's), nil when none is.
func (r *run) undo(dir *cnistate.Dir, rec *cnistate.Record) *cnistate.Record {
	unlock, err := dir.LockRefs()
	if err != nil {
		r.log.Error("undo: lock the state directory", "error", err)
		unlock = func() {}
	}
	defer unlock()
	others, err := dir.Sharing(rec.Cookie, rec.ContainerID, rec.IfName)
	if err != nil {
		r.log.Warn("undo: unreadable state records; counting the readable ones", "error", err)
	}
	var cookie uint64
	if rec.Enrolled && r.madeEntry && len(others) == 0 {
		cookie = rec.Cookie
	}
	tc := rec.TCKey
	if r.prior != nil && tcKey(r.prior) == tc {
		tc = ""
	}
	if cookie != 0 || tc != "" {
		if err := release(rec.BPFDir, tc, cookie); err != nil {
			r.log.Error("undo enrollment", "error", err)
		}
	}
	// Whether the netns is enrolled now, for what is left: this ADD found
	// it enrolled or enrolled it, and did not release it.
	stillEnrolled := rec.Enrolled && cookie == 0
	rec.Enrolled, rec.TCKey = false, ""
	var kept *cnistate.Record
	switch {
	case r.prior != nil:
		if err := dir.Save(r.prior); err != nil {
			r.log.Error("undo: put the earlier ADD's record back", "error", err)
		}
		kept = r.prior
	default:
		if err := dir.Remove(rec.ContainerID, rec.IfName); err != nil {
			r.log.Error("undo state record", "error", err)
		}
		if i := slices.IndexFunc(others, func(o *cnistate.Record) bool { return o.ContainerID == rec.ContainerID }); i >= 0 {
			kept = others[i]
		} else if len(others) > 0 {
			kept = others[0]
		}
	}
	if kept != nil && stillEnrolled && !kept.Enrolled {
		k := *kept
		k.Enrolled = true
		kept = &k
	}
	return kept
}

// enrollmentRemains tells whether a record other than what this failed ADD
// wrote wants the pod enrolled: an earlier ADD of the attachment, or
// another attachment of the sandbox or its netns.
func (r *run) enrollmentRemains() bool {
	dir, err := r.stateDir(false)
	if err != nil {
		return false
	}
	defer dir.Close()
	recs, _ := dir.List()
	return slices.ContainsFunc(recs, func(o *cnistate.Record) bool {
		return (o.ContainerID == r.args.ContainerID || r.cookie != 0 && o.Cookie == r.cookie) && o.WantsEnrollment()
	})
}
