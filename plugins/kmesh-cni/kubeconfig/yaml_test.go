package kubeconfig

import (
	"encoding/json"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"

	installkc "github.com/kmesh-go/kmesh/install/kubeconfig"
)

// kubeconfigs as tools write them; each must read as the YAML library
// reads it.
var kubeconfigCorpus = map[string]string{
	"kubeadm admin.conf": `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
    server: https://192.168.1.10:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
`,
	"indented sequences, comments, quotes": `# written by hand
apiVersion: "v1"
kind: 'Config'   # trailing comment
clusters:
  - name: "c#1"
    cluster:
      server: 'https://[fd00::1]:6443'
      insecure-skip-tls-verify: true
      tls-server-name: "api.example"   
users:
  - name: u
    user:
      token: "a\tb\u00e9 \"q\" \\"
  - name: v
    user:
      tokenFile: ../token # relative
      username:
contexts:
  -   name: x
      context: {cluster: "c#1", user: u}
current-context: x
extensions: []
`,
	"document markers and CRLF": "---\r\napiVersion: v1\r\nkind: Config\r\nclusters:\r\n- name: c\r\n  cluster:\r\n    server: http://127.0.0.1:8080\r\ncontexts: [{name: x, context: {cluster: c}}]\r\ncurrent-context: x\r\n...\r\n",
	"flow on one line":          `{"apiVersion": "v1", "clusters": [{"name": "c", "cluster": {"server": "https://k:6443"}}]}`,
	"flow YAML":                 `clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", certificate-authority: ca.crt}}, {name: d, cluster: {server: https://k:443}}]`,
	"nested lists": `a:
- - x
  - z
- []
- 'it''s'
b:
  - k: v
    l:
    - 1
    - true
`,
}

func TestKubeconfigReadsAsTheYAMLLibraryDoes(t *testing.T) {
	built, err := installkc.Build("https://10.96.0.1:443", []byte("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"), "tok")
	if err != nil {
		t.Fatal(err)
	}
	corpus := map[string]string{"kmesh-install": string(built)}
	for k, v := range kubeconfigCorpus {
		corpus[k] = v
	}
	for name, src := range corpus {
		got, err := kubeconfigJSON([]byte(src))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		// The kubeconfig as this reader and as client-go's YAML reading
		// (directed by the type it fills) see it.
		var g, w kubeconfig
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := yaml.Unmarshal([]byte(src), &w); err != nil {
			t.Fatalf("%s: the library: %v", name, err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, g, w)
		}
		// And as plain data: the same structure, scalars as text.
		want, err := yaml.YAMLToJSON([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		var gv, wv any
		json.Unmarshal(got, &gv)
		json.Unmarshal(want, &wv)
		if !reflect.DeepEqual(gv, asText(wv)) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
	// A kubeconfig's one boolean, in the words YAML 1.1 allows.
	for src, want := range map[string]bool{"true": true, "yes": true, "On": true, "y": true, "false": false, "no": false, "OFF": false, "~": false} {
		b, err := kubeconfigJSON([]byte("clusters:\n- name: c\n  cluster:\n    insecure-skip-tls-verify: " + src + "\n"))
		var kc kubeconfig
		if err == nil {
			err = json.Unmarshal(b, &kc)
		}
		if err != nil || len(kc.Clusters) != 1 || bool(kc.Clusters[0].Cluster.InsecureSkipTLSVerify) != want {
			t.Errorf("insecure-skip-tls-verify: %s: %+v %v", src, kc, err)
		}
	}
	var kc kubeconfig
	if b, err := kubeconfigJSON([]byte("clusters:\n- name: c\n  cluster:\n    insecure-skip-tls-verify: maybe\n")); err != nil || json.Unmarshal(b, &kc) == nil {
		t.Errorf("insecure-skip-tls-verify: maybe: accepted")
	}
}

// asText turns the YAML library's booleans and numbers into their text.
func asText(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = asText(e)
		}
	case []any:
		for i, e := range v {
			v[i] = asText(e)
		}
	case float64, bool:
		return mustJSON(v)
	}
	return v
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// What is not read is refused with the line, never guessed at.
func TestKubeconfigRefusesWhatItDoesNotRead(t *testing.T) {
	for name, src := range map[string]string{
		"anchor":             "a: &x 1\nb: *x\n",
		"tag":                "a: !!str 1\n",
		"block scalar":       "a: |\n  text\n",
		"folded scalar":      "a: >\n  text\n",
		"multi-line plain":   "a: one\n  two\n",
		"multi-line flow":    "a: [1,\n  2]\n",
		"two documents":      "a: 1\n---\nb: 2\n",
		"tab indentation":    "a:\n\tb: 1\n",
		"duplicate key":      "a: 1\na: 2\n",
		"bad indentation":    "a:\n    b: 1\n  c: 2\n",
		"scalar document":    "just text\n",
		"list document":      "- a\n",
		"unclosed quote":     "a: \"open\n",
		"bad escape":         "a: \"\\q\"\n",
		"short escape":       "a: \"\\u12\"\n",
		"after quote":        "a: \"x\" y\n",
		"flow trailing":      "a: {b: c} d\n",
		"flow missing comma": "a: [b c: d e]\n",
		"directive":          "%YAML 1.2\n---\na: 1\n",
		"not utf-8":          "a: \xff\n",
		"empty":              "# nothing\n",
		"null key":           "~: 1\n",
		"collection key":     "a: 1\n{}: 2\n",
		"broken JSON":        "{\"clusters\": [",
	} {
		if got, err := kubeconfigJSON([]byte(src)); err == nil {
			t.Errorf("%s: read as %s", name, got)
		}
	}
}

// Whatever the file holds, reading it does not panic, and what both
// this reader and the YAML library read as a kubeconfig is the same
// kubeconfig.
func FuzzKubeconfig(f *testing.F) {
	for _, src := range kubeconfigCorpus {
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src string) {
		got, err := kubeconfigJSON([]byte(src))
		if err != nil {
			return
		}
		want, err := yaml.YAMLToJSON([]byte(src))
		if err != nil {
			return
		}
		// Where the library resolved a scalar to a boolean or a number,
		// it writes that back as text ("Y" becomes "true"); this reader
		// keeps the text as written. Compare the rest.
		var wv any
		if json.Unmarshal(want, &wv) != nil || hasNonText(wv) {
			return
		}
		var g, w kubeconfig
		if json.Unmarshal(got, &g) != nil || yaml.Unmarshal([]byte(src), &w) != nil {
			return
		}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("read %s, the library reads %s", got, want)
		}
	})
}

func hasNonText(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			if hasNonText(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if hasNonText(e) {
				return true
			}
		}
	case float64, bool:
		return true
	}
	return false
}
