package cniserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/internal/cnistate"
)

// PluginPod is one of kmesh-cni's records as the daemon adopts it.
type PluginPod struct {
	*cniv1.Pod
	// WantsEnrollment: ADD decided to enroll the pod; Pod.Enrolled says
	// whether it could (not while no data path was pinned).
	WantsEnrollment bool
}

// PluginPods reads kmesh-cni's attachment records in stateDir (the
// plugin's conf field stateDir) and returns them as pods, skipping those
// written for another data path than the one pinned at pinDir. complete
// is false when the directory does not exist: then the records cannot
// tell which pods are gone. Unreadable records are reported in err; the
// others are returned all the same.
func PluginPods(stateDir, pinDir string) (pods []PluginPod, complete bool, err error) {
	if _, serr := os.Stat(stateDir); errors.Is(serr, os.ErrNotExist) {
		return nil, false, nil
	}
	recs, err := cnistate.Read(stateDir)
	if err != nil && len(recs) == 0 {
		return nil, false, fmt.Errorf("read kmesh-cni state %s: %w", stateDir, err)
	}
	for _, r := range recs {
		if r.BPFDir != "" && filepath.Clean(r.BPFDir) != filepath.Clean(pinDir) {
			continue
		}
		pods = append(pods, PluginPod{Pod: PodOf(r), WantsEnrollment: r.WantsEnrollment()})
	}
	if err != nil {
		// Some records are corrupt: what they described cannot be told
		// apart from what is gone, so nothing is dropped.
		return pods, false, fmt.Errorf("read kmesh-cni state %s: %w", stateDir, err)
	}
	return pods, true, nil
}

