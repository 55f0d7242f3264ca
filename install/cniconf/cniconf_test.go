package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

var testEntry = Entry{
	Kubeconfig:    "/etc/cni/net.d/kmesh-cni-kubeconfig",
	DaemonSocket:  "/var/run/kmesh/cni.sock",
	BPFDir:        "/sys/fs/bpf/kmesh",
	FailurePolicy: "open",
	LogLevel:      "info",
}

func entryJSON(t testing.TB, e Entry) []byte {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEntryJSON(t *testing.T) {
	got := string(entryJSON(t, testEntry))
	want := `{"type":"kmesh-cni","kubeconfig":"/etc/cni/net.d/kmesh-cni-kubeconfig","daemonSocket":"/var/run/kmesh/cni.sock","bpfDir":"/sys/fs/bpf/kmesh","failurePolicy":"open","logLevel":"info"}`
	if got != want {
		t.Errorf("entry JSON:\n got %s\nwant %s", got, want)
	}
	yes := true
	got = string(entryJSON(t, Entry{DefaultEnroll: &yes}))
	if want := `{"type":"kmesh-cni","defaultEnroll":true}`; got != want {
		t.Errorf("entry JSON: got %s, want %s", got, want)
	}
	if got := string(entryJSON(t, Entry{})); got != `{"type":"kmesh-cni"}` {
		t.Errorf("empty entry JSON: got %s", got)
	}
}

// A conflist as Calico writes it, with fields kmesh knows nothing about.
const calico = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "mtu": 1.44e3,
      "ipam": {"type": "calico-ipam", "assign_ipv4" : "true"},
      "policy": {
          "type": "k8s"
      },
      "odd": "a \"quoted\" ] } [ { string \u00e9 \\"
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    }
  ],
  "x-vendor": [1, 2, {"plugins": []}]
}
`

const calicoWithKmesh = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "mtu": 1.44e3,
      "ipam": {"type": "calico-ipam", "assign_ipv4" : "true"},
      "policy": {
          "type": "k8s"
      },
      "odd": "a \"quoted\" ] } [ { string \u00e9 \\"
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    },
    {
      "type": "kmesh-cni",
      "kubeconfig": "/etc/cni/net.d/kmesh-cni-kubeconfig",
      "daemonSocket": "/var/run/kmesh/cni.sock",
      "bpfDir": "/sys/fs/bpf/kmesh",
      "failurePolicy": "open",
      "logLevel": "info"
    }
  ],
  "x-vendor": [1, 2, {"plugins": []}]
}
`

func TestUpsertAppendsInTheFilesLayout(t *testing.T) {
	got, err := Upsert([]byte(calico), entryJSON(t, testEntry))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != calicoWithKmesh {
		t.Fatalf("Upsert:\n%s\nwant:\n%s", got, calicoWithKmesh)
	}
	again, err := Upsert(got, entryJSON(t, testEntry))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, got) {
		t.Errorf("second Upsert changed the file:\n%s", again)
	}
	back, removed, err := Remove(got)
	if err != nil || !removed {
		t.Fatalf("Remove: removed=%v err=%v", removed, err)
	}
	if string(back) != calico {
		t.Errorf("Remove did not restore the original:\n%s", back)
	}
}

