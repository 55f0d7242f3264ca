// Package configfile reads mesh state from a local YAML or JSON file instead
// of istiod: `addresses:` holds istio.workload.Address objects and
// `authorizations:` istio.security.Authorization objects, both in protojson
// form. The file is the whole state; each reload replaces the previous one.
//
// A reload costs what changed, not what the file holds: each entry's bytes
// are hashed, an entry whose hash the last applied version had is the same
// resource as then and is neither decoded nor applied again, and only new
// or edited entries reach the data path, beside the names that went. A JSON
// file is read as a stream, entry by entry, decoded on every core; YAML is
// turned into JSON first (a large mesh is best written as JSON).
package configfile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/fsnotify/fsnotify"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/daemon/model"
)

// Parse reads a config file's bytes. A resource that does not convert is
// returned in rejected (by its name when it has one, else by position) and
// left out; a file that is not YAML/JSON of the right shape is an error.
func Parse(b []byte) (res []model.Resource, rejected map[string]error, err error) {
	v, err := (&Reader{}).Read(bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	return v.Upserts, v.Rejected, nil
}

// Reader reads successive versions of a file, each against the last one
// applied (Applied).
type Reader struct {
	// applied maps the hash of each entry of the last applied version to
	// its resource name.
	applied map[uint64]string
}

// Version is one reading of the file, compared with the last applied one.
type Version struct {
	// Upserts are the entries that are new or changed.
	Upserts []model.Resource
	// Removes are the names the last applied version had and this one
	// has not (a rejected entry keeps its name's previous version).
	Removes []string
	// Rejected are the entries that do not convert, by name (or position).
	Rejected map[string]error
	// Unchanged counts the entries left as they were.
	Unchanged int

	next map[uint64]string // applied, once the sink took the version
	hash map[string]uint64 // the hash of each upserted name
}

// Read reads one version of the file from r.
func (rd *Reader) Read(r io.Reader) (*Version, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	var src io.Reader = br
	if !startsWithBrace(br) {
		// YAML (the demo file, hand-written meshes): one conversion to
		// JSON, then the same path.
		b, err := io.ReadAll(br)
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(b)
		if err != nil {
			return nil, fmt.Errorf("config file: %w (want top-level addresses: and authorizations: lists)", err)
		}
		src = bytes.NewReader(js)
	}
	v := &Version{Rejected: map[string]error{}, next: make(map[uint64]string, len(rd.applied)), hash: map[string]uint64{}}
	batches := make(chan *batch, 2*runtime.GOMAXPROCS(0))
	ordered := make(chan *batch, cap(batches))
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				b.decode(rd.applied)
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		readErr <- split(src, func(b *batch) {
			batches <- b
			ordered <- b
		})
		close(batches)
		close(ordered)
	}()
	// Entries are taken in file order, so the first of two definitions of
	// a name wins, whichever worker decoded it.
	seen := make(map[string]bool, len(rd.applied))
	for b := range ordered {
		<-b.done
		for i := range b.entries {
			v.take(&b.entries[i], seen)
		}
	}
	wg.Wait()
	if err := <-readErr; err != nil {
		return nil, err
	}
	for h, name := range rd.applied {
		if _, kept := v.next[h]; kept {
			continue
		}
		if _, bad := v.Rejected[name]; bad && !seen[name] {
			// A rejected entry keeps its name's previous version.
			v.next[h] = name
			seen[name] = true
			continue
		}
		if !seen[name] {
			v.Removes = append(v.Removes, name)
			seen[name] = true // once, also when it had two entries
		}
	}
	return v, nil
}

// take records one decoded entry.
func (v *Version) take(e *entry, seen map[string]bool) {
	switch {
	case e.err != nil:
		v.Rejected[e.name] = e.err
	case seen[e.name]:
		v.Rejected[e.name] = fmt.Errorf("%s: defined twice", e.name)
	default:
		seen[e.name] = true
		v.next[e.hash] = e.name
		if e.res.Name == "" {
			v.Unchanged++
			return
		}
		v.hash[e.name] = e.hash
		v.Upserts = append(v.Upserts, e.res)
	}
}

