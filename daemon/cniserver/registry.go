// Package cniserver is the daemon's side of the CNI plugin API: a registry
// of pod sandboxes on this node, served over gRPC on a root-only unix
// socket, and the kernel enrollment of pods the daemon decides on itself
// (when a label changes after the pod started).
package cniserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// Enroller puts a pod's netns under the data path or takes it out. The
// registry calls it for enrollment decisions the daemon makes; the plugin
// enrolls pods itself at creation. It is given a sandbox's attachments
// (one record per CNI interface, all in the sandbox's netns): the netns
// has one manage entry, each attachment's host veth its own tc filter.
type Enroller interface {
	Enroll(atts []*cniv1.Pod) (cookie uint64, err error)
	Release(atts []*cniv1.Pod) error
	// Enrolled reports whether the cookie is in the manage map.
	Enrolled(cookie uint64) (bool, error)
	// List returns every enrolled cookie.
	List() (map[uint64]bool, error)
}

// Registry holds the pods of this node, persisted to a file so a restarted
// daemon knows them before any plugin calls again.
//
// The file is written in the background, a moment after a change, never
// on the plugin's call: writing every record on each EnrollPod cost the
// call ~1.3 ms with 10 pods on the node and ~24 ms with 1000, all of it
// added to each pod's start. Nothing is lost by a crash in between: the
// plugin's own records (Adopt) say which pods were added and deleted, and
// the manage map which are enrolled.
type Registry struct {
	mu       sync.Mutex
	path     string
	pods     map[string]*sandbox // by container id
	enroller Enroller
	// watchers are told when a pod is added or removed (the Kubernetes
	// watcher re-evaluates labels for it).
	watchers []func(*cniv1.Pod, bool)

	dirty  chan struct{} // a save is due
	stop   chan struct{}
	saved  chan struct{} // closed when the saver has stopped
	saveMu sync.Mutex    // one writer of the file at a time
}

// sandbox is a pod sandbox as the plugin reported it: one record per
// attachment (CNI_IFNAME), since a pod in several networks (multus, with
// kmesh-cni in each network's chain) has a host veth, and so a tc filter,
// per network, all in one netns. What is the sandbox's (enrolled, reason,
// cookie) is kept the same in every record.
type sandbox struct {
	atts []*cniv1.Pod // the newest report last
}

// latest is the attachment reported last: it speaks for the sandbox.
func (s *sandbox) latest() *cniv1.Pod { return s.atts[len(s.atts)-1] }

// put records an attachment, replacing the record of its interface.
func (s *sandbox) put(p *cniv1.Pod) {
	s.atts = slices.DeleteFunc(s.atts, func(q *cniv1.Pod) bool { return q.CniIfname == p.CniIfname })
	s.atts = append(s.atts, p)
}

// others are the attachments other than the one on ifname.
func (s *sandbox) others(ifname string) []*cniv1.Pod {
	var out []*cniv1.Pod
	for _, a := range s.atts {
		if a.CniIfname != ifname {
			out = append(out, a)
		}
	}
	return out
}

// setState makes the sandbox's state every attachment's.
func (s *sandbox) setState(enrolled bool, reason string, cookie uint64) {
	for _, a := range s.atts {
		a.Enrolled, a.Reason = enrolled, reason
		if cookie != 0 {
			a.NetnsCookie = cookie
		}
	}
}

// view is the sandbox as one pod record: the newest attachment's, with
// the addresses and interfaces of every attachment (the pod has them all).
func (s *sandbox) view() *cniv1.Pod {
	p := clone(s.latest())
	for _, a := range s.atts[:len(s.atts)-1] {
		for _, ip := range a.Ips {
			if !slices.Contains(p.Ips, ip) {
				p.Ips = append(p.Ips, ip)
			}
		}
		for _, i := range a.Interfaces {
			if !slices.ContainsFunc(p.Interfaces, func(j *cniv1.Interface) bool { return proto.Equal(i, j) }) {
				p.Interfaces = append(p.Interfaces, clone(i))
			}
		}
	}
	return p
}

