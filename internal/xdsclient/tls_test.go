package xdsclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/kmesh-go/kmesh/internal/xdsclient"
)

// testCA is a mesh root that signs istiod's serving certificate.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serving issues a serving certificate for dnsNames, as istiod's is.
func (ca *testCA) serving(t *testing.T, dnsNames ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// authServer is an ADS server that reports the authorization header of
// every stream and ends a stream when told to.
type authServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	auth chan string
	kick chan struct{}
}

func (a *authServer) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	a.auth <- strings.Join(md.Get("authorization"), ",")
	select {
	case <-a.kick:
		return nil // the client reconnects
	case <-s.Context().Done():
		return nil
	}
}

// startADS serves ADS on loopback, over TLS with cert unless plaintext.
func startADS(t *testing.T, cert *tls.Certificate) (string, *authServer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(cert)))
	}
	a := &authServer{auth: make(chan string, 16), kick: make(chan struct{})}
	gs := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, a)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	return l.Addr().String(), a
}

// runTLSClient runs a client for cfg (its Dialer reaching addr whatever
// the target names) until the test ends.
func runTLSClient(t *testing.T, addr string, cfg xdsclient.Config) *xdsclient.Client {
	t.Helper()
	cfg.NodeID = "n"
	cfg.Subscriptions = []xdsclient.Subscription{{TypeURL: typeCDS, Wildcard: true}}
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 50*time.Millisecond
	cfg.Dialer = func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	c, err := xdsclient.New(cfg, newStore())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func nextAuth(t *testing.T, a *authServer, within time.Duration) (string, bool) {
	t.Helper()
	select {
	case s := <-a.auth:
		return s, true
	case <-time.After(within):
		return "", false
	}
}

// An istiod outside istio-system (istiod.istio.svc) carries its own
// namespace's name, not istiod.istio-system.svc: without --xds-server-name
// the client checks the name it dialled, as istio-agent does.
func TestServerNameIsTheAddressHost(t *testing.T) {
	ca := newCA(t)
	cert := ca.serving(t, "istiod.istio.svc", "istiod-remote.istio.svc")
	addr, a := startADS(t, &cert)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "root-cert.pem"), ca.pem)
	writeFile(t, filepath.Join(dir, "token"), []byte("tok\n"))
	c := runTLSClient(t, addr, xdsclient.Config{Address: "passthrough:///istiod.istio.svc:15012",
		RootCertFile: filepath.Join(dir, "root-cert.pem"), TokenFile: filepath.Join(dir, "token")})
	if got, ok := nextAuth(t, a, 5*time.Second); !ok {
		t.Fatalf("no stream to istiod.istio.svc: %s", c.Stats().LastError)
	} else if got != "Bearer tok" {
		t.Fatalf("authorization %q", got)
	}
}

func TestDefaultServerName(t *testing.T) {
	for addr, want := range map[string]string{
		"istiod.istio-system.svc:15012":                    "istiod.istio-system.svc",
		"istiod.istio.svc:15012":                           "istiod.istio.svc",
		"istiod-canary.istio-system.svc:15012":             "istiod-canary.istio-system.svc",
		"istiod.istio-system.svc.cluster.local:15012":      "istiod.istio-system.svc",
		"istiod.istio-system.svc.cluster.local.:15012":     "istiod.istio-system.svc",
		"dns:///istiod.istio.svc:15012":                    "istiod.istio.svc",
		"dns://10.0.0.10:53/istiod.istio-system.svc:15012": "istiod.istio-system.svc",
		"istiod.mesh.example.com:15012":                    "istiod.mesh.example.com",
		"127.0.0.1:15012":                                  "istiod.istio-system.svc",
		"[fd00::1]:15012":                                  "istiod.istio-system.svc",
		"localhost:15012":                                  "istiod.istio-system.svc",
		"":                                                 "istiod.istio-system.svc",
		"unix:///var/run/istiod.sock":                      "istiod.istio-system.svc",
		"unix:/var/run/istiod.sock":                        "istiod.istio-system.svc",
	} {
		if got := xdsclient.DefaultServerName(addr); got != want {
			t.Errorf("DefaultServerName(%q) = %q, want %q", addr, got, want)
		}
	}
}

// A server whose certificate the mesh root did not sign gets no stream,
// so never sees the token; the root file is read again at every connect,
// so a rotated root is trusted without a restart.
func TestServerCheckedAgainstRootReadAtEachConnect(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	cert := ca.serving(t, "istiod.istio-system.svc")
	addr, a := startADS(t, &cert)
	dir := t.TempDir()
	root := filepath.Join(dir, "root-cert.pem")
	writeFile(t, root, other.pem)
	writeFile(t, filepath.Join(dir, "token"), []byte("tok"))
	c := runTLSClient(t, addr, xdsclient.Config{Address: "passthrough:///istiod.istio-system.svc:15012",
		RootCertFile: root, TokenFile: filepath.Join(dir, "token")})
	if got, ok := nextAuth(t, a, 500*time.Millisecond); ok {
		t.Fatalf("a server outside the root got a stream (authorization %q)", got)
	}
	if e := c.Stats().LastError; !strings.Contains(e, "certificate") {
		t.Fatalf("last error %q, want a certificate error", e)
	}
	// Both roots, as istio-ca-root-cert holds them during a rotation.
	writeFile(t, root, append(append([]byte{}, other.pem...), ca.pem...))
	if _, ok := nextAuth(t, a, 5*time.Second); !ok {
		t.Fatalf("the new root was not read: %s", c.Stats().LastError)
	}
}

// The token is read at every connect (the kubelet rotates the projected
// token in place), as istio-agent's token provider reads it per call.
func TestTokenReadAtEachConnect(t *testing.T) {
	ca := newCA(t)
	cert := ca.serving(t, "istiod.istio-system.svc")
	addr, a := startADS(t, &cert)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "root-cert.pem"), ca.pem)
	tok := filepath.Join(dir, "token")
	writeFile(t, tok, []byte("first"))
	runTLSClient(t, addr, xdsclient.Config{Address: "127.0.0.1:15012",
		RootCertFile: filepath.Join(dir, "root-cert.pem"), TokenFile: tok})
	if got, _ := nextAuth(t, a, 5*time.Second); got != "Bearer first" {
		t.Fatalf("first stream: authorization %q", got)
	}
	writeFile(t, tok, []byte("second"))
	a.kick <- struct{}{}
	if got, _ := nextAuth(t, a, 5*time.Second); got != "Bearer second" {
		t.Fatalf("after rotation: authorization %q", got)
	}
}

// Over plaintext (istiod's 15010) the token is never sent, even when a
// token file is configured.
func TestNoTokenOverPlaintext(t *testing.T) {
	addr, a := startADS(t, nil)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "token"), []byte("secret"))
	runTLSClient(t, addr, xdsclient.Config{Address: addr, Plaintext: true, TokenFile: filepath.Join(dir, "token")})
	got, ok := nextAuth(t, a, 5*time.Second)
	if !ok {
		t.Fatal("no plaintext stream")
	}
	if got != "" {
		t.Fatalf("token sent without TLS: %q", got)
	}
}
