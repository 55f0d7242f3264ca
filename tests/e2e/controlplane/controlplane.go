// Package controlplane runs a real Kubernetes and Istio control plane for
// end-to-end tests: etcd, kube-apiserver with the Istio CRDs, and istiod
// (pilot-discovery) with ambient mode on. Everything listens on 127.0.0.1,
// optionally inside a network namespace that has only loopback, so nothing
// can leave the machine. There is no kubelet, scheduler or controller-manager:
// tests write Pod status themselves.
//
// The binaries come from tests/e2e/tools/build.sh; etcd is Debian's.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Addresses the control plane listens on, inside its network namespace when
// it has one.
const (
	etcdAddr            = "127.0.0.1:2379"
	etcdPeerAddr        = "127.0.0.1:2380"
	apiServerAddr       = "127.0.0.1:6443"
	istiodPlaintextAddr = "127.0.0.1:15010"
	istiodTLSAddr       = "127.0.0.1:15012"
	istiodHTTPAddr      = "127.0.0.1:8080"
	istiodWebhookAddr   = "127.0.0.1:15017"
	istiodMonitorAddr   = "127.0.0.1:15014"

	// IstioNamespace is where istiod runs and keeps its CA.
	IstioNamespace = "istio-system"
	// IstiodServerName is a name in istiod's serving certificate, for TLS
	// clients of IstiodTLSAddr.
	IstiodServerName = "istiod.istio-system.svc"
	// IstioCAAudience is the token audience istiod accepts.
	IstioCAAudience = "istio-ca"
	// RootCertConfigMap is the ConfigMap istiod writes its root cert to in
	// every namespace, under the key RootCertKey.
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
	// ServiceCIDR is the apiserver's service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"
)

// Options says where and how to run the control plane.
type Options struct {
	// Dir holds certificates, etcd's data and the logs (etcd.log,
	// kube-apiserver.log, istiod.log). Empty means a new temporary folder,
	// removed by Stop; a given Dir keeps its logs after Stop.
	Dir string
	// NetNS, when set, is a named network namespace (made by the caller,
	// e.g. with AddLoopbackNetNS) that every process runs in.
	NetNS string
	// BinDir holds kube-apiserver and pilot-discovery. Default: the
	// KMESH_E2E_BIN environment variable, else tests/e2e/.bin.
	BinDir string
	// Etcd is the etcd binary. Default: etcd on PATH, else /usr/bin/etcd.
	Etcd string
	// CRDFile is the Istio CRD manifest. Default: crd-all.gen.yaml of the
	// istio.io/istio version pinned in tests/e2e/tools/go.mod.
	CRDFile string
	// ExtraCRDFiles are more CRD manifests applied with the Istio ones,
	// before istiod starts (e.g. GatewayAPICRDs: istiod only watches the
	// Gateway API kinds whose CRDs exist when it starts).
	ExtraCRDFiles []string
	// ReadyTimeout bounds each component's wait to become ready. Default 60s.
	ReadyTimeout time.Duration
	// IstiodEnv adds or overrides environment variables of istiod.
	IstiodEnv []string
	// Nodes says real kubelets will join (tests/kubenode): the ServiceAccount
	// admission plugin stays on, so pods get their token volumes (a
	// controller-manager, StartControllers, makes the accounts), and the
	// apiserver reaches kubelets at their InternalIP for logs and exec.
	Nodes bool
}

// ControlPlane is a running etcd, kube-apiserver and istiod.
type ControlPlane struct {
	// Dir is where certificates, data and logs are.
	Dir string
	// NetNS is the network namespace everything runs in, or "".
	NetNS string
	// Kubeconfig is the path of a kubeconfig for the admin token. Processes
	// run inside NetNS can use it as is.
	Kubeconfig string
	// RESTConfig is the admin config for this process; when NetNS is set it
	// dials into NetNS.
	RESTConfig *rest.Config
	// Clientset is a client-go clientset built from RESTConfig.
	Clientset *kubernetes.Clientset
	// AdminToken is a bearer token with full access to the apiserver.
	AdminToken string
	// APIServerURL is https://127.0.0.1:6443.
	APIServerURL string
	// IstiodPlaintextAddr serves xDS without authentication.
	IstiodPlaintextAddr string
	// IstiodTLSAddr serves xDS over TLS to clients with a token for
	// IstioCAAudience.
	IstiodTLSAddr string
	// CAFile is the cluster CA (it signed the apiserver's certificate);
	// SAKeyFile signs service-account tokens.
	CAFile, SAKeyFile string

	ownDir     bool
	procs      []*process // in start order
	istiodOpts Options    // to start istiod again
	opts       Options
	stopOnce   sync.Once
	stopErr    error
}