func (s *sandbox) clones() []*cniv1.Pod {
	out := make([]*cniv1.Pod, len(s.atts))
	for i, a := range s.atts {
		out[i] = clone(a)
	}
	return out
}

// saveDelay lets a burst of changes (pods created together) be written once.
const saveDelay = 50 * time.Millisecond

// NewRegistry loads the state file at path (missing is fine) and reconciles
// it with the kernel: records of enrolled pods whose cookie vanished are
// marked not enrolled, and enrolled cookies nobody recorded are kept as
// anonymous records so nothing enrolled is forgotten.
func NewRegistry(path string, e Enroller) (*Registry, error) {
	r := &Registry{path: path, pods: map[string]*sandbox{}, enroller: e,
		dirty: make(chan struct{}, 1), stop: make(chan struct{}), saved: make(chan struct{})}
	if err := r.load(); err != nil {
		return nil, err
	}
	cookies, err := e.List()
	if err != nil {
		return nil, err
	}
	known := map[uint64]bool{}
	for _, sb := range r.pods {
		p := sb.latest()
		if p.Enrolled && !cookies[p.NetnsCookie] {
			sb.setState(false, "not in the manage map after restart", 0)
		}
		known[p.NetnsCookie] = true
	}
	for c := range cookies {
		if !known[c] {
			id := fmt.Sprintf("%s%d", anonymousPrefix, c)
			r.pods[id] = &sandbox{atts: []*cniv1.Pod{{ContainerId: id, NetnsCookie: c, Enrolled: true,
				Reason: "enrolled in the kernel, not yet re-signalled by the plugin"}}}
		}
	}
	if err := r.saveLocked(); err != nil {
		return nil, err
	}
	go r.saver()
	return r, nil
}

// Close writes pending changes and stops the background writer.
func (r *Registry) Close() error {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.saved
	return nil
}

// changed asks the background writer to save soon.
func (r *Registry) changed() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

func (r *Registry) saver() {
	defer close(r.saved)
	for {
		select {
		case <-r.dirty:
			select {
			case <-time.After(saveDelay):
			case <-r.stop:
			}
			if err := r.Flush(); err != nil {
				slog.Warn("save the pod registry", "path", r.path, "err", err)
			}
		case <-r.stop:
			select {
			case <-r.dirty:
				if err := r.Flush(); err != nil {
					slog.Warn("save the pod registry", "path", r.path, "err", err)
				}
			default:
			}
			return
		}
	}
}

// anonymousPrefix names the record of an enrolled cookie that no plugin
// call or record has named yet.
const anonymousPrefix = "unknown-netns-"

func isAnonymous(containerID string) bool { return strings.HasPrefix(containerID, anonymousPrefix) }