func TestUpsertLayouts(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{
			name: "one line",
			in:   `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"}]}`,
			want: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"},{"type":"kmesh-cni","logLevel":"debug"}]}`,
		},
		{
			name: "one plugin per line",
			in:   "{\"name\": \"n\", \"plugins\": [\n  {\"type\": \"bridge\"}\n]}\n",
			want: "{\"name\": \"n\", \"plugins\": [\n  {\"type\": \"bridge\"},\n  {\"type\":\"kmesh-cni\",\"logLevel\":\"debug\"}\n]}\n",
		},
		{
			name: "tabs and CRLF",
			in:   "{\r\n\t\"name\": \"n\",\r\n\t\"plugins\": [\r\n\t\t{\r\n\t\t\t\"type\": \"ptp\"\r\n\t\t}\r\n\t]\r\n}",
			want: "{\r\n\t\"name\": \"n\",\r\n\t\"plugins\": [\r\n\t\t{\r\n\t\t\t\"type\": \"ptp\"\r\n\t\t},\r\n\t\t{\n\t\t\t\"type\": \"kmesh-cni\",\n\t\t\t\"logLevel\": \"debug\"\n\t\t}\r\n\t]\r\n}",
		},
		{
			name: "empty plugins",
			in:   `{"name":"n","plugins":[]}`,
			want: `{"name":"n","plugins":[{"type":"kmesh-cni","logLevel":"debug"}]}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Upsert([]byte(tc.in), entryJSON(t, Entry{LogLevel: "debug"}))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("Upsert:\n%q\nwant:\n%q", got, tc.want)
			}
			if !json.Valid(got) {
				t.Fatal("result is not valid JSON")
			}
			again, err := Upsert(got, entryJSON(t, Entry{LogLevel: "debug"}))
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("second Upsert changed the file (err %v):\n%q", err, again)
			}
			if tc.name == "empty plugins" {
				return // an empty array cannot keep its own whitespace
			}
			back, _, err := Remove(got)
			if err != nil || string(back) != tc.in {
				t.Errorf("Remove: err %v\n%q\nwant\n%q", err, back, tc.in)
			}
		})
	}
}

func TestUpsertUpdatesInPlace(t *testing.T) {
	in := `{"name":"n","plugins":[
  {"type":"bridge"},
  {"type":"kmesh-cni","logLevel":"info","stale":1},
  {"type":"portmap"},
  {"type":"kmesh-cni","logLevel":"warn"}
]}`
	want := `{"name":"n","plugins":[
  {"type":"bridge"},
  {"type":"kmesh-cni","logLevel":"debug"},
  {"type":"portmap"}
]}`
	got, err := Upsert([]byte(in), entryJSON(t, Entry{LogLevel: "debug"}))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("Upsert:\n%s\nwant:\n%s", got, want)
	}
	types, err := Types(got)
	if err != nil || !reflect.DeepEqual(types, []string{"bridge", PluginType, "portmap"}) {
		t.Errorf("Types = %v, %v", types, err)
	}
}

func TestRemove(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"plugins":[{"type":"kmesh-cni"},{"type":"a"}]}`, `{"plugins":[{"type":"a"}]}`},
		{`{"plugins":[ {"type":"kmesh-cni"} , {"type":"kmesh-cni"}, {"type":"a"} ]}`, `{"plugins":[ {"type":"a"} ]}`},
		{`{"plugins":[{"type":"a"},{"type":"kmesh-cni"},{"type":"b"}]}`, `{"plugins":[{"type":"a"},{"type":"b"}]}`},
		{`{"plugins":[{"type":"kmesh-cni"}]}`, `{"plugins":[]}`},
		{`{"plugins":[{"type":"a"}]}`, `{"plugins":[{"type":"a"}]}`},
	} {
		got, _, err := Remove([]byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("Remove(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"plugins":[`, "invalid JSON"},
		{`[]`, "must be a JSON object"},
		{`{"type":"bridge"}`, "no \"plugins\" array"},
		{`{"plugins":{"type":"bridge"}}`, "no \"plugins\" array"},
		{`{"plugins":[1]}`, "plugin 0 is not an object"},
	} {
		_, err := Upsert([]byte(tc.in), []byte(`{"type":"kmesh-cni"}`))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Upsert(%s): error %v, want it to say %q", tc.in, err, tc.want)
		}
	}
	if _, err := Upsert([]byte(`{"plugins":[]}`), []byte(`{`)); err == nil {
		t.Error("Upsert accepted an invalid entry")
	}
}

