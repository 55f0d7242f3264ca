package translate

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DEGRADED endpoints stay (Envoy uses them when healthy ones are not
// enough); the assignment's overprovisioning factor reaches the cluster,
// from EDS as from a static assignment.
func TestEndpointHealthAndOverprovisioning(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "e",
		Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(100)},
		Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
			socketEndpoint("10.0.0.1", 80, corev3.HealthStatus_DEGRADED, 0),
			socketEndpoint("10.0.0.2", 80, corev3.HealthStatus_DRAINING, 0),
			socketEndpoint("10.0.0.3", 80, corev3.HealthStatus_TIMEOUT, 0),
		}}}}
	compiled, err := CompileEndpoints(cla)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]Input{"eds": {EDS: map[string]*Endpoints{"e": compiled}}, "proto": {Endpoints: map[string]*endpointv3.ClusterLoadAssignment{"e": cla}}} {
		tr := &translator{in: in}
		c, err := tr.cluster(&clusterv3.Cluster{Name: "e", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}})
		if err != nil {
			t.Fatal(err)
		}
		eps := c.Endpoints[0]
		if eps[0].Healthy || !eps[0].Degraded || eps[1].Healthy || eps[1].Degraded || eps[2].Healthy || eps[2].Degraded {
			t.Errorf("%s: health %+v", name, eps)
		}
		if c.OverprovisioningFactor != 100 {
			t.Errorf("%s: overprovisioning factor %d, want 100", name, c.OverprovisioningFactor)
		}
	}
	if err := CheckEndpoints(cla); err != nil {
		t.Fatal(err)
	}
	other, _ := CompileEndpoints(&endpointv3.ClusterLoadAssignment{ClusterName: "e", Endpoints: cla.Endpoints})
	if compiled.Equal(other) {
		t.Error("assignments differing only in overprovisioning factor are Equal")
	}
}

// Locality weighted LB (istiod's localityLbSetting.distribute) reaches
// the cluster with each endpoint's locality and locality weight.
func TestLocalityWeightedCluster(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "l", Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Region: "r", Zone: "a"}, LoadBalancingWeight: wrapperspb.UInt32(80),
			LbEndpoints: []*endpointv3.LbEndpoint{socketEndpoint("10.0.0.1", 80, 0, 0)}},
		{Locality: &corev3.Locality{Region: "r", Zone: "b"}, LoadBalancingWeight: wrapperspb.UInt32(20),
			LbEndpoints: []*endpointv3.LbEndpoint{socketEndpoint("10.0.1.1", 80, 0, 0)}},
	}}
	tr := &translator{in: Input{Endpoints: map[string]*endpointv3.ClusterLoadAssignment{"l": cla}}}
	c, err := tr.cluster(&clusterv3.Cluster{Name: "l", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{LocalityConfigSpecifier: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig_{
			LocalityWeightedLbConfig: &clusterv3.Cluster_CommonLbConfig_LocalityWeightedLbConfig{}}}})
	if err != nil {
		t.Fatal(err)
	}
	eps := c.Endpoints[0]
	if !c.LocalityWeighted || eps[0].Locality != "r/a/" || eps[0].LocalityWeight != 80 || eps[1].Locality != "r/b/" || eps[1].LocalityWeight != 20 {
		t.Errorf("weighted %v, endpoints %+v", c.LocalityWeighted, eps)
	}
}

// DestinationRule settings istiod emits that the engine does not apply
// are reported, not dropped silently.
func TestIgnoredLBSettingsAreReported(t *testing.T) {
	for name, c := range map[string]*clusterv3.Cluster{
		"slow_start_config": {LbConfig: &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{
			SlowStartConfig: &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: durationpb.New(time.Minute)}}}},
		"ring_hash_lb_config.minimum_ring_size": {LbPolicy: clusterv3.Cluster_RING_HASH, LbConfig: &clusterv3.Cluster_RingHashLbConfig_{
			RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(100000)}}},
		"maglev_lb_config.table_size": {LbPolicy: clusterv3.Cluster_MAGLEV, LbConfig: &clusterv3.Cluster_MaglevLbConfig_{
			MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(131)}}},
		"max_connection_duration": {TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpv3.HttpProtocolOptions{
			CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{MaxConnectionDuration: durationpb.New(time.Minute)}})}},
	} {
		c.Name = "c"
		tr := &translator{in: Input{}}
		if _, err := tr.cluster(c); err != nil {
			t.Fatal(err)
		}
		if len(tr.unsup) != 1 || tr.unsup[0].Name != name {
			t.Errorf("%s: reported %+v", name, tr.unsup)
		}
	}
	// Istio's defaults are not reported.
	tr := &translator{in: Input{}}
	if _, err := tr.cluster(&clusterv3.Cluster{Name: "d", LbPolicy: clusterv3.Cluster_RING_HASH, LbConfig: &clusterv3.Cluster_RingHashLbConfig_{
		RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(1024)}},
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{}}}); err != nil || len(tr.unsup) != 0 {
		t.Errorf("defaults: %v %+v", err, tr.unsup)
	}
}

// An endpoint's hostname is kept: auto_host_rewrite sends it as Host.
func TestEndpointHostname(t *testing.T) {
	lb := socketEndpoint("10.0.0.1", 80, 0, 0)
	lb.GetEndpoint().Hostname = "backend.internal"
	e, err := endpoint(lb)
	if err != nil || e.Hostname != "backend.internal" {
		t.Errorf("%+v %v", e, err)
	}
}