// Watch registers fn for pod additions (true) and removals (false). A
// record that changed (replaced by Add, enrolled or released by
// SetEnrolled) comes again as an addition.
func (r *Registry) Watch(fn func(p *cniv1.Pod, added bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watchers = append(r.watchers, fn)
}

// followsNetns is appended to the reason of an attachment reported out
// whose netns the kernel has enrolled (see Add).
const followsNetns = "; enrolled all the same: another attachment of the sandbox enrolled its netns"

// Add records an attachment of a pod sandbox, replacing the record of
// that interface; what it says of the sandbox (enrolled, reason) becomes
// the sandbox's.
func (r *Registry) Add(p *cniv1.Pod) (bool, error) {
	if p.GetContainerId() == "" {
		return false, errors.New("pod record without a container id")
	}
	p = clone(p)
	r.mu.Lock()
	sb := r.pods[p.ContainerId]
	if sb != nil && p.NetnsCookie != 0 && sb.latest().NetnsCookie != 0 && sb.latest().NetnsCookie != p.NetnsCookie {
		// Another netns under the same container id: the attachments
		// recorded were in the one that is gone.
		sb = nil
	}
	wasEnrolled := sb != nil && sb.latest().Enrolled
	var others []*cniv1.Pod
	if sb != nil {
		others = sb.others(p.CniIfname)
	}
	if !p.Enrolled && p.NetnsCookie != 0 {
		// Told an attachment is out while the kernel has its netns in:
		// another attachment's ADD enrolled it, concurrently with this
		// one's (containerd's go-cni adds a pod's networks in parallel),
		// so this ADD did not see the entry and attached no filter.
		// Enrollment is the netns's: the sandbox is recorded in, as the
		// kernel has it, so the release a label change brings takes the
		// netns out (recorded out, SetEnrolled(false) would do nothing and
		// the netns stay in for good); and this attachment's veth gets the
		// filter, or what arrives on it enters an enrolled netns
		// unauthorized. Taking only the kernel's state into the record
		// would leave that veth open until the release.
		ok, err := r.enroller.Enrolled(p.NetnsCookie)
		if err != nil {
			r.mu.Unlock()
			return false, err
		}
		if ok {
			if _, err := r.enroller.Enroll(append(slices.Clone(others), p)); err != nil {
				r.mu.Unlock()
				return false, err
			}
			p.Enrolled = true
			p.Reason += followsNetns
		}
	} else if p.Enrolled && p.NetnsCookie != 0 {
		ok, err := r.enroller.Enrolled(p.NetnsCookie)
		if err != nil {
			r.mu.Unlock()
			return false, err
		}
		switch {
		case !ok:
			// The plugin said enrolled but the kernel has no entry (the
			// pins were replaced in between): enroll again, every
			// attachment.
			if _, err := r.enroller.Enroll(append(slices.Clone(others), p)); err != nil {
				r.mu.Unlock()
				return false, err
			}
		case !wasEnrolled && len(others) > 0:
			// This attachment's ADD enrolled the netns that the earlier
			// ones had left out (the label came in between): their veths
			// need the filter too, or what arrives on them is not
			// authorized. This one's is the plugin's, being attached now.
			if _, err := r.enroller.Enroll(others); err != nil {
				r.mu.Unlock()
				return false, err
			}
		}
	}
	// An anonymous record for the same netns is replaced by the real one.
	for id, old := range r.pods {
		if c := old.latest().NetnsCookie; id != p.ContainerId && c == p.NetnsCookie && c != 0 && isAnonymous(id) {
			delete(r.pods, id)
		}
	}
	if sb == nil {
		sb = &sandbox{}
		r.pods[p.ContainerId] = sb
	}
	sb.put(p)
	sb.setState(p.Enrolled, p.Reason, p.NetnsCookie)
	r.changed()
	ws := slices.Clone(r.watchers)
	v := sb.view()
	r.mu.Unlock()
	for _, fn := range ws {
		fn(clone(v), true)
	}
	return p.Enrolled, nil
}

// Remove forgets a sandbox, all its attachments, and takes its netns out
// of the data path. The plugin calls it at the last attachment's DEL only
// (ReleasePodRequest names no interface).
func (r *Registry) Remove(containerID string, cookie uint64) (bool, error) {
	r.mu.Lock()
	sb, ok := r.pods[containerID]
	if !ok && cookie != 0 {
		for id, q := range r.pods {
			if q.latest().NetnsCookie == cookie {
				sb, ok, containerID = q, true, id
				break
			}
		}
	}
	if !ok {
		r.mu.Unlock()
		return false, nil
	}
	delete(r.pods, containerID)
	var err error
	if sb.latest().Enrolled {
		err = r.enroller.Release(sb.clones())
	}
	r.changed()
	ws := slices.Clone(r.watchers)
	v := sb.view()
	r.mu.Unlock()
	for _, fn := range ws {
		fn(clone(v), false)
	}
	return true, err
}

// SetEnrolled enrolls or releases a registered pod (label changes).
func (r *Registry) SetEnrolled(containerID string, enrolled bool, reason string) error {
	r.mu.Lock()
	sb, ok := r.pods[containerID]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("pod sandbox %s is not registered", containerID)
	}
	if sb.latest().Enrolled == enrolled {
		r.mu.Unlock()
		return nil
	}
	var cookie uint64
	if enrolled {
		var err error
		if cookie, err = r.enroller.Enroll(sb.clones()); err != nil {
			r.mu.Unlock()
			return err
		}
	} else if err := r.enroller.Release(sb.clones()); err != nil {
		r.mu.Unlock()
		return err
	}
	sb.setState(enrolled, reason, cookie)
	r.changed()
	ws := slices.Clone(r.watchers)
	p := sb.view()
	r.mu.Unlock()
	for _, fn := range ws {
		fn(clone(p), true)
	}
	return nil
}

