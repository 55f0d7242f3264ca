package nodebox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/kmesh-go/kmesh/internal/podns"
)

// PodSpec names a pod as the runtime passes it to CNI (K8S_POD_NAME,
// K8S_POD_NAMESPACE, K8S_POD_UID). With a kubeconfig in the box, kmesh-cni
// looks the pod up by these in the API server.
type PodSpec struct {
	Name, Namespace, UID string
	// OutOfMesh runs kmesh-cni with defaultEnroll false for this pod, as
	// for a pod of a namespace that is not labelled (only matters without
	// a kubeconfig, where defaultEnroll decides).
	OutOfMesh bool
}

// Pod is a sandbox: a network namespace wired by the CNI chain.
type Pod struct {
	PodSpec
	// NetNS names the namespace; NSPath is its bind mount.
	NetNS, NSPath string
	// ContainerID is the sandbox id the chain saw.
	ContainerID string
	// IP is the address host-local gave the pod.
	IP netip.Addr
	// HostVeth is the pod's veth peer in the node namespace.
	HostVeth string

	rt      *libcni.RuntimeConf
	chain   *libcni.NetworkConfigList
	removed bool
}

// AddPod makes a pod namespace and runs the chain's ADD for it from inside
// the node namespace: loopback, then bridge + host-local + kmesh-cni.
func (b *Box) AddPod(ctx context.Context, spec PodSpec) (_ *Pod, err error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.UID == "" {
		spec.UID = "uid-" + spec.Namespace + "-" + spec.Name
	}
	n := b.podSeq.Add(1)
	p := &Pod{PodSpec: spec, NetNS: fmt.Sprintf("%s-p%d", b.base, n), chain: b.chain}
	if spec.OutOfMesh {
		p.chain = b.chainOut
	}
	p.NSPath = filepath.Join(netnsDir, p.NetNS)
	p.ContainerID = p.NetNS
	if err := addNetNS(p.NetNS); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.pods = append(b.pods, p)
	b.mu.Unlock()
	defer func() {
		if err != nil {
			_ = b.RemovePod(context.Background(), p)
		}
	}()

	p.rt = &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NSPath,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", spec.Namespace},
			{"K8S_POD_NAME", spec.Name},
			{"K8S_POD_UID", spec.UID},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
	var res *current.Result
	err = b.InNode(func() error {
		if _, err := b.cni.AddNetworkList(ctx, b.lo, p.rt); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		r, err := b.cni.AddNetworkList(ctx, p.chain, p.rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap().Is4() {
			p.IP = a.Unmap()
		}
	}
	for _, i := range res.Interfaces {
		if i.Sandbox == "" && i.Name != b.Bridge {
			p.HostVeth = i.Name
		}
	}
	if !p.IP.IsValid() || p.HostVeth == "" {
		return nil, fmt.Errorf("CNI ADD %s/%s: no IPv4 address or host veth in the result %v", spec.Namespace, spec.Name, res)
	}
	b.cfg.Logf("pod %s/%s: %s in %s (host veth %s)", spec.Namespace, spec.Name, p.IP, p.NetNS, p.HostVeth)
	return p, nil
}

// RemovePod does what a kubelet does when a pod goes: stops the processes
// started in it, runs the chain's DEL (kmesh-cni releases the pod), then
// deletes the namespace. Removing a removed pod does nothing.
func (b *Box) RemovePod(ctx context.Context, p *Pod) error {
	b.mu.Lock()
	if p.removed {
		b.mu.Unlock()
		return nil
	}
	p.removed = true
	var mine []*Proc
	for _, pr := range b.procs {
		if pr.Spec.Pod == p {
			mine = append(mine, pr)
		}
	}
	b.mu.Unlock()

	var errs []error
	for _, pr := range mine {
		errs = append(errs, pr.Stop(5*time.Second))
	}
	if p.rt != nil {
		err := b.InNode(func() error {
			return errors.Join(b.cni.DelNetworkList(ctx, p.chain, p.rt), b.cni.DelNetworkList(ctx, b.lo, p.rt))
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL %s/%s: %w", p.Namespace, p.Name, err))
		}
	}
	errs = append(errs, run("ip", "netns", "delete", p.NetNS))
	b.mu.Lock()
	b.pods = slices.DeleteFunc(b.pods, func(q *Pod) bool { return q == p })
	b.mu.Unlock()
	return errors.Join(errs...)
}

// Do runs fn on a thread inside the pod's network namespace.
func (p *Pod) Do(fn func() error) error { return podns.Do(p.NSPath, fn) }

// DialContext connects from inside the pod. The socket belongs to this
// process's cgroup: after Box.JoinCgroup it goes through the data path.
func (p *Pod) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn(ctx, p.NSPath, network, addr)
}

// WaitListening waits up to within until addr accepts TCP connections
// from the pod (a server started in another pod is not listening the
// moment its process exists).
func (p *Pod) WaitListening(ctx context.Context, addr netip.AddrPort, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := p.DialContext(cctx, "tcp", addr.String())
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Listen opens a listener inside the pod.
func (p *Pod) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := p.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Run runs a short command (ip, iptables) inside the pod's namespace; its
// output goes into the error.
func (p *Pod) Run(name string, args ...string) error {
	return p.Do(func() error { return run(name, args...) })
}

// Exec runs a program to completion inside the pod's namespace and returns
// its combined output.
func (p *Pod) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	var runErr error
	err := p.Do(func() error {
		out, runErr = exec.CommandContext(ctx, name, args...).CombinedOutput()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, runErr
}
