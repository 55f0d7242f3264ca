package installer

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const dsPath = "/apis/apps/v1/namespaces/kmesh-system/daemonsets/kmesh"

// fakeAPI answers the DaemonSet look-up with the answers queued, the last
// one for good.
type fakeAPI struct {
	srv *httptest.Server

	mu       sync.Mutex
	answers  []apiAnswer
	requests int
	badAuth  string // an Authorization header that was not the token
}

type apiAnswer struct {
	code int
	body string
}

var (
	// What the API server sends the metadata client.
	dsPresent  = apiAnswer{200, `{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"kmesh","namespace":"kmesh-system","uid":"u1"}}`}
	dsDeleting = apiAnswer{200, `{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"kmesh","namespace":"kmesh-system","uid":"u1",` +
		`"deletionTimestamp":"2026-01-01T00:00:00Z","finalizers":["foregroundDeletion"]}}`}
	dsAbsent = apiAnswer{404, `{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404,` +
		`"message":"daemonsets.apps \"kmesh\" not found","details":{"name":"kmesh","group":"apps","kind":"daemonsets"}}`}
	apiUnauthorized = apiAnswer{401, `{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"Unauthorized","code":401}`}
	apiForbidden    = apiAnswer{403, `{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"Forbidden","code":403}`}
	apiBroken       = apiAnswer{500, `etcdserver: request timed out`}
)

// withAPI points the node's installer at a fake API server and names its
// DaemonSet; the server's certificate becomes the service account's CA.
func (n *node) withAPI(answers ...apiAnswer) *fakeAPI {
	n.t.Helper()
	f := &fakeAPI{answers: answers}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests++
		if got := r.Header.Get("Authorization"); got != "Bearer token-1" {
			f.badAuth = got
		}
		if r.Method != http.MethodGet || r.URL.Path != dsPath {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
			return
		}
		a := f.answers[0]
		if len(f.answers) > 1 {
			f.answers = f.answers[1:]
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.code)
		w.Write([]byte(a.body))
	}))
	n.t.Cleanup(f.srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(n.cfg.CAFile, ca, 0o644); err != nil {
		n.t.Fatal(err)
	}
	n.cfg.APIServer = f.srv.URL
	n.cfg.DaemonSetName = "kmesh"
	n.cfg.DaemonSetNamespace = "kmesh-system"
	n.cfg.ExitCheckTimeout = 2 * time.Second
	return f
}

func (f *fakeAPI) set(answers ...apiAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers = answers
}

func (f *fakeAPI) check(t *testing.T, minRequests int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.requests < minRequests {
		t.Errorf("%d look-ups of the DaemonSet, want at least %d", f.requests, minRequests)
	}
	if f.badAuth != "" {
		t.Errorf("the look-up carried Authorization %q, want the service-account token", f.badAuth)
	}
}

// stopKept stops the installer, which must exit cleanly and leave the
// entry, binaries, kubeconfig and state where they were.
func (n *node) stopKept(stop func() error, list string) {
	n.t.Helper()
	before := n.read(n.conf(list))
	if err := stop(); err != nil {
		n.t.Fatal(err)
	}
	if got := n.read(n.conf(list)); got != before {
		n.t.Errorf("%s changed on stop:\n%s\nwant:\n%s", list, got, before)
	}
	n.wantInstalled()
	if _, err := os.Stat(n.conf(stateName)); err != nil {
		n.t.Errorf("install state: %v", err)
	}
}

