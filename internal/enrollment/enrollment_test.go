package enrollment

import "testing"

func TestDecide(t *testing.T) {
	labelled := map[string]string{LabelDataplaneMode: ModeKmesh}
	plain := map[string]string{"team": "a"}
	pod := func(mut func(*Pod)) Pod {
		p := Pod{Labels: map[string]string{}, Annotations: map[string]string{}, Containers: []string{"app"}}
		if mut != nil {
			mut(&p)
		}
		return p
	}
	label := func(v string) func(*Pod) { return func(p *Pod) { p.Labels[LabelDataplaneMode] = v } }
	cases := []struct {
		name string
		pod  Pod
		ns   map[string]string
		want bool
	}{
		{"labelled namespace", pod(nil), labelled, true},
		{"plain namespace", pod(nil), plain, false},
		{"no namespace known", pod(nil), nil, false},
		{"labelled pod", pod(label(ModeKmesh)), plain, true},
		{"labelled pod, Kmesh's spelling", pod(label("Kmesh")), plain, true},
		{"labelled namespace, Kmesh's spelling", pod(nil), map[string]string{LabelDataplaneMode: "Kmesh"}, true},
		{"labelled namespace, upper case", pod(nil), map[string]string{LabelDataplaneMode: "KMESH"}, true},
		{"opt out, other case", pod(label("None")), labelled, false},
		{"opt out", pod(label(ModeNone)), labelled, false},
		{"other data plane", pod(label("ambient")), plain, false},
		{"other data plane in a kmesh namespace", pod(label("ambient")), labelled, false},
		// An empty value selects nothing (Istio's NotIn [none] selector and
		// Kmesh both let the namespace decide).
		{"empty pod label in a kmesh namespace", pod(label("")), labelled, true},
		{"empty pod label in a plain namespace", pod(label("")), plain, false},
		{"host network", pod(func(p *Pod) { p.HostNetwork = true; p.Labels[LabelDataplaneMode] = ModeKmesh }), labelled, false},
		{"sidecar container", pod(func(p *Pod) { p.Containers = append(p.Containers, "istio-proxy") }), labelled, false},
		{"native sidecar", pod(func(p *Pod) { p.Containers = append([]string{"istio-proxy"}, p.Containers...) }), labelled, false},
		{"sidecar annotation", pod(func(p *Pod) { p.Annotations["sidecar.istio.io/status"] = "{}" }), labelled, false},
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
