package configfile

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/conf"
	"github.com/kmesh-go/kmesh/daemon/model"
)

func TestDemoConfigParses(t *testing.T) {
	res, rejected, err := Parse(conf.DemoDaemonConfig)
	if err != nil || len(rejected) != 0 {
		t.Fatalf("demo config: %v %v", err, rejected)
	}
	if len(res) < 4 {
		t.Fatalf("demo config has %d resources", len(res))
	}
}

func TestParseRejectsPerResource(t *testing.T) {
	doc := `
addresses:
  - service: {name: a, namespace: ns, hostname: a.ns.svc.cluster.local, addresses: [{address: CmAAAQ==}], ports: [{servicePort: 80, targetPort: 8080}]}
  - service: {name: b, namespace: ns, hostname: b.ns.svc.cluster.local, ports: [{servicePort: 70000}]}
  - workload: {uid: w1, namespace: ns, addresses: ["AQID"]}
  - workload: {uid: w2, namespace: ns, addresses: ["CvQAAQ=="], status: HEALTHY}
  - workload: {uid: w2, namespace: ns, addresses: ["CvQAAg=="]}
authorizations:
  - {name: p, namespace: ns, action: 7}
  - {name: q, namespace: ns, action: DENY, groups: [{rules: [{matches: [{destinationPorts: [70000]}]}]}]}
`
	res, rejected, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range res {
		names = append(names, r.Name)
	}
	// A bad value does not refuse its policy (model.matchFrom: it fails
	// closed instead); an unknown action does.
	if !slices.Equal(names, []string{"ns/a.ns.svc.cluster.local", "w2", "ns/q"}) {
		t.Fatalf("accepted %v", names)
	}
	for name, want := range map[string]string{
		"ns/b.ns.svc.cluster.local": "service port 70000",
		"w1":                        "invalid address bytes",
		"w2":                        "defined twice",
		"ns/p":                      "unknown action 7",
	} {
		if err := rejected[name]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	if _, _, err := Parse([]byte("services: []")); err == nil {
		t.Fatal("unknown top-level field accepted")
	}
}

type sink struct {
	mu      sync.Mutex
	applied [][]string
	removed [][]string
	synced  int
}

func (s *sink) ApplyResources(up []model.Resource, rm []string, rejected map[string]error) (map[string]error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for _, r := range up {
		names = append(names, r.Name)
	}
	slices.Sort(rm)
	s.applied = append(s.applied, names)
	s.removed = append(s.removed, rm)
	return rejected, nil
}

func (s *sink) Synced() { s.mu.Lock(); s.synced++; s.mu.Unlock() }

func (s *sink) last() ([]string, []string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.applied) == 0 {
		return nil, nil, 0
	}
	return s.applied[len(s.applied)-1], s.removed[len(s.removed)-1], len(s.applied)
}

// The file is watched: an edit (even by rename, as editors and ConfigMaps
// do) replaces the state; names that disappear are removed; a broken
// version is skipped and the last good state stays.
func TestWatchReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	write := func(doc string) {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	svcA := `{service: {name: a, namespace: ns, hostname: a.ns.svc.cluster.local, ports: [{servicePort: 80}]}}`
	svcB := `{service: {name: b, namespace: ns, hostname: b.ns.svc.cluster.local, ports: [{servicePort: 80}]}}`
	write("addresses: [" + svcA + ", " + svcB + "]")
	s := &sink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Watch(ctx, path, s, nil) }()
	defer func() { cancel(); <-done }()

	wait := func(n int) ([]string, []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if a, r, k := s.last(); k >= n {
				return a, r
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("no reload #%d", n)
		return nil, nil
	}
	if a, _ := wait(1); len(a) != 2 {
		t.Fatalf("first load %v", a)
	}
	write("addresses: [" + svcB + "]")
	if a, r := wait(2); len(a) != 0 || !slices.Equal(r, []string{"ns/a.ns.svc.cluster.local"}) {
		t.Fatalf("reload: applied %v removed %v, want only a removed (b is unchanged)", a, r)
	}
	write("addresses: [ this is not yaml")
	time.Sleep(400 * time.Millisecond)
	if _, _, n := s.last(); n != 2 {
		t.Fatalf("a broken file was applied")
	}
	s.mu.Lock()
	synced := s.synced
	s.mu.Unlock()
	if synced != 1 {
		t.Fatalf("synced %d times", synced)
	}
}

