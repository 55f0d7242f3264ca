package kubernetes

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"

	"github.com/kmesh-go/kmesh/install/installer"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// objects are the decoded manifests, by kind.
type objects struct {
	namespaces      map[string]*corev1.Namespace
	serviceAccounts map[string]*corev1.ServiceAccount // by namespace/name
	clusterRoles    map[string]*rbacv1.ClusterRole
	bindings        []*rbacv1.ClusterRoleBinding
	roles           map[string]*rbacv1.Role // by namespace/name
	roleBindings    []*rbacv1.RoleBinding
	daemonSets      []*appsv1.DaemonSet
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decoder decodes the kinds the manifests use, strictly: an unknown or
// duplicate field, or a field name in the wrong case, is an error (the API
// server's own strict field validation), where plain encoding/json would
// drop it or match it case-insensitively.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
}()

func decodeStrict(doc []byte) (runtime.Object, error) {
	obj, _, err := decoder.Decode(doc, nil, nil)
	return obj, err
}

func load(t *testing.T) objects {
	t.Helper()
	o := objects{
		namespaces:      map[string]*corev1.Namespace{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		clusterRoles:    map[string]*rbacv1.ClusterRole{},
		roles:           map[string]*rbacv1.Role{},
	}
	files, err := fs.Glob(Manifests, "*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests embedded: %v", err)
	}
	for _, file := range files {
		content, err := Manifests.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(content), -1) {
			where := fmt.Sprintf("%s document %d", file, i+1)
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			switch v := obj.(type) {
			case *corev1.Namespace:
				o.namespaces[v.Name] = v
			case *corev1.ServiceAccount:
				o.serviceAccounts[v.Namespace+"/"+v.Name] = v
			case *rbacv1.ClusterRole:
				o.clusterRoles[v.Name] = v
			case *rbacv1.ClusterRoleBinding:
				o.bindings = append(o.bindings, v)
			case *rbacv1.Role:
				o.roles[v.Namespace+"/"+v.Name] = v
			case *rbacv1.RoleBinding:
				o.roleBindings = append(o.roleBindings, v)
			case *appsv1.DaemonSet:
				o.daemonSets = append(o.daemonSets, v)
			default:
				t.Errorf("%s: %T is a kind this test does not check yet; add it", where, obj)
			}
		}
	}
	return o
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// The strict decoder is what catches typos; make sure it does.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	content, err := Manifests.ReadFile("20-daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeStrict(content); err != nil {
		t.Fatalf("the DaemonSet does not decode: %v", err)
	}
	for _, typo := range [][2]string{
		{"mountPropagation:", "mountPropogation:"},
		{"serviceAccountName:", "serviceAccount_name:"},
		{"readinessProbe:", "readynessProbe:"},
		{"fieldPath:", "fieldpath:"},
		{"      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwork: false\n"},
		{"kind: DaemonSet", "kind: DaemonSett"},
	} {
		bad := strings.Replace(string(content), typo[0], typo[1], 1)
		if _, err := decodeStrict([]byte(bad)); err == nil {
			t.Errorf("a typo (%s) decoded without an error", typo[1])
		}
	}
}

