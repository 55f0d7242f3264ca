// Package registry is kmesh-cni's client of the daemon's PodRegistry
// (api/cni/v1) over its unix socket. Every call is bounded by the caller's
// context; a daemon that is not there fails at once instead of waiting.
package registry

import (
	"context"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// ErrUnreachable wraps every failure to reach the daemon at all, as
// opposed to an answer it gave.
var ErrUnreachable = errors.New("kmesh daemon unreachable")

// Client talks to one daemon.
type Client struct {
	socket string
	conn   *grpc.ClientConn
	api    cniv1.PodRegistryClient
}

// Dial prepares a client for the daemon at socket. It does not connect:
// the first call does, within its context.
func Dial(socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, socket, err)
	}
	return &Client{socket: socket, conn: conn, api: cniv1.NewPodRegistryClient(conn)}, nil
}

// Connect starts connecting in the background, so a later call finds the
// connection (or its failure) ready.
func (c *Client) Connect() { c.conn.Connect() }

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// wrap says which failures mean "no daemon" and how to fix them.
func (c *Client) wrap(op string, err error) error {
	if _, serr := os.Stat(c.socket); serr != nil {
		return fmt.Errorf("%w: %s: socket %s: %v (is the kmesh daemon running on this node?)", ErrUnreachable, op, c.socket, serr)
	}
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
		return fmt.Errorf("%w: %s via %s: %v", ErrUnreachable, op, c.socket, err)
	}
	return fmt.Errorf("kmesh daemon: %s: %w", op, err)
}

// Enroll registers a pod with the daemon and returns the daemon's view of
// whether it is enrolled.
func (c *Client) Enroll(ctx context.Context, pod *cniv1.Pod) (bool, error) {
	r, err := c.api.EnrollPod(ctx, &cniv1.EnrollPodRequest{Pod: pod})
	if err != nil {
		return false, c.wrap("register pod", err)
	}
	return r.GetEnrolled(), nil
}

// Release tells the daemon a sandbox is gone.
func (c *Client) Release(ctx context.Context, containerID, netns string, cookie uint64) error {
	_, err := c.api.ReleasePod(ctx, &cniv1.ReleasePodRequest{ContainerId: containerID, NetnsPath: netns, NetnsCookie: cookie})
	if err != nil {
		return c.wrap("release pod", err)
	}
	return nil
}

// Pod returns the daemon's record of a sandbox, or nil if it has none.
func (c *Client) Pod(ctx context.Context, containerID string) (*cniv1.Pod, error) {
	r, err := c.api.ListPods(ctx, &cniv1.ListPodsRequest{})
	if err != nil {
		return nil, c.wrap("list pods", err)
	}
	for _, p := range r.GetPods() {
		if p.GetContainerId() == containerID {
			return p, nil
		}
	}
	return nil, nil
}

// Status asks the daemon whether it serves the data path.
func (c *Client) Status(ctx context.Context) (*cniv1.StatusResponse, error) {
	r, err := c.api.Status(ctx, &cniv1.StatusRequest{})
	if err != nil {
		return nil, c.wrap("status", err)
	}
	return r, nil
}