func TestFromConf(t *testing.T) {
	conf := `{
	"cniVersion": "0.4.0",
	"name": "mynet",
	"type": "bridge",
	"bridge": "cni0",
	"ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}
}`
	list, err := FromConf([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "plugins": [
    {
      "cniVersion": "0.4.0",
      "name": "mynet",
      "type": "bridge",
      "bridge": "cni0",
      "ipam": {
        "type": "host-local",
        "subnet": "10.244.0.0/24"
      }
    }
  ]
}
`
	if string(list) != want {
		t.Fatalf("FromConf:\n%s\nwant:\n%s", list, want)
	}
	withKmesh, err := Upsert(list, entryJSON(t, testEntry))
	if err != nil {
		t.Fatal(err)
	}
	// The runtime's own parser must accept the result.
	parsed, err := libcni.ConfListFromBytes(withKmesh)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, withKmesh)
	}
	if parsed.Name != "mynet" || parsed.CNIVersion != "0.4.0" || len(parsed.Plugins) != 2 ||
		parsed.Plugins[0].Network.Type != "bridge" || parsed.Plugins[1].Network.Type != PluginType {
		t.Errorf("libcni reads %+v", parsed)
	}
	if _, err := FromConf([]byte(`{"name":"x","plugins":[]}`)); err == nil {
		t.Error("FromConf accepted a conflist")
	}
}

func TestFindPrimary(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := FindPrimary(filepath.Join(dir, "missing")); !errors.Is(err, ErrNoPrimary) {
		t.Errorf("missing dir: %v, want ErrNoPrimary", err)
	}
	if _, _, err := FindPrimary(dir); !errors.Is(err, ErrNoPrimary) {
		t.Errorf("empty dir: %v, want ErrNoPrimary", err)
	}
	write("00-notes.txt", "not config")
	write("01-broken.conflist", `{"plugins":[`)
	write("02-only-kmesh.conflist", `{"name":"x","plugins":[{"type":"kmesh-cni"}]}`)
	write("03-no-type.conf", `{"name":"x"}`)
	write("04-kmesh.conf", `{"name":"x","type":"kmesh-cni"}`)
	write("kmesh-cni-kubeconfig", "apiVersion: v1")
	if err := os.Mkdir(filepath.Join(dir, "00-dir.conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	name, skipped, err := FindPrimary(dir)
	if !errors.Is(err, ErrNoPrimary) || len(skipped) != 4 {
		t.Errorf("no valid file: %q %v %v", name, skipped, err)
	}
	write("20-flannel.conflist", `{"name":"cbr0","plugins":[{"type":"flannel"}]}`)
	write("10-bridge.json", `{"name":"b","type":"bridge"}`)
	name, _, err = FindPrimary(dir)
	if err != nil || name != "10-bridge.json" {
		t.Errorf("FindPrimary = %q, %v; want 10-bridge.json", name, err)
	}
	// Conflists libcni will not load are no network to a runtime (CRI-O
	// passes over them; containerd gives up): one without a name, one
	// with a flag libcni cannot read.
	write("05-no-name.conflist", `{"cniVersion":"1.0.0","plugins":[{"type":"ptp"}]}`)
	write("06-bad-flag.conflist", `{"cniVersion":"1.0.0","name":"n","disableCheck":"maybe","plugins":[{"type":"ptp"}]}`)
	name, skipped, err = FindPrimary(dir)
	if err != nil || name != "10-bridge.json" || len(skipped) != 6 {
		t.Errorf("FindPrimary = %q, %v; want 10-bridge.json", name, err)
	}
	if got := ListName("10-bridge.json"); got != "10-bridge.conflist" {
		t.Errorf("ListName = %q", got)
	}
}

// Whatever conflist Upsert appends to, Remove gives back the same bytes.
func FuzzUpsertRemove(f *testing.F) {
	f.Add(calico)
	f.Add(`{"plugins":[{"type":"a"}]}`)
	f.Add("{\"plugins\" :\n[\n\t{\"type\":\"a\",\n\t \"x\":[1,{\"y\":\"]\"}]}\n\t]\n}")
	entry := entryJSON(f, testEntry)
	f.Fuzz(func(t *testing.T, doc string) {
		l, err := parseList([]byte(doc))
		if err != nil || len(l.plugins) == 0 || len(l.indexes()) > 0 {
			return
		}
		with, err := Upsert([]byte(doc), entry)
		if err != nil {
			t.Fatalf("Upsert: %v", err)
		}
		if !json.Valid(with) {
			t.Fatalf("Upsert made invalid JSON: %q", with)
		}
		if types, err := Types(with); err != nil || types[len(types)-1] != PluginType {
			t.Fatalf("entry not last after Upsert: %v %v", types, err)
		}
		back, removed, err := Remove(with)
		if err != nil || !removed || string(back) != doc {
			t.Fatalf("Remove(Upsert(doc)) = %q, %v, %v; want %q", back, removed, err, doc)
		}
	})
}