// Start brings up etcd, kube-apiserver, the Istio CRDs, the istio-system
// namespace and istiod, waiting for each to be ready. On error everything
// started so far is stopped again. Typical start takes about 10 s.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if err := opts.fillDefaults(); err != nil {
		return nil, err
	}
	if opts.NetNS != "" && !NetNSExists(opts.NetNS) {
		return nil, fmt.Errorf("network namespace %q does not exist under %s", opts.NetNS, netnsDir)
	}
	cp := &ControlPlane{
		Dir:                 opts.Dir,
		NetNS:               opts.NetNS,
		APIServerURL:        "https://" + apiServerAddr,
		IstiodPlaintextAddr: istiodPlaintextAddr,
		IstiodTLSAddr:       istiodTLSAddr,
	}
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "kmesh-e2e-controlplane-"); err != nil {
			return nil, err
		}
		cp.ownDir = true
	} else if err := os.MkdirAll(cp.Dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = cp.Stop()
		}
	}()

	keys, err := writePKI(filepath.Join(cp.Dir, "pki"))
	if err != nil {
		return nil, fmt.Errorf("write certificates: %w", err)
	}
	cp.AdminToken = keys.adminToken
	cp.CAFile, cp.SAKeyFile = keys.caCert, keys.saKey
	cp.opts = opts

	if err := cp.startEtcd(ctx, opts); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx, opts, keys); err != nil {
		return nil, err
	}
	if err := cp.connect(keys); err != nil {
		return nil, err
	}
	if err := cp.installIstioBase(ctx, opts); err != nil {
		return nil, err
	}
	if err := cp.startIstiod(ctx, opts); err != nil {
		return nil, err
	}
	return cp, nil
}

func (o *Options) fillDefaults() error {
	if o.BinDir == "" {
		o.BinDir = os.Getenv("KMESH_E2E_BIN")
	}
	if o.BinDir == "" {
		o.BinDir = filepath.Join(e2eDir(), ".bin")
	}
	for _, name := range []string{"kube-apiserver", "pilot-discovery"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, name)); err != nil {
			return fmt.Errorf("%s not found in %s (build it with tests/e2e/tools/build.sh): %w", name, o.BinDir, err)
		}
	}
	if o.Etcd == "" {
		if p, err := exec.LookPath("etcd"); err == nil {
			o.Etcd = p
		} else {
			o.Etcd = "/usr/bin/etcd"
		}
	}
	if _, err := os.Stat(o.Etcd); err != nil {
		return fmt.Errorf("etcd not found (install Debian's etcd-server): %w", err)
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	return nil
}

// e2eDir is tests/e2e, found from this source file.
func e2eDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// env is the environment of every process: nothing inherited from the test,
// so no proxy settings or kubeconfig leak in.
func (cp *ControlPlane) env(extra ...string) []string {
	return append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + cp.Dir,
	}, extra...)
}

