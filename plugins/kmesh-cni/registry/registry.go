// Package registry is kmesh-cni's client of the daemon's PodRegistry
// (api/cni/v1) over its unix socket. Every call is bounded by the caller's
// context; a daemon that is not there fails at once instead of waiting.
//
// It speaks gRPC (unary calls: HTTP/2 POST, length-prefixed protobuf,
// grpc-status trailers) with net/http's HTTP/2 client rather than
// grpc-go: kmesh-cni is a process per pod, and grpc-go's package
// initialisation alone costs it about 1.2 ms on every run, a quarter of
// its budget, for four unary calls that need none of its machinery. The
// daemon serves with grpc-go (api/cni/v1/podregistry); the tests run this
// client against it.
package registry

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	cniv1 "github.com/kmesh-go/kmesh/api/cni/v1"
)

// ErrUnreachable wraps every failure to reach the daemon at all, as
// opposed to an answer it gave.
var ErrUnreachable = errors.New("kmesh daemon unreachable")

// gRPC status codes this client tells apart.
const (
	codeDeadlineExceeded = 4
	codeUnavailable      = 14
)

// StatusError is a gRPC error status the daemon answered with.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("rpc error: code = %d desc = %s", e.Code, e.Message)
}

// Client talks to one daemon.
type Client struct {
	socket string
	tr     *http.Transport
	http   *http.Client
}

// service is the path prefix of PodRegistry's methods.
const service = "http://kmesh-daemon/kmesh.cni.v1.PodRegistry/"

// Dial prepares a client for the daemon at socket. It does not connect:
// the first call does, within its context.
func Dial(socket string) (*Client, error) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true) // HTTP/2 with prior knowledge, as gRPC is
	tr := &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{socket: socket, tr: tr, http: &http.Client{Transport: tr}}, nil
}

// Close releases the connection.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// call makes one unary call of method with req and decodes the answer
// into resp.
func (c *Client) call(ctx context.Context, method string, req, resp proto.Message) error {
	msg, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	body := make([]byte, 5+len(msg)) // uncompressed flag, length, message
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	copy(body[5:], msg)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, service+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header = http.Header{
		"Content-Type": {"application/grpc"},
		"Te":           {"trailers"},
		"User-Agent":   {"kmesh-cni"},
	}
	if dl, ok := ctx.Deadline(); ok {
		// So the daemon gives up too; gRPC allows at most 8 digits.
		ms := max(time.Until(dl).Milliseconds(), 1)
		hreq.Header.Set("Grpc-Timeout", strconv.FormatInt(min(ms, 99999999), 10)+"m")
	}
	hresp, err := c.http.Do(hreq)
	if err != nil {
		return &StatusError{Code: codeUnavailable, Message: err.Error()}
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, 64<<20))
	if err != nil {
		return &StatusError{Code: codeUnavailable, Message: "read the answer: " + err.Error()}
	}
	if hresp.StatusCode != http.StatusOK {
		return &StatusError{Code: codeUnavailable, Message: "HTTP status " + hresp.Status}
	}
	// The status is in the trailers, or in the headers of an answer that
	// is only an error.
	st, stMsg := hresp.Trailer.Get("Grpc-Status"), hresp.Trailer.Get("Grpc-Message")
	if st == "" {
		st, stMsg = hresp.Header.Get("Grpc-Status"), hresp.Header.Get("Grpc-Message")
	}
	if m, err := url.PathUnescape(stMsg); err == nil {
		stMsg = m
	}
	switch code, err := strconv.Atoi(st); {
	case err != nil:
		return &StatusError{Code: codeUnavailable, Message: fmt.Sprintf("answer without a grpc-status (%q)", st)}
	case code != 0:
		return &StatusError{Code: code, Message: stMsg}
	}
	if len(data) < 5 || data[0] != 0 || int(binary.BigEndian.Uint32(data[1:])) != len(data)-5 {
		return fmt.Errorf("malformed answer to %s (%d bytes)", method, len(data))
	}
	return proto.Unmarshal(data[5:], resp)
}

// wrap says which failures mean "no daemon" and how to fix them.
func (c *Client) wrap(op string, err error) error {
	if _, serr := os.Stat(c.socket); serr != nil {
		return fmt.Errorf("%w: %s: socket %s: %v (is the kmesh daemon running on this node?)", ErrUnreachable, op, c.socket, serr)
	}
	var se *StatusError
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &se) && (se.Code == codeUnavailable || se.Code == codeDeadlineExceeded) {
		return fmt.Errorf("%w: %s via %s: %v", ErrUnreachable, op, c.socket, err)
	}
	return fmt.Errorf("kmesh daemon: %s: %w", op, err)
}

// Enroll registers a pod with the daemon and returns the daemon's view of
// whether it is enrolled.
func (c *Client) Enroll(ctx context.Context, pod *cniv1.Pod) (bool, error) {
	r := &cniv1.EnrollPodResponse{}
	if err := c.call(ctx, "EnrollPod", &cniv1.EnrollPodRequest{Pod: pod}, r); err != nil {
		return false, c.wrap("register pod", err)
	}
	return r.GetEnrolled(), nil
}

// Release tells the daemon a sandbox is gone.
func (c *Client) Release(ctx context.Context, containerID, netns string, cookie uint64) error {
	r := &cniv1.ReleasePodResponse{}
	if err := c.call(ctx, "ReleasePod", &cniv1.ReleasePodRequest{ContainerId: containerID, NetnsPath: netns, NetnsCookie: cookie}, r); err != nil {
		return c.wrap("release pod", err)
	}
	return nil
}

// Pod returns the daemon's record of a sandbox, or nil if it has none.
func (c *Client) Pod(ctx context.Context, containerID string) (*cniv1.Pod, error) {
	r := &cniv1.ListPodsResponse{}
	if err := c.call(ctx, "ListPods", &cniv1.ListPodsRequest{}, r); err != nil {
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
	r := &cniv1.StatusResponse{}
	if err := c.call(ctx, "Status", &cniv1.StatusRequest{}, r); err != nil {
		return nil, c.wrap("status", err)
	}
	return r, nil
}
