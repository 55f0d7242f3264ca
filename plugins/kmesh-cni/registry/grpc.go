//go:build kmesh_grpc_client

package registry

// This file is the same client over grpc-go and the generated types, built
// with -tags kmesh_grpc_client. It is the measured alternative to the
// small client: the CNI chain benchmark runs a kmesh-cni built this way
// beside the default one (see the package comment).

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
	"github.com/kmesh-go/kmesh/api/cni/v1/podregistry"
)

// Client talks to one daemon over one gRPC channel.
type Client struct {
	socket string
	conn   *grpc.ClientConn
	api    podregistry.PodRegistryClient
}

// Dial prepares a client for the daemon at socket; it does not connect.
func Dial(socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Client{socket: socket, conn: conn, api: podregistry.NewPodRegistryClient(conn)}, nil
}

// Connect starts connecting in the background. (The channel bounds its
// own dial; the first call waits for it within its context.)
func (c *Client) Connect(time.Duration) { c.conn.Connect() }

// Close releases the channel.
func (c *Client) Close() error { return c.conn.Close() }

// statusOf turns a grpc-go error into this package's StatusError.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	return &StatusError{Code: int(st.Code()), Message: st.Message()}
}

func fromProto(p *cniv1.Pod) *Pod {
	out := &Pod{Name: p.GetName(), Namespace: p.GetNamespace(), UID: p.GetUid(), ContainerID: p.GetContainerId(),
		NetnsPath: p.GetNetnsPath(), NetnsCookie: p.GetNetnsCookie(), IPs: p.GetIps(), HostVeth: p.GetHostVeth(),
		Enrolled: p.GetEnrolled(), Reason: p.GetReason(), CgroupPath: p.GetCgroupPath(), CgroupID: p.GetCgroupId(),
		CNIIfname: p.GetCniIfname()}
	for _, i := range p.GetInterfaces() {
		out.Interfaces = append(out.Interfaces, Interface{Name: i.GetName(), Mac: i.GetMac(), Sandbox: i.GetSandbox()})
	}
	return out
}

func toProto(p *Pod) *cniv1.Pod {
	out := &cniv1.Pod{Name: p.Name, Namespace: p.Namespace, Uid: p.UID, ContainerId: p.ContainerID,
		NetnsPath: p.NetnsPath, NetnsCookie: p.NetnsCookie, Ips: p.IPs, HostVeth: p.HostVeth,
		Enrolled: p.Enrolled, Reason: p.Reason, CgroupPath: p.CgroupPath, CgroupId: p.CgroupID, CniIfname: p.CNIIfname}
	for _, i := range p.Interfaces {
		out.Interfaces = append(out.Interfaces, &cniv1.Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
	}
	return out
}

// Enroll registers a pod with the daemon and returns the daemon's view of
// whether it is enrolled.
func (c *Client) Enroll(ctx context.Context, pod *Pod) (bool, error) {
	r, err := c.api.EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: toProto(pod)})
	if err != nil {
		return false, c.wrap("register pod", statusOf(err))
	}
	return r.GetEnrolled(), nil
}

// Release tells the daemon a sandbox is gone.
func (c *Client) Release(ctx context.Context, containerID, netns string, cookie uint64) error {
	_, err := c.api.ReleasePod(ctx, &cniv1.ReleasePodRequest{ContainerId: containerID, NetnsPath: netns, NetnsCookie: cookie})
	if err != nil {
		return c.wrap("release pod", statusOf(err))
	}
	return nil
}

// Pod returns the daemon's record of a sandbox's attachment on ifname (see
// pick), or nil if it has none.
func (c *Client) Pod(ctx context.Context, containerID, ifname string) (*Pod, error) {
	r, err := c.api.ListPods(ctx, &cniv1.ListPodsRequest{})
	if err != nil {
		return nil, c.wrap("list pods", statusOf(err))
	}
	var pods []*Pod
	for _, p := range r.GetPods() {
		if p.GetContainerId() == containerID {
			pods = append(pods, fromProto(p))
		}
	}
	return pick(pods, containerID, ifname), nil
}

// Decide asks the daemon whether a pod is enrolled; a daemon without the
// method answers Known false.
func (c *Client) Decide(ctx context.Context, namespace, name, uid string) (*Decision, error) {
	r, err := c.api.DecidePod(ctx, &cniv1.DecidePodRequest{Namespace: namespace, Name: name, Uid: uid})
	if status.Code(err) == codes.Unimplemented {
		return &Decision{}, nil
	}
	if err != nil {
		return nil, c.wrap("decide pod", statusOf(err))
	}
	return &Decision{Known: r.GetKnown(), Enroll: r.GetEnroll(), Reason: r.GetReason()}, nil
}

// Status asks the daemon whether it serves the data path.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	r, err := c.api.Status(ctx, &cniv1.StatusRequest{})
	if err != nil {
		return nil, c.wrap("status", statusOf(err))
	}
	return &Status{Ready: r.GetReady(), Message: r.GetMessage(), Pods: r.GetPods(), EnrolledPods: r.GetEnrolledPods(),
		Version: r.GetVersion(), MeshSynced: r.GetMeshSynced()}, nil
}