func TestManifests(t *testing.T) {
	o := load(t)
	if t.Failed() {
		return
	}
	if len(o.daemonSets) != 1 {
		t.Fatalf("want one DaemonSet, have %d", len(o.daemonSets))
	}
	ds := o.daemonSets[0]
	for _, ns := range []string{ds.Namespace} {
		if o.namespaces[ns] == nil {
			t.Errorf("namespace %q is not in the manifests", ns)
		}
	}
	for key, sa := range o.serviceAccounts {
		if o.namespaces[sa.Namespace] == nil {
			t.Errorf("service account %s: namespace not in the manifests", key)
		}
	}

	// Identity: the DaemonSet runs as a service account the binding grants
	// the role to.
	spec := &ds.Spec.Template.Spec
	saKey := ds.Namespace + "/" + spec.ServiceAccountName
	if o.serviceAccounts[saKey] == nil {
		t.Errorf("DaemonSet service account %s does not exist", saKey)
	}
	granted := false
	for _, b := range o.bindings {
		if b.RoleRef.APIGroup != rbacv1.GroupName || b.RoleRef.Kind != "ClusterRole" {
			t.Errorf("binding %s: roleRef %+v is not a ClusterRole", b.Name, b.RoleRef)
			continue
		}
		role := o.clusterRoles[b.RoleRef.Name]
		if role == nil {
			t.Errorf("binding %s names ClusterRole %q, which does not exist", b.Name, b.RoleRef.Name)
			continue
		}
		for _, s := range b.Subjects {
			if s.Kind != rbacv1.ServiceAccountKind || o.serviceAccounts[s.Namespace+"/"+s.Name] == nil {
				t.Errorf("binding %s: subject %+v is not a service account in the manifests", b.Name, s)
				continue
			}
			if s.Namespace+"/"+s.Name == saKey {
				granted = true
				for _, need := range []struct{ resource, verbs string }{
					{"pods", "get list watch patch"},
					{"namespaces", "get list watch"},
					{"nodes", "get list watch"},
				} {
					for _, verb := range strings.Fields(need.verbs) {
						if !allows(role.Rules, "", need.resource, verb) {
							t.Errorf("ClusterRole %s does not allow %s %s", role.Name, verb, need.resource)
						}
					}
				}
			}
		}
	}
	if !granted {
		t.Errorf("no ClusterRoleBinding grants %s a role", saKey)
	}

	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("DaemonSet selector %v does not select its own pods (%v)", ds.Spec.Selector, err)
	}
	if !spec.HostNetwork {
		t.Error("the DaemonSet must run in the host network (the CNI socket, the admin port on 127.0.0.1)")
	}
	checkVolumes(t, spec)

	install := findContainer(spec.InitContainers, "install-cni")
	daemon := findContainer(spec.Containers, "kmesh-daemon")
	if install == nil || daemon == nil {
		t.Fatalf("want an install-cni init container and a kmesh-daemon container")
	}

	// The daemon's flags and where they land on the node.
	if len(daemon.Command) != 1 || daemon.Command[0] != "kmesh-daemon" {
		t.Errorf("daemon command %q", daemon.Command)
	}
	if daemon.SecurityContext == nil || daemon.SecurityContext.Privileged == nil || !*daemon.SecurityContext.Privileged {
		t.Error("the daemon must be privileged (BPF, cgroup attach, netns)")
	}
	args := parseArgs(t, daemon.Args)
	for flag, want := range map[string]string{
		"bpf-dir":        "/sys/fs/bpf/kmesh",
		"cni-socket":     "/var/run/kmesh/cni.sock",
		"xds-address":    "istiod.istio-system.svc:15012",
		"node-name":      "$(NODE_NAME)",
		"admin-address":  "unix:/var/run/kmesh/admin.sock",
		"status-address": "127.0.0.1:15200",
	} {
		if args[flag] != want {
			t.Errorf("daemon --%s=%q, want %q", flag, args[flag], want)
		}
	}
	if cg, ok := args["cgroup-root"]; !ok {
		t.Error("daemon has no --cgroup-root")
	} else if host, _ := hostPathOf(spec, daemon, cg); host != "/sys/fs/cgroup" {
		t.Errorf("daemon --cgroup-root=%s is %q on the node, want the cgroup2 mount /sys/fs/cgroup", cg, host)
	}
	daemonBPF, _ := hostPathOf(spec, daemon, args["bpf-dir"])
	daemonSocket, _ := hostPathOf(spec, daemon, args["cni-socket"])
	if daemonBPF != "/sys/fs/bpf/kmesh" || daemonSocket != "/var/run/kmesh/cni.sock" {
		t.Errorf("daemon pins in %q and serves CNI on %q on the node", daemonBPF, daemonSocket)
	}
	for name, field := range map[string]string{
		"NODE_NAME":       "spec.nodeName",
		"POD_NAME":        "metadata.name",
		"POD_NAMESPACE":   "metadata.namespace",
		"INSTANCE_IP":     "status.hostIP",
		"SERVICE_ACCOUNT": "spec.serviceAccountName",
	} {
		if !fromField(daemon, name, field) {
			t.Errorf("daemon env %s does not come from %s", name, field)
		}
	}
	if p := daemon.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "127.0.0.1" ||
		p.HTTPGet.Path != "/ready" || p.HTTPGet.Port.IntValue() != 15200 {
		t.Errorf("daemon readiness probe %+v, want GET http://127.0.0.1:15200/ready (the status address)", p)
	}
	// The admin socket is on the node, where kmeshctl in the pod and on
	// the node finds it.
	if host, _ := hostPathOf(spec, daemon, strings.TrimPrefix(args["admin-address"], "unix:")); host != "/var/run/kmesh/admin.sock" {
		t.Errorf("daemon admin socket is %q on the node", host)
	}
	if !mountsVolume(spec, daemon, func(v corev1.Volume) bool {
		if v.Projected == nil {
			return false
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "istio-ca" {
				return true
			}
		}
		return false
	}) {
		t.Error("the daemon has no service-account token for audience istio-ca")
	}
	if !mountsVolume(spec, daemon, func(v corev1.Volume) bool {
		return v.ConfigMap != nil && v.ConfigMap.Name == "istio-ca-root-cert"
	}) {
		t.Error("the daemon does not mount the istio-ca-root-cert ConfigMap")
	}

	// The installer: its arguments parse, its host paths are really on the
	// node, and the entry it writes points where the daemon listens and pins.
	if len(install.Command) != 1 || install.Command[0] != "kmesh-install" {
		t.Errorf("install command %q", install.Command)
	}
	if install.RestartPolicy == nil || *install.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("install-cni must keep running (a sidecar: restartPolicy Always) to watch and to uninstall on SIGTERM")
	}
	cfg, err := installer.ParseArgs(install.Args, io.Discard)
	if err != nil {
		t.Fatalf("install-cni args: %v", err)
	}
	for _, p := range []string{cfg.CNIBinDir, cfg.CNIConfDir, path.Dir(cfg.KubeconfigPath)} {
		if host, ok := hostPathOf(spec, install, path.Join(cfg.HostRoot, p)); !ok || host != p {
			t.Errorf("installer writes %s under --host-root, which is %q on the node, want %s", p, host, p)
		}
	}
	if cfg.Entry.DaemonSocket != daemonSocket {
		t.Errorf("kmesh-cni dials %q; the daemon listens on %q", cfg.Entry.DaemonSocket, daemonSocket)
	}
	if cfg.Entry.BPFDir != daemonBPF {
		t.Errorf("kmesh-cni looks for maps in %q; the daemon pins them in %q", cfg.Entry.BPFDir, daemonBPF)
	}
	// The daemon reads the records where the plugin writes them.
	pluginState := cfg.Entry.StateDir
	if pluginState == "" {
		pluginState = conf.DefaultStateDir
	}
	if host, _ := hostPathOf(spec, daemon, args["cni-state-dir"]); host != pluginState {
		t.Errorf("the daemon reads kmesh-cni's records from %q on the node (--cni-state-dir=%q); the plugin writes them to %q",
			host, args["cni-state-dir"], pluginState)
	}
	// On stop, the installer looks up its own DaemonSet to tell an upgrade
	// (keep kmesh-cni on the node) from an uninstall: it must name this
	// DaemonSet, and its account must be allowed to get it.
	if cfg.DaemonSetName != ds.Name {
		t.Errorf("install-cni --daemonset=%q, want this DaemonSet, %q", cfg.DaemonSetName, ds.Name)
	}
	if ns := cfg.DaemonSetNamespace; ns != ds.Namespace && !(ns == "$(POD_NAMESPACE)" && fromField(install, "POD_NAMESPACE", "metadata.namespace")) {
		t.Errorf("install-cni --daemonset-namespace=%q is neither %q nor $(POD_NAMESPACE) from metadata.namespace", ns, ds.Namespace)
	}
	if !o.mayGetDaemonSet(saKey, ds.Namespace, ds.Name) {
		t.Errorf("no Role bound to %s allows get on daemonsets/%s in %s", saKey, ds.Name, ds.Namespace)
	}
	if cfg.UninstallOnExit {
		t.Error("install-cni --uninstall-on-exit: an upgrade would take kmesh-cni off the node")
	}
	if cfg.Entry.FailurePolicy != "open" {
		t.Errorf("failurePolicy %q: a cluster's default should let pods start while the daemon is down", cfg.Entry.FailurePolicy)
	}
}