// PodOf is a plugin record as the daemon's API describes a pod.
func PodOf(r *cnistate.Record) *cniv1.Pod {
	p := &cniv1.Pod{
		Name:        r.PodName,
		Namespace:   r.PodNamespace,
		Uid:         r.PodUID,
		ContainerId: r.ContainerID,
		NetnsPath:   r.Netns,
		NetnsCookie: r.Cookie,
		Ips:         r.IPs,
		HostVeth:    r.HostVeth,
		Enrolled:    r.Enrolled,
		Reason:      r.Reason,
		CgroupPath:  r.CgroupPath,
		CgroupId:    r.CgroupID,
		CniIfname:   r.IfName,
	}
	for _, i := range r.Interfaces {
		p.Interfaces = append(p.Interfaces, &cniv1.Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
	}
	return p
}

// Adoption says what Adopt changed.
type Adoption struct {
	// Added are pods the plugin set up while the daemon was away.
	Added []string
	// Enrolled are those of them the daemon enrolled: ADD decided to
	// enroll them but found no data path (pods started before the
	// daemon, or after a reboot emptied bpffs).
	Enrolled []string
	// Dropped are pods whose DEL ran while the daemon was away.
	Dropped []string
	// Failed are the pods it could not enroll, with why (their records
	// say so too).
	Failed map[string]error
}

// Adopt takes the plugin's records (PluginPods, one per attachment) as the
// node's pods when the daemon starts, so it knows what was added and
// deleted while it was away even if the plugin could not tell it:
//   - a sandbox the registry does not know is registered as the plugin
//     left it, enrolled only if its cookie is still in the manage map (the
//     plugin enrolled it, or its DEL undid that), and enrolled whenever it
//     is (a daemon enrolled it after ADD and its file lost that);
//   - a sandbox ADD decided to enroll but could not, for want of a data
//     path, is enrolled here (manage entry and a tc filter on the host veth
//     of every attachment, as the plugin would have): nobody else would,
//     when no Kubernetes watch decides again;
//   - a sandbox the registry knows keeps the registry's state: the
//     daemon's later decisions (labels changed after ADD) win over ADD's;
//     its attachments follow the records (when complete, one without a
//     record had its DEL; one only the records name is added, and given
//     the filter when the sandbox is enrolled);
//   - an anonymous record (an enrolled cookie nobody had named) gives way
//     to the plugin's record of that cookie;
//   - when complete, a registered pod with no record whose cookie is not
//     in the manage map is dropped: its DEL ran while the daemon was away.
//
// The daemon calls it before it serves the plugin, so no EnrollPod or
// ReleasePod interleaves.
func (r *Registry) Adopt(plugin []PluginPod, complete bool) (Adoption, error) {
	cookies, err := r.enroller.List()
	if err != nil {
		return Adoption{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var a Adoption
	// The records by sandbox, in the order read.
	var order []string
	groups := map[string][]PluginPod{}
	for _, pp := range plugin {
		if pp.Pod.GetContainerId() == "" {
			continue
		}
		id := pp.Pod.ContainerId
		if _, ok := groups[id]; !ok {
			order = append(order, id)
		}
		groups[id] = append(groups[id], pp)
	}
	changed := false
	for _, id := range order {
		group := groups[id]
		if sb, ok := r.pods[id]; ok {
			if r.adoptAttachments(sb, group, complete, cookies, &a) {
				changed = true
			}
			continue
		}
		sb := &sandbox{}
		wants := false
		for _, pp := range group {
			sb.put(clone(pp.Pod))
			wants = wants || pp.WantsEnrollment
		}
		p := sb.latest()
		anyEnrolled := slices.ContainsFunc(sb.atts, func(q *cniv1.Pod) bool { return q.Enrolled })
		switch {
		case anyEnrolled && !cookies[p.NetnsCookie]:
			for _, q := range sb.atts {
				q.Enrolled = false
				q.Reason = "not in the manage map when the daemon started (was: " + q.Reason + ")"
			}
		case !anyEnrolled && p.NetnsCookie != 0 && cookies[p.NetnsCookie]:
			// ADD left it out and a daemon enrolled it since (its label
			// came later), but the registry's file lost that: the manage
			// map says what holds, and a later release must undo it.
			for _, q := range sb.atts {
				q.Enrolled = true
				q.Reason = "in the manage map when the daemon started (enrolled after ADD, which said: " + q.Reason + ")"
			}
		case !anyEnrolled && wants:
			if err := r.enrollAdopted(sb); err != nil {
				a.Failed = setErr(a.Failed, id, err)
				for _, q := range sb.atts {
					q.Reason += "; the daemon could not enroll it at start: " + err.Error()
				}
			} else {
				a.Enrolled = append(a.Enrolled, id)
			}
		case anyEnrolled:
			// The netns is enrolled (the manage map says so): an
			// attachment whose ADD said otherwise found it so. Such an
			// ADD ran alongside the one that enrolled it (the daemon
			// was away), so its veth has no filter: it gets one, or
			// what arrives on it enters an enrolled netns unauthorized.
			if slices.ContainsFunc(sb.atts, func(q *cniv1.Pod) bool { return !q.Enrolled }) {
				if _, err := r.enroller.Enroll(sb.clones()); err != nil {
					a.Failed = setErr(a.Failed, id, err)
				}
			}
			sb.setState(true, p.Reason, 0)
		}
		for oid, old := range r.pods {
			if c := old.latest().NetnsCookie; isAnonymous(oid) && c != 0 && c == p.NetnsCookie {
				delete(r.pods, oid)
			}
		}
		r.pods[id] = sb
		a.Added = append(a.Added, id)
	}
	if complete {
		for id, sb := range r.pods {
			if c := sb.latest().NetnsCookie; groups[id] != nil || c != 0 && cookies[c] {
				continue
			}
			delete(r.pods, id)
			a.Dropped = append(a.Dropped, id)
		}
	}
	if len(a.Added) == 0 && len(a.Dropped) == 0 && !changed {
		return a, nil
	}
	return a, r.saveLocked()
}

// adoptAttachments brings the attachments of a sandbox the registry knows
// in line with the plugin's records of it, keeping the registry's state.
// It reports whether it changed anything.
func (r *Registry) adoptAttachments(sb *sandbox, group []PluginPod, complete bool, cookies map[uint64]bool, a *Adoption) bool {
	cur := sb.latest()
	if c := group[0].Pod.NetnsCookie; c != 0 && cur.NetnsCookie != 0 && c != cur.NetnsCookie {
		return false // another netns: the registry's newer report wins
	}
	recorded := map[string]bool{}
	var added []*cniv1.Pod
	for _, pp := range group {
		recorded[pp.Pod.CniIfname] = true
		if slices.ContainsFunc(sb.atts, func(q *cniv1.Pod) bool { return q.CniIfname == pp.Pod.CniIfname }) {
			continue
		}
		q := clone(pp.Pod)
		q.Enrolled, q.Reason = cur.Enrolled, cur.Reason
		if q.NetnsCookie == 0 {
			q.NetnsCookie = cur.NetnsCookie
		}
		added = append(added, q)
	}
	before := len(sb.atts)
	if complete {
		// An attachment with no record had its DEL while the daemon was
		// away (the plugin tells it of a sandbox's last one only). A
		// record of an older daemon names no interface: it is kept.
		sb.atts = slices.DeleteFunc(sb.atts, func(q *cniv1.Pod) bool { return q.CniIfname != "" && !recorded[q.CniIfname] })
	}
	if len(sb.atts) == 0 {
		// Keep the sandbox's state in its first recorded attachment.
		sb.atts = append(sb.atts, added[0])
		added = added[1:]
	}
	// Older attachments first: the registry's newest report stays newest.
	sb.atts = append(added, sb.atts...)
	if len(added) > 0 && cur.Enrolled && cookies[cur.NetnsCookie] {
		// Enrolled by the daemon after these attachments' ADD, which may
		// have left them out: each veth needs its filter.
		if _, err := r.enroller.Enroll(added); err != nil {
			a.Failed = setErr(a.Failed, cur.ContainerId, err)
		}
	}
	return len(added) > 0 || len(sb.atts) != before
}

// enrollAdopted enrolls a sandbox whose ADD could not, if its netns is
// still there: one that is gone belongs to a pod whose DEL is due, and its
// cookie could name nothing else.
func (r *Registry) enrollAdopted(sb *sandbox) error {
	p := sb.latest()
	if p.GetNetnsPath() == "" {
		return errors.New("the record names no network namespace")
	}
	if _, err := os.Stat(p.GetNetnsPath()); err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	cookie, err := r.enroller.Enroll(sb.clones())
	if err != nil {
		return err
	}
	for _, q := range sb.atts {
		q.NetnsCookie, q.Enrolled = cookie, true
		if i := strings.Index(q.Reason, cnistate.NotEnrolledYet); i >= 0 {
			q.Reason = q.Reason[:i]
		}
		q.Reason += "; enrolled by the daemon at its start (kmesh-cni found no data path)"
	}
	return nil
}

func setErr(m map[string]error, k string, err error) map[string]error {
	if m == nil {
		m = map[string]error{}
	}
	m[k] = err
	return m
}