// Applied records that the sink took the version. The names the sink
// rejected (beyond the version's own Rejected) kept their previous state:
// they keep what the last applied version had for them, so the next
// version tries their entries again.
func (rd *Reader) Applied(v *Version, rejected map[string]error) {
	refused := map[string]bool{}
	for name, err := range rejected {
		if own, ok := v.Rejected[name]; ok && own == err {
			continue
		}
		refused[name] = true
		if h, ok := v.hash[name]; ok {
			delete(v.next, h)
		}
	}
	if len(refused) > 0 {
		for h, name := range rd.applied {
			if refused[name] {
				v.next[h] = name
			}
		}
	}
	rd.applied = v.next
	v.next, v.hash = nil, nil
}

func startsWithBrace(br *bufio.Reader) bool {
	for i := 1; ; i++ {
		b, err := br.Peek(i)
		if err != nil || len(b) < i {
			return false
		}
		switch b[i-1] {
		case ' ', '\t', '\r', '\n':
			continue
		case 0xef, 0xbb, 0xbf: // a UTF-8 byte order mark
			continue
		}
		return b[i-1] == '{'
	}
}

const (
	kindAddress byte = iota + 1
	kindAuthorization
)

// entry is one element of addresses: or authorizations:.
type entry struct {
	kind byte
	pos  int // index in its list
	raw  []byte
	hash uint64
	// Decoded: name, and res when the entry is new (res.Name empty when
	// unchanged), or why it was rejected. msg holds the message between
	// unmarshalling and conversion.
	msg  proto.Message
	name string
	res  model.Resource
	err  error
}

// batch is a run of entries decoded by one worker.
type batch struct {
	entries []entry
	done    chan struct{}
}

const batchSize = 1024

// split reads the file's two lists and hands their entries over in
// batches, in order.
func split(r io.Reader, emit func(*batch)) error {
	dec := json.NewDecoder(r)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("config file: %s (want top-level addresses: and authorizations: lists)", fmt.Sprintf(format, args...))
	}
	tok, err := dec.Token()
	if err != nil {
		return bad("%v", err)
	}
	if tok == nil {
		return nil // an empty file: an empty mesh
	}
	if tok != json.Delim('{') {
		return bad("the top level is not a map")
	}
	cur := &batch{done: make(chan struct{})}
	flush := func() {
		if len(cur.entries) > 0 {
			emit(cur)
			cur = &batch{done: make(chan struct{})}
		}
	}
	defer flush()
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bad("%v", err)
		}
		var kind byte
		switch tok {
		case "addresses":
			kind = kindAddress
		case "authorizations":
			kind = kindAuthorization
		default:
			return bad("unknown field %q", tok)
		}
		tok, err = dec.Token()
		if err != nil {
			return bad("%v", err)
		}
		if tok == nil {
			continue
		}
		if tok != json.Delim('[') {
			return bad("%s is not a list", kindName(kind))
		}
		for pos := 0; dec.More(); pos++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return bad("%s[%d]: %v", kindName(kind), pos, err)
			}
			cur.entries = append(cur.entries, entry{kind: kind, pos: pos, raw: raw})
			if len(cur.entries) == batchSize {
				flush()
			}
		}
		if _, err := dec.Token(); err != nil {
			return bad("%v", err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return bad("%v", err)
	}
	return nil
}

func kindName(k byte) string {
	if k == kindAddress {
		return "addresses"
	}
	return "authorizations"
}

// decode hashes each entry and converts those the last applied version
// did not have. Every message of the batch is unmarshalled before any is
// converted, so the model objects, which stay, are allocated side by side
// rather than between the messages, which go: a page that keeps one live
// object among garbage stays resident.
func (b *batch) decode(applied map[uint64]string) {
	defer close(b.done)
	for i := range b.entries {
		e := &b.entries[i]
		h := xxhash.New()
		h.Write([]byte{e.kind})
		h.Write(e.raw)
		e.hash = h.Sum64()
		if name, ok := applied[e.hash]; ok {
			e.name = name
		} else {
			e.unmarshal()
		}
		e.raw = nil // garbage from here on
	}
	for i := range b.entries {
		if e := &b.entries[i]; e.msg != nil {
			e.convert()
			e.msg = nil
		}
	}
}

