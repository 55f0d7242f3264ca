package cniserver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// Adopt takes the plugin's records (PluginPods) as the node's pods when
// the daemon starts, so it knows what was added and deleted while it was
// away even if the plugin could not tell it:
//   - a pod the registry does not know is registered as the plugin left it,
//     enrolled only if its cookie is still in the manage map (the plugin
//     enrolled it, or its DEL undid that), and enrolled whenever it is
//     (a daemon enrolled it after ADD and its file lost that);
//   - a pod ADD decided to enroll but could not, for want of a data path,
//     is enrolled here (manage entry and tc filter, as the plugin would
//     have): nobody else would, when no Kubernetes watch decides again;
//   - a pod the registry knows keeps the registry's record: the daemon's
//     later decisions (labels changed after ADD) win over ADD's;
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
	recorded := map[string]bool{}
	for _, pp := range plugin {
		p := pp.Pod
		if p.GetContainerId() == "" {
			continue
		}
		recorded[p.ContainerId] = true
		if _, ok := r.pods[p.ContainerId]; ok {
			continue
		}
		p = clone(p)
		switch {
		case p.Enrolled && !cookies[p.NetnsCookie]:
			p.Enrolled = false
			p.Reason = "not in the manage map when the daemon started (was: " + p.Reason + ")"
		case !p.Enrolled && p.NetnsCookie != 0 && cookies[p.NetnsCookie]:
			// ADD left it out and a daemon enrolled it since (its label
			// came later), but the registry's file lost that: the manage
			// map says what holds, and a later release must undo it.
			p.Enrolled = true
			p.Reason = "in the manage map when the daemon started (enrolled after ADD, which said: " + p.Reason + ")"
		case !p.Enrolled && pp.WantsEnrollment:
			if err := r.enrollAdopted(p); err != nil {
				a.Failed = setErr(a.Failed, p.ContainerId, err)
				p.Reason += "; the daemon could not enroll it at start: " + err.Error()
			} else {
				a.Enrolled = append(a.Enrolled, p.ContainerId)
			}
		}
		for id, old := range r.pods {
			if isAnonymous(id) && old.NetnsCookie != 0 && old.NetnsCookie == p.NetnsCookie {
				delete(r.pods, id)
			}
		}
		r.pods[p.ContainerId] = p
		a.Added = append(a.Added, p.ContainerId)
	}
	if complete {
		for id, p := range r.pods {
			if recorded[id] || p.NetnsCookie != 0 && cookies[p.NetnsCookie] {
				continue
			}
			delete(r.pods, id)
			a.Dropped = append(a.Dropped, id)
		}
	}
	if len(a.Added) == 0 && len(a.Dropped) == 0 {
		return a, nil
	}
	return a, r.saveLocked()
}

// enrollAdopted enrolls a pod whose ADD could not, if its netns is still
// there: one that is gone belongs to a pod whose DEL is due, and its
// cookie could name nothing else.
func (r *Registry) enrollAdopted(p *cniv1.Pod) error {
	if p.GetNetnsPath() == "" {
		return errors.New("the record names no network namespace")
	}
	if _, err := os.Stat(p.GetNetnsPath()); err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	cookie, err := r.enroller.Enroll(p)
	if err != nil {
		return err
	}
	p.NetnsCookie, p.Enrolled = cookie, true
	if i := strings.Index(p.Reason, cnistate.NotEnrolledYet); i >= 0 {
		p.Reason = p.Reason[:i]
	}
	p.Reason += "; enrolled by the daemon at its start (kmesh-cni found no data path)"
	return nil
}

func setErr(m map[string]error, k string, err error) map[string]error {
	if m == nil {
		m = map[string]error{}
	}
	m[k] = err
	return m
}
