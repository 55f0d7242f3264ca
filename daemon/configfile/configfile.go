// Package configfile reads mesh state from a local YAML or JSON file instead
// of istiod: `addresses:` holds istio.workload.Address objects and
// `authorizations:` istio.security.Authorization objects, both in protojson
// form. The file is the whole state; each reload replaces the previous one.
package configfile

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/daemon/model"
)

type file struct {
	Addresses      []json.RawMessage `json:"addresses"`
	Authorizations []json.RawMessage `json:"authorizations"`
}

// Parse reads a config file's bytes. A resource that does not convert is
// returned in rejected (by its name when it has one, else by position) and
// left out; a file that is not YAML/JSON of the right shape is an error.
func Parse(b []byte) (res []model.Resource, rejected map[string]error, err error) {
	var f file
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, nil, fmt.Errorf("config file: %w (want top-level addresses: and authorizations: lists)", err)
	}
	rejected = map[string]error{}
	seen := map[string]bool{}
	add := func(r model.Resource) {
		if seen[r.Name] {
			rejected[r.Name] = fmt.Errorf("%s: defined twice", r.Name)
			return
		}
		seen[r.Name] = true
		res = append(res, r)
	}
	for i, raw := range f.Addresses {
		var a workloadapi.Address
		if err := protojson.Unmarshal(raw, &a); err != nil {
			rejected[fmt.Sprintf("addresses[%d]", i)] = fmt.Errorf("addresses[%d]: %v", i, err)
			continue
		}
		s, w, err := model.FromAddress(&a)
		if err != nil {
			// Rejected under its own name where it has one, so its previous
			// version stays in place.
			name := fmt.Sprintf("addresses[%d]", i)
			if sv := a.GetService(); sv != nil && sv.GetNamespace() != "" && sv.GetHostname() != "" {
				name = sv.GetNamespace() + "/" + sv.GetHostname()
			} else if wl := a.GetWorkload(); wl != nil && wl.GetUid() != "" {
				name = wl.GetUid()
			}
			rejected[name] = fmt.Errorf("addresses[%d]: %v", i, err)
			continue
		}
		r := model.Resource{Service: s, Workload: w}
		if s != nil {
			r.Name = string(s.Key)
		} else {
			r.Name = w.UID
		}
		add(r)
	}
	for i, raw := range f.Authorizations {
		var a security.Authorization
		if err := protojson.Unmarshal(raw, &a); err != nil {
			rejected[fmt.Sprintf("authorizations[%d]", i)] = fmt.Errorf("authorizations[%d]: %v", i, err)
			continue
		}
		p, err := model.FromAuthorization(&a)
		if err != nil {
			name := fmt.Sprintf("authorizations[%d]", i)
			if a.GetName() != "" {
				name = model.PolicyKey(a.GetNamespace(), a.GetName())
			}
			rejected[name] = fmt.Errorf("authorizations[%d]: %v", i, err)
			continue
		}
		add(model.Resource{Name: p.Key, Policy: p})
	}
	return res, rejected, nil
}

// Sink receives each version of the file: its resources, the names that
// disappeared since the last version, and what was rejected.
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
	var prev map[string]bool
	load := func() {
		b, err := os.ReadFile(path)
		if err != nil {
			log.Error("cannot read config file; keeping the last state", "err", err)
			return
		}
		res, rejected, err := Parse(b)
		if err != nil {
			log.Error("cannot parse config file; keeping the last state", "err", err)
			return
		}
		now := map[string]bool{}
		for _, r := range res {
			now[r.Name] = true
		}
		for n := range rejected {
			if prev[n] {
				now[n] = true // keep the previous version of a rejected one
			}
		}
		var removes []string
		for n := range prev {
			if !now[n] {
				removes = append(removes, n)
			}
		}
		rej, err := sink.ApplyResources(res, removes, rejected)
		for n, e := range rej {
			log.Warn("resource rejected", "name", n, "reason", e)
		}
		if err != nil {
			log.Error("config not applied; keeping the last state", "err", err)
			return
		}
		if prev == nil {
			sink.Synced()
		}
		prev = now
		log.Info("config applied", "resources", len(res), "removed", len(removes), "rejected", len(rej))
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
