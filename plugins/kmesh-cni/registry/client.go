//go:build !kmesh_grpc_client

package registry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Client talks to one daemon over one connection, made on the first call
// or by Connect.
type Client struct {
	socket string

	mu      sync.Mutex
	conn    *h2conn
	err     error         // why conn is nil
	dialing chan struct{} // closed when Connect's dial is done
}

// service is the path prefix of PodRegistry's methods.
const service = "/kmesh.cni.v1.PodRegistry/"

// Dial prepares a client for the daemon at socket. It does not connect:
// Connect or the first call does.
func Dial(socket string) (*Client, error) {
	return &Client{socket: socket}, nil
}

// Connect opens the connection in the background (and sends the HTTP/2
// preface), so that the first call finds it ready. Within timeout.
func (c *Client) Connect(timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil || c.dialing != nil {
		return
	}
	done := make(chan struct{})
	c.dialing = done
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		h, err := dialH2(ctx, c.socket)
		c.mu.Lock()
		c.conn, c.err = h, err
		c.mu.Unlock()
		close(done)
	}()
}

// connection returns the connection, dialing it if nobody has.
func (c *Client) connection(ctx context.Context) (*h2conn, error) {
	c.mu.Lock()
	dialing := c.dialing
	c.mu.Unlock()
	if dialing != nil {
		select {
		case <-dialing:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dialing = nil
	if c.conn == nil {
		// Not dialed yet, or the last dial or connection failed: try now.
		c.conn, c.err = dialH2(ctx, c.socket)
	}
	return c.conn, c.err
}

// Close releases the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	dialing := c.dialing
	c.mu.Unlock()
	if dialing != nil {
		<-dialing
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		err := c.conn.Close()
		c.conn = nil
		return err
	}
	return nil
}

// call makes one unary call of method with the encoded request msg and
// returns the encoded answer. Calls on one client do not overlap.
func (c *Client) call(ctx context.Context, method string, msg []byte) ([]byte, error) {
	body := make([]byte, 5+len(msg)) // uncompressed flag, length, message
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	copy(body[5:], msg)
	var a *answer
	for {
		h, err := c.connection(ctx)
		if err != nil {
			return nil, &StatusError{Code: codeUnavailable, Message: err.Error()}
		}
		if a, err = h.unary(ctx, service+method, body); err == nil {
			h.used = true
			break
		}
		// The connection is in an unknown state: drop it.
		c.mu.Lock()
		if c.conn == h {
			h.Close()
			c.conn = nil
		}
		c.mu.Unlock()
		if !h.used || ctx.Err() != nil {
			return nil, &StatusError{Code: codeUnavailable, Message: err.Error()}
		}
		// It had served a call: the daemon restarted since. Every method
		// is idempotent, so the call is made again on a new connection.
	}
	if err := a.err(); err != nil {
		return nil, err
	}
	data := a.data
	if len(data) < 5 || data[0] != 0 || int(binary.BigEndian.Uint32(data[1:])) != len(data)-5 {
		return nil, fmt.Errorf("malformed answer to %s (%d bytes)", method, len(data))
	}
	return data[5:], nil
}

// Enroll registers a pod with the daemon and returns the daemon's view of
// whether it is enrolled.
func (c *Client) Enroll(ctx context.Context, pod *Pod) (bool, error) {
	b, err := c.call(ctx, "EnrollPod", encodeEnroll(pod))
	if err == nil {
		var enrolled bool
		if enrolled, err = decodeBool(b); err == nil {
			return enrolled, nil
		}
	}
	return false, c.wrap("register pod", err)
}

// Release tells the daemon a sandbox is gone.
func (c *Client) Release(ctx context.Context, containerID, netns string, cookie uint64) error {
	b, err := c.call(ctx, "ReleasePod", encodeRelease(containerID, netns, cookie))
	if err == nil {
		_, err = decodeBool(b)
	}
	if err != nil {
		return c.wrap("release pod", err)
	}
	return nil
}

// Pod returns the daemon's record of a sandbox's attachment on ifname (see
// pick), or nil if it has none.
func (c *Client) Pod(ctx context.Context, containerID, ifname string) (*Pod, error) {
	b, err := c.call(ctx, "ListPods", nil)
	var pods []*Pod
	if err == nil {
		pods, err = decodePods(b)
	}
	if err != nil {
		return nil, c.wrap("list pods", err)
	}
	return pick(pods, containerID, ifname), nil
}

// Decide asks the daemon whether a pod is enrolled, from its watch of the
// Kubernetes API. A daemon that cannot tell, or one too old to have the
// method, answers Known false.
func (c *Client) Decide(ctx context.Context, namespace, name, uid string) (*Decision, error) {
	b, err := c.call(ctx, "DecidePod", encodeDecide(namespace, name, uid))
	var se *StatusError
	if errors.As(err, &se) && se.Code == codeUnimplemented {
		return &Decision{}, nil
	}
	var d *Decision
	if err == nil {
		d, err = decodeDecision(b)
	}
	if err != nil {
		return nil, c.wrap("decide pod", err)
	}
	return d, nil
}

// Status asks the daemon whether it serves the data path.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	b, err := c.call(ctx, "Status", nil)
	var st *Status
	if err == nil {
		st, err = decodeStatus(b)
	}
	if err != nil {
		return nil, c.wrap("status", err)
	}
	return st, nil
}
