package enrollment

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDecide(t *testing.T) {
	labelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{LabelDataplaneMode: ModeKmesh}}}
	plain := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "b"}}
	pod := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{}, Annotations: map[string]string{}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
		if mut != nil {
			mut(p)
		}
		return p
	}
	cases := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
	}{
		{"labelled namespace", pod(nil), labelled, true},
		{"plain namespace", pod(nil), plain, false},
		{"no namespace known", pod(nil), nil, false},
		{"labelled pod", pod(func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = ModeKmesh }), plain, true},
		{"opt out", pod(func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = ModeNone }), labelled, false},
		{"other data plane", pod(func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = "ambient" }), plain, false},
		{"other data plane in a kmesh namespace", pod(func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = "ambient" }), labelled, false},
		{"host network", pod(func(p *corev1.Pod) { p.Spec.HostNetwork = true; p.Labels[LabelDataplaneMode] = ModeKmesh }), labelled, false},
		{"sidecar container", pod(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy"})
		}), labelled, false},
		{"native sidecar", pod(func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "istio-proxy"}} }), labelled, false},
		{"sidecar annotation", pod(func(p *corev1.Pod) { p.Annotations["sidecar.istio.io/status"] = "{}" }), labelled, false},
	}
	for _, c := range cases {
		got, why := Decide(c.pod, c.ns)
		if got != c.want {
			t.Errorf("%s: %v (%s), want %v", c.name, got, why, c.want)
		}
		if why == "" {
			t.Errorf("%s: no reason given", c.name)
		}
	}
}