// mayGetDaemonSet says whether a RoleBinding in namespace grants the service
// account sa (namespace/name) a Role that allows get on that DaemonSet.
func (o objects) mayGetDaemonSet(sa, namespace, name string) bool {
	for _, b := range o.roleBindings {
		if b.Namespace != namespace || b.RoleRef.APIGroup != rbacv1.GroupName || b.RoleRef.Kind != "Role" {
			continue
		}
		role := o.roles[namespace+"/"+b.RoleRef.Name]
		if role == nil {
			continue
		}
		for _, s := range b.Subjects {
			if s.Kind != rbacv1.ServiceAccountKind || s.Namespace+"/"+s.Name != sa {
				continue
			}
			for _, r := range role.Rules {
				if allows([]rbacv1.PolicyRule{r}, "apps", "daemonsets", "get") &&
					(len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, name)) {
					return true
				}
			}
		}
	}
	return false
}

func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	has := func(list []string, v string) bool {
		for _, x := range list {
			if x == v || x == "*" {
				return true
			}
		}
		return false
	}
	for _, r := range rules {
		if has(r.APIGroups, group) && has(r.Resources, resource) && has(r.Verbs, verb) {
			return true
		}
	}
	return false
}

var hostPathTypes = map[corev1.HostPathType]bool{
	corev1.HostPathUnset: true, corev1.HostPathDirectoryOrCreate: true, corev1.HostPathDirectory: true,
	corev1.HostPathFileOrCreate: true, corev1.HostPathFile: true, corev1.HostPathSocket: true,
	corev1.HostPathCharDev: true, corev1.HostPathBlockDev: true,
}