// Each version is read against the last applied one: unchanged entries
// are neither decoded nor applied again, edited ones are, and a name whose
// entry is refused (by the parser or by the sink) keeps its previous state
// and is tried again with the next version.
func TestReaderAppliesWhatChanged(t *testing.T) {
	svc := func(name string, port int) string {
		return fmt.Sprintf(`{"service": {"name": %q, "namespace": "ns", "hostname": "%s.ns.svc.cluster.local", "ports": [{"servicePort": %d}]}}`, name, name, port)
	}
	doc := func(entries ...string) io.Reader {
		return strings.NewReader(`{"addresses": [` + strings.Join(entries, ",\n") + `], "authorizations": []}`)
	}
	names := func(rs []model.Resource) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Name)
		}
		slices.Sort(out)
		return out
	}
	key := func(name string) string { return "ns/" + name + ".ns.svc.cluster.local" }
	rd := &Reader{}
	read := func(r io.Reader, sinkRejects ...string) *Version {
		t.Helper()
		v, err := rd.Read(r)
		if err != nil {
			t.Fatal(err)
		}
		rej := maps.Clone(v.Rejected)
		for _, n := range sinkRejects {
			rej[n] = fmt.Errorf("refused by the sink")
		}
		rd.Applied(v, rej)
		slices.Sort(v.Removes)
		return v
	}

	v := read(doc(svc("a", 80), svc("b", 80), svc("c", 80)), key("c"))
	if got := names(v.Upserts); !slices.Equal(got, []string{key("a"), key("b"), key("c")}) || v.Unchanged != 0 {
		t.Fatalf("first version: %v, %d unchanged", got, v.Unchanged)
	}
	// a unchanged, b edited, c unchanged but refused last time, d new.
	v = read(doc(svc("a", 80), svc("b", 81), svc("c", 80), svc("d", 80)))
	if got := names(v.Upserts); !slices.Equal(got, []string{key("b"), key("c"), key("d")}) || v.Unchanged != 1 || len(v.Removes) != 0 {
		t.Fatalf("second version: %v, %d unchanged, removed %v", got, v.Unchanged, v.Removes)
	}
	// b broken now: it stays as it was, not removed; d removed; a twice.
	broken := `{"service": {"name": "b", "namespace": "ns", "hostname": "b.ns.svc.cluster.local", "ports": [{"servicePort": 70000}]}}`
	v = read(doc(svc("a", 80), broken, svc("c", 80), svc("a", 80)))
	if len(v.Upserts) != 0 || v.Unchanged != 2 || !slices.Equal(v.Removes, []string{key("d")}) {
		t.Fatalf("third version: %v, %d unchanged, removed %v", names(v.Upserts), v.Unchanged, v.Removes)
	}
	for name, want := range map[string]string{key("b"): "70000", key("a"): "defined twice"} {
		if err := v.Rejected[name]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	// b fixed again as it was: it is the version the data path holds.
	v = read(doc(svc("a", 80), svc("b", 81), svc("c", 80)))
	if len(v.Upserts) != 0 || v.Unchanged != 3 || len(v.Removes) != 0 {
		t.Fatalf("fourth version: %v, %d unchanged, removed %v", names(v.Upserts), v.Unchanged, v.Removes)
	}
	// Everything gone.
	v = read(strings.NewReader(`{"addresses": null}`))
	if len(v.Upserts) != 0 || !slices.Equal(v.Removes, []string{key("a"), key("b"), key("c")}) {
		t.Fatalf("empty version: %v, removed %v", names(v.Upserts), v.Removes)
	}
	for _, bad := range []string{`{"addresses": {}}`, `{"services": []}`, `{"addresses": [}`, `[]`} {
		if _, err := (&Reader{}).Read(strings.NewReader(bad)); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

// JSON and YAML of the same mesh give the same resources.
func TestJSONAndYAMLAgree(t *testing.T) {
	y, yrej, err := Parse(conf.DemoDaemonConfig)
	if err != nil || len(yrej) != 0 {
		t.Fatal(err, yrej)
	}
	js, err := yaml.YAMLToJSON(conf.DemoDaemonConfig)
	if err != nil {
		t.Fatal(err)
	}
	j, jrej, err := Parse(js)
	if err != nil || len(jrej) != 0 {
		t.Fatal(err, jrej)
	}
	if !reflect.DeepEqual(y, j) {
		t.Fatalf("YAML and JSON differ:\n%+v\n%+v", y, j)
	}
}
