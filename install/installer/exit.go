package installer

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/kmesh-go/kmesh/install/kubeconfig"
)

// exitRetry is the pause between two look-ups of the DaemonSet that failed
// for a reason that may pass (the API server unreachable, overloaded).
const exitRetry = 500 * time.Millisecond

// shouldUninstall decides, as the installer stops, whether to take kmesh-cni
// off the node or leave it for the next installer pod. Istio's CNI agent
// (cni/pkg/nodeagent/server.go, ShouldStopCleanup) makes the same choice:
// while the DaemonSet exists and is not being deleted, a stopping pod is an
// upgrade or a node going down, and a new pod will take over on this node.
// Removing the entry in between lets every pod created meanwhile start
// outside the mesh, whatever the failurePolicy.
func (in *Installer) shouldUninstall() bool {
	if in.cfg.UninstallOnExit {
		in.log.Info("uninstalling on exit, as --uninstall-on-exit asks")
		return true
	}
	if in.cfg.DaemonSetName == "" {
		// Not run by a DaemonSet (or not told which): nothing will come
		// back to take over, so leave nothing behind.
		return true
	}
	ds := in.cfg.DaemonSetNamespace + "/" + in.cfg.DaemonSetName
	client, err := in.metadataClient()
	if err != nil {
		in.log.Warn("cannot build an API client to look up the DaemonSet; leaving kmesh-cni in place for the next installer pod",
			"daemonset", ds, "err", err)
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.ExitCheckTimeout)
	defer cancel()
	for {
		got, err := client.Resource(daemonSets).Namespace(in.cfg.DaemonSetNamespace).Get(ctx, in.cfg.DaemonSetName, metav1.GetOptions{})
		switch {
		case err == nil && got.DeletionTimestamp == nil:
			in.log.Info("the DaemonSet is still there: an upgrade or a node going down; leaving kmesh-cni in place for the next installer pod",
				"daemonset", ds)
			return false
		case err == nil:
			in.log.Info("the DaemonSet is being deleted; uninstalling", "daemonset", ds)
			return true
		case apierrors.IsNotFound(err):
			in.log.Info("the DaemonSet is gone; uninstalling", "daemonset", ds)
			return true
		case apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
			// The service account (401) or its role (403) went away: an
			// uninstall that deletes everything, where the DaemonSet may
			// outlive the RBAC objects for a moment. Istio takes 401 the
			// same way; 403 is added because kubectl delete -f removes the
			// manifests in file order, the role before the DaemonSet.
			in.log.Info("no longer allowed to read the DaemonSet, as when kmesh is being deleted; uninstalling",
				"daemonset", ds, "err", err)
			return true
		}
		select {
		case <-ctx.Done():
			// Most likely the node or its network is going down, which is
			// when the plugin must stay (the Istio CNI agent with its own
			// conf file keeps it too). The cost of being wrong is an entry
			// left after a real uninstall, which this log names.
			in.log.Warn("cannot tell whether the DaemonSet still exists; leaving kmesh-cni in place for the next installer pod "+
				"(if kmesh is being removed, remove the kmesh-cni entry, binaries and kubeconfig by hand)",
				"daemonset", ds, "err", err)
			return false
		case <-time.After(exitRetry):
		}
	}
}

var daemonSets = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}

// metadataClient reaches the API server with the pod's service-account token
// and CA, the ones the plugin's kubeconfig carries. Only the DaemonSet's
// metadata is needed, and the metadata client keeps the API's typed objects
// out of this small binary.
func (in *Installer) metadataClient() (metadata.Interface, error) {
	server := in.cfg.APIServer
	if server == "" {
		var err error
		if server, err = kubeconfig.ServerFromEnv(); err != nil {
			return nil, err
		}
	}
	return metadata.NewForConfig(&rest.Config{
		Host:            server,
		BearerTokenFile: in.cfg.TokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAFile: in.cfg.CAFile},
		UserAgent:       "kmesh-install",
		Timeout:         in.cfg.ExitCheckTimeout,
	})
}

// checkExitConfig checks the settings shouldUninstall needs.
func checkExitConfig(cfg *Config) error {
	if cfg.DaemonSetName == "" {
		return nil
	}
	if cfg.DaemonSetNamespace == "" {
		return errors.New("--daemonset needs --daemonset-namespace")
	}
	if cfg.TokenFile == "" || cfg.CAFile == "" {
		return fmt.Errorf("looking up DaemonSet %s/%s needs the token and CA files", cfg.DaemonSetNamespace, cfg.DaemonSetName)
	}
	return nil
}
