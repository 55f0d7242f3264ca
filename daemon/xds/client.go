// Package xds is a delta ADS client for istiod's ambient resources
// (istio.workload.Address, istio.security.Authorization). It subscribes by
// wildcard, hands each response to a Handler, ACKs or NACKs with the
// handler's reason, and reconnects with jittered backoff, resuming with
// initial_resource_versions so istiod sends only what changed while it was
// away (and the removals).
package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Type URLs of the ambient resources.
const (
	TypeAddress       = "type.googleapis.com/istio.workload.Address"
	TypeAuthorization = "type.googleapis.com/istio.security.Authorization"
)

// Resource is one resource of a response.
type Resource struct {
	Name    string
	Version string
	Body    *anypb.Any
}

// Handler applies responses. Apply returns, per resource name, why it was
// rejected (those keep their previous state), and a non-nil err when the
// whole response could not be applied.
type Handler interface {
	Apply(typeURL string, upserts []Resource, removes []string) (rejected map[string]error, err error)
	// Synced is called once per stream when every subscribed type has had
	// its first response (the full state, or on a resumed stream the full
	// difference).
	Synced()
	// Connected reports stream state changes (for readiness and metrics).
	Connected(up bool)
}

// Config of the client.
type Config struct {
	Address string
	// Plaintext uses istiod's unauthenticated port (15010) without TLS.
	Plaintext bool
	// RootCertFile is the CA that signed istiod's serving cert.
	RootCertFile string
	// TokenFile holds a service-account token with audience istio-ca; it is
	// read on every connect, so rotation needs no restart.
	TokenFile string
	// ServerName checks istiod's certificate (default istiod.istio-system.svc).
	ServerName string
	NodeID     string
	Metadata   map[string]string
	TypeURLs   []string
	// Dialer, when set, replaces the network dial (tests, netns).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	Logger *slog.Logger
	// Backoff bounds; zero means 100ms .. 15s.
	MinBackoff, MaxBackoff time.Duration
	// SyncGrace is how long to wait for the other types after the first one
	// answered before declaring the first sync done (default 3s).
	SyncGrace time.Duration
}

// Client is one delta ADS session, re-established as needed.
type Client struct {
	cfg Config
	h   Handler
	log *slog.Logger

	mu sync.Mutex
	// versions holds what we have applied, per type and name, for resuming.
	versions map[string]map[string]string
	stats    Stats
}

// Stats counts what the client did.
type Stats struct {
	Connects, Responses, ACKs, NACKs uint64
	Connected                        bool
	LastError                        string
}

// New makes a client; Run drives it.
func New(cfg Config, h Handler) *Client {
	if cfg.ServerName == "" {
		cfg.ServerName = "istiod.istio-system.svc"
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	if cfg.SyncGrace == 0 {
		cfg.SyncGrace = 3 * time.Second
	}
	if len(cfg.TypeURLs) == 0 {
		cfg.TypeURLs = []string{TypeAddress, TypeAuthorization}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Client{cfg: cfg, h: h, log: log.With("component", "xds"), versions: map[string]map[string]string{}}
}

// Stats returns a copy of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Run keeps a session up until ctx ends. While istiod is away the handler
// keeps the last good state; nothing is torn down.
func (c *Client) Run(ctx context.Context) {
	backoff := c.cfg.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := c.session(ctx)
		c.h.Connected(false)
		c.mu.Lock()
		c.stats.Connected = false
		if err != nil {
			c.stats.LastError = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 30*time.Second {
			backoff = c.cfg.MinBackoff // it was a healthy session
		}
		// Full jitter: spread reconnects of many nodes after an istiod
		// restart.
		wait := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		c.log.Warn("xDS stream ended; reconnecting", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

func (c *Client) dialOptions() ([]grpc.DialOption, error) {
	opts := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256 << 20)),
	}
	if c.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.cfg.Dialer(ctx, addr)
		}))
	}
	if c.cfg.Plaintext {
		return append(opts, grpc.WithTransportCredentials(insecure.NewCredentials())), nil
	}
	pool := x509.NewCertPool()
	if c.cfg.RootCertFile != "" {
		pem, err := os.ReadFile(c.cfg.RootCertFile)
		if err != nil {
			return nil, fmt.Errorf("read istiod root cert: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", c.cfg.RootCertFile)
		}
	} else {
		sys, err := x509.SystemCertPool()
		if err != nil {
			return nil, err
		}
		pool = sys
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: c.cfg.ServerName, MinVersion: tls.VersionTLS12})
	opts = append(opts, grpc.WithTransportCredentials(creds))
	if c.cfg.TokenFile != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{file: c.cfg.TokenFile}))
	}
	return opts, nil
}