// Pods returns every sandbox as one record (see sandbox.view), sorted by
// namespace, name, container id.
func (r *Registry) Pods() []*cniv1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*cniv1.Pod, 0, len(r.pods))
	for _, sb := range r.pods {
		out = append(out, sb.view())
	}
	sortPods(out)
	return out
}

// Attachments returns every attachment's record, sorted by namespace,
// name, container id, interface: a pod in several networks has a row per
// network, each with its host veth.
func (r *Registry) Attachments() []*cniv1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*cniv1.Pod, 0, len(r.pods))
	for _, sb := range r.pods {
		out = append(out, sb.clones()...)
	}
	sortPods(out)
	return out
}

func sortPods(out []*cniv1.Pod) {
	slices.SortFunc(out, func(a, b *cniv1.Pod) int {
		for _, c := range [][2]string{{a.Namespace, b.Namespace}, {a.Name, b.Name}, {a.ContainerId, b.ContainerId}, {a.CniIfname, b.CniIfname}} {
			if c[0] != c[1] {
				if c[0] < c[1] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
}

// ByUID finds the sandboxes of a Kubernetes pod.
func (r *Registry) ByUID(uid string) []*cniv1.Pod {
	var out []*cniv1.Pod
	for _, p := range r.Pods() {
		if p.Uid == uid {
			out = append(out, p)
		}
	}
	return out
}

func clone[M proto.Message](p M) M { return proto.Clone(p).(M) }

type stateFile struct {
	Pods []json.RawMessage `json:"pods"`
}

func (r *Registry) load() error {
	if r.path == "" {
		return nil
	}
	b, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pod registry %s: %w", r.path, err)
	}
	var sf stateFile
	if err := json.Unmarshal(b, &sf); err != nil {
		// A corrupt file must not stop the daemon: the manage map and the
		// plugin's re-signals rebuild the registry.
		return nil
	}
	for _, raw := range sf.Pods {
		p := &cniv1.Pod{}
		if err := protojson.Unmarshal(raw, p); err == nil && p.ContainerId != "" {
			// A row per attachment, the sandbox's newest last (a file of
			// an older daemon has one per sandbox).
			sb := r.pods[p.ContainerId]
			if sb == nil {
				sb = &sandbox{}
				r.pods[p.ContainerId] = sb
			}
			sb.put(p)
		}
	}
	return nil
}

// saveLocked writes the registry atomically; r.mu is held.
func (r *Registry) saveLocked() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	return r.write(r.snapshotLocked())
}

// Flush writes the registry now. The lock is held only to copy it.
func (r *Registry) Flush() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	snap := r.snapshotLocked()
	r.mu.Unlock()
	return r.write(snap)
}

func (r *Registry) snapshotLocked() []*cniv1.Pod {
	ids := make([]string, 0, len(r.pods))
	for id := range r.pods {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*cniv1.Pod, 0, len(ids))
	for _, id := range ids {
		out = append(out, r.pods[id].clones()...)
	}
	return out
}

func (r *Registry) write(pods []*cniv1.Pod) error {
	if r.path == "" {
		return nil
	}
	sf := stateFile{}
	for _, p := range pods {
		b, err := protojson.Marshal(p)
		if err != nil {
			return err
		}
		sf.Pods = append(sf.Pods, b)
	}
	b, err := json.MarshalIndent(sf, "", " ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write pod registry: %w", err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		return fmt.Errorf("write pod registry: %w", err)
	}
	return nil
}