func (cp *ControlPlane) start(name string, env []string, argv ...string) (*process, error) {
	workDir := filepath.Join(cp.Dir, name)
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, err
	}
	p, err := startProcess(name, cp.NetNS, workDir, filepath.Join(cp.Dir, name+".log"), env, argv...)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, p)
	return p, nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, opts Options) error {
	p, err := cp.start("etcd", cp.env(), opts.Etcd,
		"--name=default",
		"--data-dir="+filepath.Join(cp.Dir, "etcd", "data"),
		"--listen-client-urls=http://"+etcdAddr,
		"--advertise-client-urls=http://"+etcdAddr,
		"--listen-peer-urls=http://"+etcdPeerAddr,
		"--initial-advertise-peer-urls=http://"+etcdPeerAddr,
		"--initial-cluster=default=http://"+etcdPeerAddr,
	)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: cp.DialContext}}
	defer client.CloseIdleConnections()
	return p.waitReady(ctx, opts.ReadyTimeout, func(ctx context.Context) error {
		return httpOK(ctx, client, "http://"+etcdAddr+"/health", "")
	})
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, opts Options, keys *pki) error {
	// Without a controller-manager no namespace gets a default
	// ServiceAccount, which this plugin would insist on.
	nodeArgs := []string{"--disable-admission-plugins=ServiceAccount"}
	if opts.Nodes {
		// Node agents (kmesh's DaemonSet) run privileged.
		nodeArgs = []string{"--kubelet-preferred-address-types=InternalIP", "--allow-privileged=true"}
	}
	argv := []string{filepath.Join(opts.BinDir, "kube-apiserver"),
		"--etcd-servers=http://" + etcdAddr,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=6443",
		"--tls-cert-file=" + keys.serveCert,
		"--tls-private-key-file=" + keys.serveKey,
		"--cert-dir=" + filepath.Join(cp.Dir, "kube-apiserver", "certs"),
		// No controller-manager keeps the kubernetes Endpoints up to date.
		"--endpoint-reconciler-type=none",
		"--token-auth-file=" + keys.tokensCSV,
		"--anonymous-auth=false",
		"--authorization-mode=AlwaysAllow",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + keys.saPub,
		"--service-account-signing-key-file=" + keys.saKey,
		"--api-audiences=https://kubernetes.default.svc.cluster.local," + IstioCAAudience,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--profiling=false",
	}
	p, err := cp.start("kube-apiserver", cp.env(), append(argv, nodeArgs...)...)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(keys.caPEM)
	client := &http.Client{Transport: &http.Transport{
		DialContext:     cp.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
	defer client.CloseIdleConnections()
	return p.waitReady(ctx, opts.ReadyTimeout, func(ctx context.Context) error {
		return httpOK(ctx, client, cp.APIServerURL+"/readyz", keys.adminToken)
	})
}

// connect writes the kubeconfig and builds the clients.
func (cp *ControlPlane) connect(keys *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kmesh-e2e"] = &clientcmdapi.Cluster{Server: cp.APIServerURL, CertificateAuthorityData: keys.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: keys.adminToken}
	cfg.Contexts["kmesh-e2e"] = &clientcmdapi.Context{Cluster: "kmesh-e2e", AuthInfo: "admin"}
	cfg.CurrentContext = "kmesh-e2e"
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, cp.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	cp.RESTConfig = &rest.Config{
		Host:            cp.APIServerURL,
		BearerToken:     keys.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: keys.caPEM},
		QPS:             100,
		Burst:           200,
	}
	if cp.NetNS != "" {
		cp.RESTConfig.Dial = cp.DialContext
	}
	cs, err := kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		return fmt.Errorf("build clientset: %w", err)
	}
	cp.Clientset = cs
	return nil
}

// installIstioBase does what Istio's base chart would: the CRDs and the
// istio-system namespace.
func (cp *ControlPlane) installIstioBase(ctx context.Context, opts Options) error {
	if err := cp.EnsureNamespace(ctx, IstioNamespace); err != nil {
		return err
	}
	crdFile := opts.CRDFile
	if crdFile == "" {
		var err error
		if crdFile, err = findIstioCRDs(ctx, filepath.Join(e2eDir(), "tools")); err != nil {
			return err
		}
	}
	dyn, err := dynamic.NewForConfig(cp.RESTConfig)
	if err != nil {
		return err
	}
	var names []string
	for _, f := range append([]string{crdFile}, opts.ExtraCRDFiles...) {
		n, err := applyCRDs(ctx, dyn, f)
		if err != nil {
			return err
		}
		names = append(names, n...)
	}
	return waitCRDsEstablished(ctx, dyn, names, opts.ReadyTimeout)
}

func (cp *ControlPlane) startIstiod(ctx context.Context, opts Options) error {
	cp.istiodOpts = opts
	env := cp.env(
		"POD_NAMESPACE="+IstioNamespace,
		"POD_NAME=istiod-0",
		"REVISION=default",
		"PILOT_ENABLE_AMBIENT=true",
		// Skip probing cloud metadata servers: no traffic leaves loopback.
		"CLOUD_PLATFORM=none",
		// No webhook configurations exist to patch.
		"INJECTION_WEBHOOK_CONFIG_NAME=",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	)
	env = append(env, opts.IstiodEnv...)
	p, err := cp.start("istiod", env, filepath.Join(opts.BinDir, "pilot-discovery"), "discovery",
		"--kubeconfig="+cp.Kubeconfig,
		"--grpcAddr="+istiodPlaintextAddr,
		"--secureGRPCAddr="+istiodTLSAddr,
		"--httpAddr="+istiodHTTPAddr,
		"--httpsAddr="+istiodWebhookAddr,
		"--monitoringAddr="+istiodMonitorAddr,
	)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: cp.DialContext}}
	defer client.CloseIdleConnections()
	return p.waitReady(ctx, opts.ReadyTimeout, func(ctx context.Context) error {
		return httpOK(ctx, client, "http://"+istiodHTTPAddr+"/ready", "")
	})
}

// StopIstiod stops istiod (SIGTERM, then SIGKILL after a few seconds),
// leaving etcd and the apiserver running; StartIstiod brings it back.
// Clients of istiod see their streams end, as in a rolling update.
func (cp *ControlPlane) StopIstiod() error {
	i := slices.IndexFunc(cp.procs, func(p *process) bool { return p.name == "istiod" })
	if i < 0 {
		return errors.New("istiod is not running")
	}
	p := cp.procs[i]
	cp.procs = slices.Delete(cp.procs, i, i+1)
	return p.stop(5 * time.Second)
}

// StartIstiod starts istiod again after StopIstiod, with the same flags and
// environment, and waits until it is ready. Its log continues in istiod.log.
func (cp *ControlPlane) StartIstiod(ctx context.Context) error {
	if slices.ContainsFunc(cp.procs, func(p *process) bool { return p.name == "istiod" }) {
		return errors.New("istiod is already running")
	}
	return cp.startIstiod(ctx, cp.istiodOpts)
}

// RestartIstiod is StopIstiod then StartIstiod.
func (cp *ControlPlane) RestartIstiod(ctx context.Context) error {
	if err := cp.StopIstiod(); err != nil {
		return err
	}
	return cp.StartIstiod(ctx)
}

// DialContext connects to an address of the control plane, from inside its
// network namespace when it has one. It fits rest.Config.Dial,
// http.Transport.DialContext and (with "tcp") grpc.WithContextDialer.
func (cp *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return DialInNetNS(ctx, cp.NetNS, network, addr)
}

// EnsureNamespace creates a namespace unless it exists.
func (cp *ControlPlane) EnsureNamespace(ctx context.Context, name string) error {
	_, err := cp.Clientset.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// RootCertPEM returns istiod's root certificate as published in the
// istio-ca-root-cert ConfigMap of namespace, waiting until istiod has
// written it (it does so for every namespace shortly after it appears).
func (cp *ControlPlane) RootCertPEM(ctx context.Context, namespace string) ([]byte, error) {
	var lastErr error
	for {
		cm, err := cp.Clientset.CoreV1().ConfigMaps(namespace).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
		if err == nil {
			if pem := cm.Data[RootCertKey]; pem != "" {
				return []byte(pem), nil
			}
			err = fmt.Errorf("no %s in it yet", RootCertKey)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ConfigMap %s/%s: %v (%w)", namespace, RootCertConfigMap, lastErr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ServiceAccountToken issues a token for namespace/serviceAccount with the
// given audience through the TokenRequest API, creating the namespace and
// ServiceAccount if they are missing (no controller-manager does it here).
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, serviceAccount, audience string) (string, error) {
	if err := cp.EnsureNamespace(ctx, namespace); err != nil {
		return "", err
	}
	sas := cp.Clientset.CoreV1().ServiceAccounts(namespace)
	_, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: serviceAccount}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, serviceAccount, err)
	}
	expiry := int64(3600)
	tr, err := sas.CreateToken(ctx, serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request token for %s/%s (audience %s): %w", namespace, serviceAccount, audience, err)
	}
	return tr.Status.Token, nil
}

// LogPath is the log file of one component: "etcd", "kube-apiserver" or
// "istiod".
func (cp *ControlPlane) LogPath(component string) string {
	return filepath.Join(cp.Dir, component+".log")
}

// LogTail returns about the last n bytes of a component's log.
func (cp *ControlPlane) LogTail(component string, n int64) string {
	return tailFile(cp.LogPath(component), n)
}

// Stop stops istiod, then the apiserver, then etcd (each with SIGTERM, then
// SIGKILL after a few seconds) and removes what Start wrote, except the logs
// in a caller-given Dir. It is safe to call more than once.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		var errs []error
		for i := len(cp.procs) - 1; i >= 0; i-- {
			if err := cp.procs[i].stop(5 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if cp.ownDir {
			errs = append(errs, os.RemoveAll(cp.Dir))
		} else {
			for _, name := range []string{"pki", "etcd", "kube-apiserver", "istiod", "kubeconfig"} {
				errs = append(errs, os.RemoveAll(filepath.Join(cp.Dir, name)))
			}
		}
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// httpOK GETs url and wants a 200.
func httpOK(ctx context.Context, client *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var body [512]byte
		n, _ := resp.Body.Read(body[:])
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body[:n])))
	}
	return nil
}
