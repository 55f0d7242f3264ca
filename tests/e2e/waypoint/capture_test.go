package waypoint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
	"github.com/kmesh-go/kmesh/waypoint/translate"
)

// Fixture files, one per type, in waypoint/translate/testdata/<set>/.
var fixtureFiles = map[string]string{
	translate.TypeListener: "lds.json",
	translate.TypeCluster:  "cds.json",
	translate.TypeEndpoint: "eds.json",
	translate.TypeRoute:    "rds.json",
	translate.TypeAddress:  "address.json",
}

// recorder is an xdsclient.Handler that keeps what istiod sent, raw, and
// follows CDS with the EDS subscription and LDS with RDS, as Envoy does.
type recorder struct {
	mu     sync.Mutex
	client *xdsclient.Client
	state  map[string]map[string]*anypb.Any
	synced chan struct{}
	once   sync.Once
}

func newRecorder() *recorder {
	r := &recorder{state: map[string]map[string]*anypb.Any{}, synced: make(chan struct{})}
	for t := range fixtureFiles {
		r.state[t] = map[string]*anypb.Any{}
	}
	return r
}

func (r *recorder) Apply(typeURL string, ups []xdsclient.Resource, removes []string) (map[string]error, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.state[typeURL]
	for _, u := range ups {
		m[u.Name] = u.Body
	}
	for _, n := range removes {
		delete(m, n)
	}
	switch typeURL {
	case translate.TypeCluster:
		var names []string
		for _, a := range m {
			c, err := decode[*clusterProto](a)
			if err == nil {
				names = append(names, translate.EDSClusters([]*clusterProto{c})...)
			}
		}
		_ = r.client.SetNames(translate.TypeEndpoint, names)
	case translate.TypeListener:
		var ls []*listenerProto
		for _, a := range m {
			if l, err := decode[*listenerProto](a); err == nil {
				ls = append(ls, l)
			}
		}
		_ = r.client.SetNames(translate.TypeRoute, translate.ReferencedRoutes(ls))
	}
	return nil, nil
}

func (r *recorder) Synced()        { r.once.Do(func() { close(r.synced) }) }
func (r *recorder) Connected(bool) {}

// snapshot copies the state of one type.
func (r *recorder) snapshot(typeURL string) map[string]*anypb.Any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.state[typeURL])
}

func decode[T proto.Message](a *anypb.Any) (T, error) {
	var v T
	v = v.ProtoReflect().Type().New().Interface().(T)
	err := a.UnmarshalTo(v)
	return v, err
}

// fixtureDir is waypoint/translate/testdata/<set> in the product tree.
func fixtureDir(set string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "waypoint", "translate", "testdata", set)
}

// fixtureDoc renders one type's resources as the fixture file holds
// them: a JSON list sorted by name, each resource in protojson with keys
// sorted, so a diff shows only what istiod changed.
func fixtureDoc(res map[string]*anypb.Any) ([]byte, error) {
	type entry struct {
		Name     string          `json:"name"`
		Resource json.RawMessage `json:"resource"`
	}
	var out []entry
	for _, name := range slices.Sorted(maps.Keys(res)) {
		b, err := protojson.Marshal(res[name])
		if err != nil {
			return nil, fmt.Errorf("%s: %w (unresolved types: %v)", name, err, unresolved(res[name]))
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, err
		}
		nb, err := json.Marshal(v) // sorted keys, stable output
		if err != nil {
			return nil, err
		}
		out = append(out, entry{Name: name, Resource: nb})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeOrCompare writes the fixtures when KMESH_UPDATE_GOLDEN=1, else
// compares their structure (resource names, and each resource's field
// paths) with what istiod sends now.
func writeOrCompare(t *testing.T, set string, types []string, r *recorder) {
	t.Helper()
	dir := fixtureDir(set)
	update := os.Getenv("KMESH_UPDATE_GOLDEN") == "1"
	if update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	missing := map[string]bool{}
	for _, typeURL := range types {
		for _, a := range r.snapshot(typeURL) {
			for _, u := range unresolved(a) {
				missing[u] = true
			}
		}
	}
	if len(missing) > 0 {
		t.Fatalf("register these types (types_test.go) to render the fixtures: %v", slices.Sorted(maps.Keys(missing)))
	}
	for _, typeURL := range types {
		file := filepath.Join(dir, fixtureFiles[typeURL])
		doc, err := fixtureDoc(r.snapshot(typeURL))
		if err != nil {
			t.Fatalf("%s: %v", fixtureFiles[typeURL], err)
		}
		if update {
			if err := os.WriteFile(file, doc, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s (%d bytes)", file, len(doc))
			continue
		}
		old, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (capture with KMESH_UPDATE_GOLDEN=1)", err)
		}
		if diff := structureDiff(old, doc); diff != "" {
			t.Errorf("%s: istiod now sends a different structure (recapture with KMESH_UPDATE_GOLDEN=1 if intended):\n%s", file, diff)
		}
	}
}

// structureDiff compares two fixture documents by resource names and
// field paths, not values (versions and ordering may move).
func structureDiff(a, b []byte) string {
	pa, err1 := paths(a)
	pb, err2 := paths(b)
	if err1 != nil || err2 != nil {
		return fmt.Sprintf("unreadable: %v %v", err1, err2)
	}
	var diffs []string
	for _, name := range slices.Sorted(maps.Keys(pa)) {
		if _, ok := pb[name]; !ok {
			diffs = append(diffs, "- resource "+name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(pb)) {
		if _, ok := pa[name]; !ok {
			diffs = append(diffs, "+ resource "+name)
			continue
		}
		for p := range pa[name] {
			if !pb[name][p] {
				diffs = append(diffs, "- "+name+": "+p)
			}
		}
		for p := range pb[name] {
			if !pa[name][p] {
				diffs = append(diffs, "+ "+name+": "+p)
			}
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 40 {
		diffs = append(diffs[:40], fmt.Sprintf("... and %d more", len(diffs)-40))
	}
	return strings.Join(diffs, "\n")
}

func paths(doc []byte) (map[string]map[string]bool, error) {
	var entries []struct {
		Name     string `json:"name"`
		Resource any    `json:"resource"`
	}
	if err := json.Unmarshal(doc, &entries); err != nil {
		return nil, err
	}
	out := map[string]map[string]bool{}
	for _, e := range entries {
		set := map[string]bool{}
		walk(e.Resource, "", set)
		out[e.Name] = set
	}
	return out, nil
}

func walk(v any, at string, set map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			walk(c, at+"."+k, set)
		}
	case []any:
		for _, c := range x {
			walk(c, at+"[]", set)
		}
	default:
		set[at] = true
	}
}

// unresolved lists the Any type URLs in m this binary cannot decode.
func unresolved(m proto.Message) []string {
	seen := map[string]bool{}
	var visit func(protoreflect.Message)
	visit = func(pm protoreflect.Message) {
		if a, ok := pm.Interface().(*anypb.Any); ok {
			mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
			if err != nil {
				seen[a.GetTypeUrl()] = true
				return
			}
			inner := mt.New()
			if proto.Unmarshal(a.GetValue(), inner.Interface()) == nil {
				visit(inner)
			}
			return
		}
		pm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					visit(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
				visit(v.Message())
			}
			return true
		})
	}
	visit(m.ProtoReflect())
	return slices.Sorted(maps.Keys(seen))
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %s", what, timeout, last)
}