// session runs one stream until it fails.
func (c *Client) session(ctx context.Context) error {
	opts, err := c.dialOptions()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(c.cfg.Address, opts...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.cfg.Address, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		return fmt.Errorf("open delta ADS stream to %s: %w", c.cfg.Address, err)
	}

	node := &corev3.Node{Id: c.cfg.NodeID, Metadata: metadata(c.cfg.Metadata)}
	c.mu.Lock()
	c.stats.Connects++
	c.mu.Unlock()
	for i, t := range c.cfg.TypeURLs {
		req := &discoveryv3.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			InitialResourceVersions: c.resumeVersions(t),
		}
		if i == 0 {
			req.Node = node
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("subscribe %s: %w", t, err)
		}
	}

	pending := map[string]bool{}
	for _, t := range c.cfg.TypeURLs {
		pending[t] = true
	}
	var syncOnce sync.Once
	synced := func() { syncOnce.Do(c.h.Synced) }
	// A server may stay silent on a type it has nothing of: once the first
	// type (the addresses) arrived, the others get a grace period.
	var grace *time.Timer
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	connected := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if !connected {
			connected = true
			c.h.Connected(true)
			c.mu.Lock()
			c.stats.Connected = true
			c.stats.LastError = ""
			c.mu.Unlock()
			c.log.Info("xDS stream up", "address", c.cfg.Address)
		}
		ack := c.handle(resp)
		t := resp.GetTypeUrl()
		resp = nil // a big response is garbage now, not in a minute
		if err := stream.Send(ack); err != nil {
			return fmt.Errorf("send ACK: %w", err)
		}
		if pending[t] {
			delete(pending, t)
			if len(pending) == 0 {
				synced()
			} else if grace == nil {
				grace = time.AfterFunc(c.cfg.SyncGrace, synced)
			}
		}
	}
}

// handle applies one response and builds its ACK or NACK.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	ups := make([]Resource, 0, len(resp.GetResources()))
	var malformed []string
	for _, r := range resp.GetResources() {
		if r.GetResource() == nil {
			malformed = append(malformed, fmt.Sprintf("%s: resource has no body", r.GetName()))
			continue
		}
		if r.GetResource().GetTypeUrl() != t {
			malformed = append(malformed, fmt.Sprintf("%s: body is %s, want %s", r.GetName(), r.GetResource().GetTypeUrl(), t))
			continue
		}
		ups = append(ups, Resource{Name: r.GetName(), Version: r.GetVersion(), Body: r.GetResource()})
	}
	rejected, err := c.h.Apply(t, ups, resp.GetRemovedResources())

	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Responses++
	vs := c.versions[t]
	if vs == nil {
		vs = map[string]string{}
		c.versions[t] = vs
	}
	if err == nil {
		for _, n := range resp.GetRemovedResources() {
			delete(vs, n)
		}
		for _, r := range ups {
			if _, bad := rejected[r.Name]; !bad {
				vs[r.Name] = r.Version
			}
		}
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	var reasons []string
	reasons = append(reasons, malformed...)
	for _, e := range rejected {
		reasons = append(reasons, e.Error())
	}
	if err != nil {
		reasons = append(reasons, "update not applied, previous state kept: "+err.Error())
	}
	if len(reasons) == 0 {
		c.stats.ACKs++
		return req
	}
	slices.Sort(reasons)
	msg := strings.Join(reasons, "; ")
	c.stats.NACKs++
	c.log.Warn("NACK", "type", t, "nonce", resp.GetNonce(), "reason", msg)
	req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: msg}
	return req
}

// resumeVersions is what we hold of a type, sent on (re)connect so the
// server skips what we already have and tells us what went away.
func (c *Client) resumeVersions(t string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.versions[t]) == 0 {
		return nil
	}
	out := make(map[string]string, len(c.versions[t]))
	for n, v := range c.versions[t] {
		out[n] = v
	}
	return out
}

func metadata(m map[string]string) *structpb.Struct {
	fields := map[string]*structpb.Value{}
	for k, v := range m {
		fields[k] = structpb.NewStringValue(v)
	}
	return &structpb.Struct{Fields: fields}
}

type tokenCreds struct{ file string }

func (t tokenCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	b, err := os.ReadFile(t.file)
	if err != nil {
		return nil, fmt.Errorf("read xDS token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, errors.New("xDS token file is empty")
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }
