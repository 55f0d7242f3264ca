package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StartControllers runs kube-controller-manager and kube-scheduler beside
// the apiserver, for clusters with real kubelets (Options.Nodes): Deployments
// and DaemonSets get their pods, pods get scheduled, namespaces get their
// default ServiceAccount and kube-root-ca.crt, Services their
// EndpointSlices. Both serve /healthz on loopback only and take no leader
// lease (there is one of each). Stop stops them with the rest.
func (cp *ControlPlane) StartControllers(ctx context.Context) error {
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(cp.opts.BinDir, name)); err != nil {
			return fmt.Errorf("%s not found in %s (build it with tests/e2e/tools/build.sh): %w", name, cp.opts.BinDir, err)
		}
	}
	if slices.ContainsFunc(cp.procs, func(p *process) bool { return p.name == "kube-controller-manager" }) {
		return errors.New("the controllers are already running")
	}
	kcm, err := cp.start("kube-controller-manager", cp.env(), filepath.Join(cp.opts.BinDir, "kube-controller-manager"),
		"--kubeconfig="+cp.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--leader-elect=false",
		"--root-ca-file="+cp.CAFile,
		"--service-account-private-key-file="+cp.SAKeyFile,
		"--use-service-account-credentials=false",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	// Loopback-only, anonymous /healthz (always allowed without an
	// authentication kubeconfig); the certificate is self-signed.
	client := &http.Client{Transport: &http.Transport{
		DialContext:     cp.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	defer client.CloseIdleConnections()
	if err := kcm.waitReady(ctx, cp.opts.ReadyTimeout, func(ctx context.Context) error {
		return httpOK(ctx, client, "https://127.0.0.1:10257/healthz", "")
	}); err != nil {
		return err
	}
	sched, err := cp.start("kube-scheduler", cp.env(), filepath.Join(cp.opts.BinDir, "kube-scheduler"),
		"--kubeconfig="+cp.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=10259",
		"--leader-elect=false",
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	if err := sched.waitReady(ctx, cp.opts.ReadyTimeout, func(ctx context.Context) error {
		return httpOK(ctx, client, "https://127.0.0.1:10259/healthz", "")
	}); err != nil {
		return err
	}
	// Pods in "default" (and every namespace made later) need their
	// ServiceAccount before the admission plugin lets them in.
	return kcm.waitReady(ctx, cp.opts.ReadyTimeout, func(ctx context.Context) error {
		return cp.serviceAccountExists(ctx, "default", "default")
	})
}

func (cp *ControlPlane) serviceAccountExists(ctx context.Context, namespace, name string) error {
	_, err := cp.Clientset.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("no ServiceAccount %s/%s yet", namespace, name)
	}
	return err
}

// WaitServiceAccount waits until the controller-manager has made a
// namespace's ServiceAccount (pods cannot be created in it before).
func (cp *ControlPlane) WaitServiceAccount(ctx context.Context, namespace, name string) error {
	for {
		err := cp.serviceAccountExists(ctx, namespace, name)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%v (%w)", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
