package kubernetes

import (
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// waypointObjects are the decoded documents of a waypoint manifest.
type waypointObjects struct {
	gateway    map[string]any // Gateway API types are not in this module
	account    *corev1.ServiceAccount
	service    *corev1.Service
	deployment *appsv1.Deployment
}

func loadWaypoint(t testing.TB, manifest string) waypointObjects {
	t.Helper()
	var o waypointObjects
	for i, doc := range docSeparator.Split(manifest, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		if head.Metadata.Namespace != "" {
			t.Errorf("%s names namespace %q: kubectl apply -n must place the waypoint", head.Kind, head.Metadata.Namespace)
		}
		if head.Kind == "Gateway" {
			if err := yaml.UnmarshalStrict([]byte(doc), &o.gateway); err != nil {
				t.Fatalf("Gateway: %v", err)
			}
			continue
		}
		obj, err := decodeStrict([]byte(doc))
		if err != nil {
			t.Fatalf("document %d (%s): %v", i+1, head.Kind, err)
		}
		switch v := obj.(type) {
		case *corev1.ServiceAccount:
			o.account = v
		case *corev1.Service:
			o.service = v
		case *appsv1.Deployment:
			o.deployment = v
		default:
			t.Fatalf("document %d: %T is a kind this test does not check", i+1, obj)
		}
	}
	if o.gateway == nil || o.account == nil || o.service == nil || o.deployment == nil {
		t.Fatalf("want a Gateway, a ServiceAccount, a Service and a Deployment")
	}
	return o
}

// field walks a decoded YAML tree: strings index maps, ints lists.
func field(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// checkWaypoint checks that a waypoint manifest hangs together under
// name: what istiod needs to take the Gateway as deployed by hand and
// find its pods, and what kmesh-waypoint needs to reach istiod.
func checkWaypoint(t testing.TB, manifest, name string) {
	t.Helper()
	o := loadWaypoint(t, manifest)

	// The Gateway: a waypoint istiod will not deploy itself.
	gw := o.gateway
	if field(gw, "apiVersion") != "gateway.networking.k8s.io/v1" || field(gw, "metadata", "name") != name {
		t.Errorf("Gateway %v %v, want gateway.networking.k8s.io/v1 named %s", field(gw, "apiVersion"), field(gw, "metadata", "name"), name)
	}
	if c := field(gw, "spec", "gatewayClassName"); c != "istio-waypoint" {
		t.Errorf("gatewayClassName %v, want istio-waypoint", c)
	}
	if f := field(gw, "metadata", "labels", "istio.io/waypoint-for"); f != "service" && f != "workload" && f != "all" {
		t.Errorf("label istio.io/waypoint-for = %v", f)
	}
	if l := field(gw, "spec", "listeners", 0); field(l, "port") != float64(15008) || field(l, "protocol") != "HBONE" {
		t.Errorf("first listener %v, want HBONE on 15008 (istiod's waypoint listener)", l)
	}
	// One address of type Hostname naming the Service: istiod's IsManaged
	// is false for exactly that, so its deployment controller skips it.
	addrs, _ := field(gw, "spec", "addresses").([]any)
	if len(addrs) != 1 || field(addrs[0], "type") != "Hostname" || field(addrs[0], "value") != o.service.Name {
		t.Errorf("spec.addresses %v, want one {type: Hostname, value: %s}", addrs, o.service.Name)
	}

	// The Service, account and Deployment carry the name and find the pods.
	for what, got := range map[string]string{
		"ServiceAccount": o.account.Name, "Service": o.service.Name, "Deployment": o.deployment.Name,
		"pod label " + gatewayNameLabel: o.deployment.Spec.Template.Labels[gatewayNameLabel],
		"pod service account":           o.deployment.Spec.Template.Spec.ServiceAccountName,
	} {
		if got != name {
			t.Errorf("%s is %q, want %q", what, got, name)
		}
	}
	pod := &o.deployment.Spec.Template
	if !labels.SelectorFromSet(o.service.Spec.Selector).Matches(labels.Set(pod.Labels)) || len(o.service.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the pods (%v)", o.service.Spec.Selector, pod.Labels)
	}
	if o.service.Spec.Selector[gatewayNameLabel] != name {
		t.Errorf("Service selector %v: want %s=%s, as istiod's own waypoints", o.service.Spec.Selector, gatewayNameLabel, name)
	}
	sel, err := metav1.LabelSelectorAsSelector(o.deployment.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("Deployment selector %v does not select its pods (%v)", o.deployment.Spec.Selector, err)
	}

	spec := &pod.Spec
	checkVolumes(t, spec)
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, have %d", len(spec.Containers))
	}
	c := &spec.Containers[0]
	if c.Image != "kmesh-go/kmesh-waypoint:latest" || len(c.Command) != 1 || c.Command[0] != "kmesh-waypoint" {
		t.Errorf("container image %q command %q", c.Image, c.Command)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["proxy"] != 15019 || ports["mesh"] != 15008 || ports["status-port"] != 15021 {
		t.Errorf("container ports %v, want proxy 15019, mesh 15008, status-port 15021", ports)
	}
	svcPorts := map[int32]intstr.IntOrString{}
	for _, p := range o.service.Spec.Ports {
		svcPorts[p.Port] = p.TargetPort
		if p.TargetPort.Type == intstr.String && ports[p.TargetPort.StrVal] == 0 {
			t.Errorf("Service port %d targets %q, no container port of that name", p.Port, p.TargetPort.StrVal)
		}
	}
	if _, ok := svcPorts[15008]; !ok {
		t.Errorf("the Service has no port 15008: istiod reports the Gateway's address only once that port has endpoints")
	}

	args := parseArgs(t, c.Args)
	for flag, want := range map[string]string{
		"xds-address":    "istiod.istio-system.svc:15012",
		"listen":         "0.0.0.0:15019",
		"status-address": "0.0.0.0:15021",
		"admin-address":  "127.0.0.1:15000",
	} {
		if args[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, args[flag], want)
		}
	}
	if !inVolume(spec, c, args["xds-token-file"], func(v corev1.Volume, file string) bool {
		if v.Projected == nil {
			return false
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "istio-ca" && s.ServiceAccountToken.Path == file {
				return true
			}
		}
		return false
	}) {
		t.Errorf("--xds-token-file=%s is not a service-account token of audience istio-ca", args["xds-token-file"])
	}
	if !inVolume(spec, c, args["xds-root-cert"], func(v corev1.Volume, file string) bool {
		return v.ConfigMap != nil && v.ConfigMap.Name == "istio-ca-root-cert" && file == "root-cert.pem"
	}) {
		t.Errorf("--xds-root-cert=%s is not root-cert.pem of ConfigMap istio-ca-root-cert", args["xds-root-cert"])
	}
	for env, fieldPath := range map[string]string{
		"INSTANCE_IP":     "status.podIP",
		"POD_NAME":        "metadata.name",
		"POD_NAMESPACE":   "metadata.namespace",
		"SERVICE_ACCOUNT": "spec.serviceAccountName",
		"GATEWAY_NAME":    "metadata.labels['" + gatewayNameLabel + "']",
	} {
		if !fromField(c, env, fieldPath) {
			t.Errorf("env %s does not come from %s", env, fieldPath)
		}
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v, want GET :15021/healthz/ready", p)
	}
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("the waypoint must not run as root: %+v", spec.SecurityContext)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
		t.Errorf("the waypoint needs no privileges: %+v", c.SecurityContext)
	}
}