// checkVolumes: names are unique, every mount names a volume, every volume is
// mounted, and the enum values the decoder cannot check are valid.
func checkVolumes(t testing.TB, spec *corev1.PodSpec) {
	t.Helper()
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			t.Errorf("volume %q declared twice", v.Name)
		}
		volumes[v.Name] = true
		if v.HostPath != nil && (!hostPathTypes[*hostPathType(v.HostPath)] || !path.IsAbs(v.HostPath.Path)) {
			t.Errorf("volume %q: bad hostPath %+v", v.Name, v.HostPath)
		}
	}
	used := map[string]bool{}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		paths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("container %s mounts volume %q, which does not exist", c.Name, m.Name)
			}
			used[m.Name] = true
			if paths[m.MountPath] {
				t.Errorf("container %s mounts two volumes at %s", c.Name, m.MountPath)
			}
			paths[m.MountPath] = true
			if p := m.MountPropagation; p != nil {
				switch *p {
				case corev1.MountPropagationNone, corev1.MountPropagationHostToContainer:
				case corev1.MountPropagationBidirectional:
					if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
						t.Errorf("container %s: Bidirectional propagation needs a privileged container", c.Name)
					}
				default:
					t.Errorf("container %s: mountPropagation %q is not a valid value", c.Name, *p)
				}
			}
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("volume %q is mounted nowhere", name)
		}
	}
}

func hostPathType(h *corev1.HostPathVolumeSource) *corev1.HostPathType {
	if h.Type == nil {
		unset := corev1.HostPathUnset
		return &unset
	}
	return h.Type
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// hostPathOf maps a path inside container c to the node's path, through the
// deepest hostPath mount that holds it.
func hostPathOf(spec *corev1.PodSpec, c *corev1.Container, p string) (string, bool) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) &&
			(best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return "", false
	}
	for _, v := range spec.Volumes {
		if v.Name == best.Name && v.HostPath != nil {
			return path.Join(v.HostPath.Path, strings.TrimPrefix(p, best.MountPath)), true
		}
	}
	return "", false
}

func mountsVolume(spec *corev1.PodSpec, c *corev1.Container, match func(corev1.Volume) bool) bool {
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && match(v) {
				return true
			}
		}
	}
	return false
}

func fromField(c *corev1.Container, name, field string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == field
		}
	}
	return false
}

// parseArgs reads --flag=value and --flag value arguments.
func parseArgs(t testing.TB, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("stray argument %q", a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if k, v, ok := strings.Cut(name, "="); ok {
			out[k] = v
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out[name] = args[i+1]
			i++
			continue
		}
		out[name] = "true"
	}
	return out
}