// A rolling upgrade or a node reboot stops the installer while its
// DaemonSet stays: kmesh-cni stays in the chain, so pods created before
// the next installer pod runs still go through it. That pod adopts what it
// finds, and the real uninstall later restores the node as it was.
func TestStopKeepsThePluginWhileTheDaemonSetExists(t *testing.T) {
	for _, tc := range []struct{ name, file, content, list string }{
		{"conflist", "10-flannel.conflist", flannel, "10-flannel.conflist"},
		{"conf", "10-bridge.conf", bridgeConf, "10-bridge.conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			api := n.withAPI(dsPresent)
			n.write(n.conf(tc.file), tc.content)
			want := append(mustChain(t, tc.content), "kmesh-cni")

			stop := n.start()
			n.wantChain(2*time.Second, tc.list, want...)
			n.stopKept(stop, tc.list)
			n.wantChain(0, tc.list, want...)
			if !strings.Contains(n.logs.String(), "the DaemonSet is still there") {
				t.Error("the decision to keep kmesh-cni is not logged")
			}
			api.check(t, 1)

			// The next installer pod starts over the kept installation.
			kept := n.read(n.conf(tc.list))
			keptInfo, _ := os.Stat(n.conf(tc.list))
			stop = n.start()
			n.eventually(2*time.Second, "the second installer copied its binaries", func() error {
				if c := strings.Count(n.logs.String(), "installed binary"); c < 2*len(n.cfg.Binaries) {
					return os.ErrNotExist
				}
				return nil
			})
			time.Sleep(300 * time.Millisecond) // its first check and the events it causes
			if got := n.read(n.conf(tc.list)); got != kept {
				t.Errorf("the next installer changed the conflist:\n%s\nwant:\n%s", got, kept)
			}
			if info, _ := os.Stat(n.conf(tc.list)); !info.ModTime().Equal(keptInfo.ModTime()) {
				t.Error("the next installer rewrote the conflist with the same content")
			}

			// Now kmesh is deleted: everything goes, the original comes back.
			api.set(dsAbsent)
			n.stopUninstalled(stop, map[string]string{tc.file: tc.content})
		})
	}
}

// The DaemonSet gone or being deleted, the service account or its role
// gone (kmesh being deleted as a whole), or an explicit request: uninstall.
func TestStopUninstallsWhenKmeshGoes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers []apiAnswer
		flag    bool
		minReq  int
	}{
		{name: "DaemonSet absent", answers: []apiAnswer{dsAbsent}, minReq: 1},
		{name: "DaemonSet being deleted", answers: []apiAnswer{dsDeleting}, minReq: 1},
		{name: "service account gone", answers: []apiAnswer{apiUnauthorized}, minReq: 1},
		{name: "role gone", answers: []apiAnswer{apiForbidden}, minReq: 1},
		{name: "absent after an API error", answers: []apiAnswer{apiBroken, dsAbsent}, minReq: 2},
		{name: "--uninstall-on-exit", answers: []apiAnswer{dsPresent}, flag: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			api := n.withAPI(tc.answers...)
			n.cfg.UninstallOnExit = tc.flag
			n.write(n.conf("10-flannel.conflist"), flannel)
			stop := n.start()
			n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
			n.stopUninstalled(stop, map[string]string{"10-flannel.conflist": flannel})
			api.check(t, tc.minReq)
		})
	}
}

// When the API server cannot say, the plugin stays: a node going down is
// the likely cause, and removing the entry then is the failure this check
// exists to avoid. The warning names what was left.
func TestStopKeepsThePluginWhenTheAPIFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		down bool
	}{
		{name: "server errors"},
		{name: "server unreachable", down: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			api := n.withAPI(apiBroken)
			n.cfg.ExitCheckTimeout = time.Second
			n.write(n.conf("10-flannel.conflist"), flannel)
			stop := n.start()
			n.wantChain(2*time.Second, "10-flannel.conflist", "flannel", "portmap", "kmesh-cni")
			if tc.down {
				api.srv.Close()
			}
			start := time.Now()
			n.stopKept(stop, "10-flannel.conflist")
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("the stop took %v; the look-up must give up within its timeout", d)
			}
			if !strings.Contains(n.logs.String(), "cannot tell whether the DaemonSet still exists") {
				t.Error("the failed look-up is not logged")
			}
			if !tc.down {
				api.check(t, 2) // retried
			}
		})
	}
}

// A DaemonSet to look up needs its namespace and the credentials to ask.
func TestNewChecksTheDaemonSetSettings(t *testing.T) {
	n := newNode(t)
	n.cfg.DaemonSetName = "kmesh"
	if _, err := New(n.cfg); err == nil || !strings.Contains(err.Error(), "--daemonset-namespace") {
		t.Errorf("a DaemonSet without a namespace: %v", err)
	}
	n.cfg.DaemonSetNamespace = "kmesh-system"
	n.cfg.KubeconfigPath, n.cfg.TokenFile = "", ""
	if _, err := New(n.cfg); err == nil {
		t.Error("a DaemonSet look-up without a token was accepted")
	}
	n.cfg.TokenFile = filepath.Join(t.TempDir(), "token")
	if _, err := New(n.cfg); err != nil {
		t.Error(err)
	}
}