func (e *entry) unmarshal() {
	var m proto.Message = &workloadapi.Address{}
	if e.kind == kindAuthorization {
		m = &security.Authorization{}
	}
	if err := protojson.Unmarshal(e.raw, m); err != nil {
		e.name = fmt.Sprintf("%s[%d]", kindName(e.kind), e.pos)
		e.err = fmt.Errorf("%s: %v", e.name, err)
		return
	}
	e.msg = m
}

func (e *entry) convert() {
	where := fmt.Sprintf("%s[%d]", kindName(e.kind), e.pos)
	switch m := e.msg.(type) {
	case *workloadapi.Address:
		s, w, err := model.FromAddress(m)
		if err != nil {
			// Rejected under its own name where it has one, so its
			// previous version stays in place.
			e.name = where
			if sv := m.GetService(); sv != nil && sv.GetNamespace() != "" && sv.GetHostname() != "" {
				e.name = sv.GetNamespace() + "/" + sv.GetHostname()
			} else if wl := m.GetWorkload(); wl != nil && wl.GetUid() != "" {
				e.name = wl.GetUid()
			}
			e.err = fmt.Errorf("%s: %v", where, err)
			return
		}
		e.res = model.Resource{Service: s, Workload: w}
		if s != nil {
			e.res.Name = string(s.Key)
		} else {
			e.res.Name = w.UID
		}
	case *security.Authorization:
		p, err := model.FromAuthorization(m)
		if err != nil {
			e.name = where
			if m.GetName() != "" {
				e.name = model.PolicyKey(m.GetNamespace(), m.GetName())
			}
			e.err = fmt.Errorf("%s: %v", where, err)
			return
		}
		if len(p.Warnings) > 0 {
			slog.Warn("config file: authorization values ignored", "policy", p.Key, "problems", p.Warnings)
		}
		e.res = model.Resource{Name: p.Key, Policy: p}
	}
	e.name = e.res.Name
}

// Sink receives each version of the file: its new and changed resources,
// the names that disappeared since the last version, and what was
// rejected.
type Sink interface {
	ApplyResources(upserts []model.Resource, removes []string, rejected map[string]error) (map[string]error, error)
	Synced()
}

// Watch applies path now and again whenever it changes, until ctx ends. A
// version that cannot be read or parsed is logged and skipped: the last good
// state stays. The first good version also marks the sink synced.
func Watch(ctx context.Context, path string, sink Sink, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "configfile", "path", path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	// Watch the directory: editors and ConfigMaps replace files by rename.
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(path), err)
	}
	rd := &Reader{}
	synced := false
	load := func() {
		start := time.Now()
		f, err := os.Open(path)
		if err != nil {
			log.Error("cannot read config file; keeping the last state", "err", err)
			return
		}
		v, err := rd.Read(f)
		f.Close()
		if err != nil {
			log.Error("cannot parse config file; keeping the last state", "err", err)
			return
		}
		log.Debug("parsed", "new", len(v.Upserts), "unchanged", v.Unchanged, "removed", len(v.Removes),
			"rejected", len(v.Rejected), "took", time.Since(start))
		// A copy: the sink adds its own rejections to the map it is given.
		rej, err := sink.ApplyResources(v.Upserts, v.Removes, maps.Clone(v.Rejected))
		for n, e := range rej {
			log.Warn("resource rejected", "name", n, "reason", e)
		}
		if err != nil {
			log.Error("config not applied; keeping the last state", "err", err)
			return
		}
		rd.Applied(v, rej)
		if !synced {
			sink.Synced()
			synced = true
		}
		log.Info("config applied", "resources", len(v.Upserts)+v.Unchanged, "changed", len(v.Upserts),
			"removed", len(v.Removes), "rejected", len(rej))
	}
	load()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) == filepath.Clean(path) || filepath.Base(ev.Name) == "..data" {
				debounce = time.After(100 * time.Millisecond)
			}
		case err := <-w.Errors:
			log.Warn("watch error", "err", err)
		case <-debounce:
			load()
		}
	}
}