// inVolume reports whether file, a path in container c, is a file of a
// volume mounted there that match accepts (given the file's path inside
// the volume).
func inVolume(spec *corev1.PodSpec, c *corev1.Container, file string, match func(corev1.Volume, string) bool) bool {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok || m.SubPath != "" {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && match(v, rel) {
				return true
			}
		}
	}
	return false
}

func TestWaypointManifest(t *testing.T) {
	checkWaypoint(t, Waypoint, "waypoint")
}

// The documented rename (sed 's/: waypoint$/: NAME/') gives a waypoint
// that hangs together under the new name, and touches nothing else.
func TestWaypointManifestRenamed(t *testing.T) {
	nameLine := regexp.MustCompile(`(?m): waypoint$`)
	renamed := nameLine.ReplaceAllString(Waypoint, ": reviews-wp")
	checkWaypoint(t, renamed, "reviews-wp")
	before, after := strings.Split(Waypoint, "\n"), strings.Split(renamed, "\n")
	changed := 0
	for i := range before {
		if before[i] != after[i] {
			changed++
			if !strings.HasSuffix(before[i], ": waypoint") {
				t.Errorf("line %d changed: %q", i+1, before[i])
			}
		}
	}
	if changed == 0 {
		t.Fatal("the rename changed nothing")
	}
	if strings.Contains(stripComments(renamed), ": waypoint\n") {
		t.Error("a name is left after the rename")
	}
}

// The checks catch a waypoint istiod would deploy itself, and names that
// disagree.
func TestWaypointManifestChecksCatch(t *testing.T) {
	for what, edit := range map[string][2]string{
		"no addresses":      {"  addresses:\n    - type: Hostname\n      value: waypoint\n", ""},
		"an IP address":     {"    - type: Hostname\n      value: waypoint\n", "    - type: IPAddress\n      value: 10.0.0.1\n"},
		"another Service":   {"      value: waypoint\n", "      value: other\n"},
		"a namespace":       {"kind: Deployment\nmetadata:\n", "kind: Deployment\nmetadata:\n  namespace: x\n"},
		"a label mismatch":  {"        gateway.networking.k8s.io/gateway-name: waypoint\n        app.", "        gateway.networking.k8s.io/gateway-name: other\n        app."},
		"no token audience": {"audience: istio-ca", "audience: kubernetes"},
	} {
		bad := strings.Replace(Waypoint, edit[0], edit[1], 1)
		if bad == Waypoint {
			t.Fatalf("%s: the edit does not apply", what)
		}
		r := &recorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			checkWaypoint(r, bad, "waypoint")
		}()
		<-done
		if len(r.errs) == 0 {
			t.Errorf("%s: passed the checks", what)
		} else {
			t.Logf("%s: %s", what, r.errs[0])
		}
	}
}

// recorder keeps a check's failures instead of failing the test.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
