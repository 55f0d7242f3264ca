// Package xdsclient is the one delta ADS client of kmesh-go: the node
// daemon (istiod's ambient Address and Authorization types) and
// kmesh-waypoint (Envoy's CDS, EDS, LDS, RDS plus addresses) both run on it.
//
// Per type, a subscription is either wildcard or a named set that the
// caller changes at run time (EDS by cluster names, RDS by route names).
// Each response goes to a Handler, which says per resource why it was
// rejected; the client ACKs, or NACKs with those reasons, and remembers the
// versions it applied so a new stream resumes with initial_resource_versions
// (the server then sends only what changed while it was away, and the
// removals). Streams are re-established with jittered backoff; nothing is
// torn down while the server is away.
//
// Ordering follows Envoy's ADS client: types are subscribed in the order
// given (CDS before EDS, LDS before RDS), and subscription changes asked for
// while a response is being applied are sent after that response's ACK, so
// the EDS request for the clusters a CDS response introduced follows the
// CDS ACK, one request for all of them. Warming (holding clusters until
// their endpoints arrive) is the handler's business: it knows what depends
// on what.
package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Resource is one resource of a response.
type Resource struct {
	Name    string
	Version string
	Body    *anypb.Any
}

// Handler applies responses. It is called from one goroutine, one
// response at a time.
type Handler interface {
	// Apply returns, per resource name, why it was rejected (those keep
	// their previous state and version), and a non-nil err when the whole
	// response could not be applied (nothing of it is recorded).
	Apply(typeURL string, upserts []Resource, removes []string) (rejected map[string]error, err error)
	// Synced is called once per stream when every subscribed type has had
	// its first response (the full state, or on a resumed stream the full
	// difference), or SyncGrace after the first response.
	Synced()
	// Connected reports stream state changes (for readiness and metrics).
	Connected(up bool)
}

// Subscription is what the client asks for of one type.
type Subscription struct {
	TypeURL string
	// Wildcard asks for every resource of the type (LDS, CDS, the ambient
	// types). Otherwise Names is the initial named set, changed later with
	// Client.SetNames.
	Wildcard bool
	Names    []string
}

// Config of the client.
type Config struct {
	Address string
	// Plaintext uses the server's unauthenticated port (istiod's 15010)
	// without TLS.
	Plaintext bool
	// RootCertFile is the CA that signed the server's serving cert; empty
	// means the system pool.
	RootCertFile string
	// TokenFile holds a bearer token (for istiod: a service-account token
	// with audience istio-ca); it is read on every connect, so rotation
	// needs no restart.
	TokenFile string
	// ServerName checks the server's certificate; empty means
	// DefaultServerName(Address).
	ServerName string
	NodeID     string
	// Metadata is the node metadata: any value that encodes to a JSON
	// object (maps of strings, nested maps such as LABELS, lists).
	Metadata any
	// Locality of the node, optional.
	Locality *corev3.Locality
	// Subscriptions in the order they are sent on a new stream.
	Subscriptions []Subscription
	// Dialer, when set, replaces the network dial (tests, netns).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	Logger *slog.Logger
	// Backoff bounds; zero means 100ms .. 15s.
	MinBackoff, MaxBackoff time.Duration
	// SyncGrace is how long to wait for the other types after the first one
	// answered before declaring the first sync done (default 3s): a server
	// may stay silent on a type it has nothing of.
	SyncGrace time.Duration
}

// Stats counts what the client did.
type Stats struct {
	Connects, Responses, ACKs, NACKs uint64
	// Ignored counts responses for types never subscribed (not answered).
	Ignored   uint64
	Connected bool
	LastError string
	// LastNACK is the reason of the latest NACK.
	LastNACK string
}

// Client is one delta ADS session, re-established as needed.
type Client struct {
	cfg  Config
	h    Handler
	log  *slog.Logger
	meta *structpb.Struct

	// sendMu serialises everything sent on the stream together with the
	// subscription bookkeeping that decides it, so the server's view of
	// our subscriptions always matches ours. Lock order: sendMu, then mu.
	sendMu sync.Mutex
	mu     sync.Mutex
	types  map[string]*typeState
	order  []string
	stream *liveStream // nil between streams
	stats  Stats
}

// typeState is the client's side of one subscription.
type typeState struct {
	wildcard bool
	// desired is the named set the caller wants (named subscriptions).
	desired map[string]bool
	// sent is the named set the current stream's server was told; nil
	// before the type's first request on the stream.
	sent map[string]bool
	// versions holds what was applied, per name, for resuming.
	versions map[string]string
	// dirty: desired changed while sending was paused.
	dirty bool
}

// liveStream is the state of the current stream that SetNames needs.
type liveStream struct {
	send func(*discoveryv3.DeltaDiscoveryRequest) error
	// paused while a response is applied and until its ACK is out.
	paused bool
	// node goes with the first request of the stream.
	nodeSent bool
	// onNewNames is told when a named type gets its first request during
	// the stream (initial sync accounting).
	onNewNames func(typeURL string)
}

// New makes a client; Run drives it.
func New(cfg Config, h Handler) (*Client, error) {
	if cfg.ServerName == "" {
		cfg.ServerName = DefaultServerName(cfg.Address)
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
	if len(cfg.Subscriptions) == 0 {
		return nil, errors.New("xdsclient: no subscriptions")
	}
	meta, err := metadataStruct(cfg.Metadata)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Client{cfg: cfg, h: h, log: log.With("component", "xds"), meta: meta, types: map[string]*typeState{}}
	for _, s := range cfg.Subscriptions {
		if _, dup := c.types[s.TypeURL]; dup {
			return nil, fmt.Errorf("xdsclient: %s subscribed twice", s.TypeURL)
		}
		ts := &typeState{wildcard: s.Wildcard, versions: map[string]string{}}
		if !s.Wildcard {
			ts.desired = map[string]bool{}
			for _, n := range s.Names {
				ts.desired[n] = true
			}
		}
		c.types[s.TypeURL] = ts
		c.order = append(c.order, s.TypeURL)
	}
	return c, nil
}

// DefaultServerName is the name istiod's certificate is checked against
// when none is given: the host of address (a gRPC target, with or without
// a scheme such as dns:///), as istio-agent (pilot/pkg/grpc/tls.go
// getTLSDialOption) and ztunnel take it, so an istiod in another namespace
// (istiod.NS.svc) or behind its own name (ISTIOD_CUSTOM_HOST) is checked
// against the name it was dialled by. An IP address or localhost (a
// port-forward, a node without cluster DNS), which istiod's certificate
// does not name, means istiod.istio-system.svc; istio-agent does that for
// localhost only and checks an IP as itself, which fails.
func DefaultServerName(address string) string {
	const fallback = "istiod.istio-system.svc"
	if strings.HasPrefix(address, "unix:") || strings.HasPrefix(address, "unix-abstract:") {
		return fallback // a socket path names no host
	}
	target := address
	if i := strings.Index(target, "://"); i >= 0 {
		// scheme://authority/endpoint: the endpoint is the address.
		rest := target[i+3:]
		j := strings.Index(rest, "/")
		if j < 0 {
			return fallback
		}
		target = rest[j+1:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || net.ParseIP(strings.Trim(host, "[]")) != nil ||
		host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return fallback
	}
	// istiod's certificate names its Services as <name>.<namespace>.svc
	// (pilot/pkg/bootstrap/server.go getDNSNames), never with the cluster
	// domain: a fully qualified service name is checked in that form.
	if i := strings.Index(host, ".svc."); i >= 0 && strings.Count(host[:i], ".") == 1 {
		host = host[:i+len(".svc")]
	}
	return host
}

// metadataStruct encodes any JSON-object-shaped value as the node metadata.
func metadataStruct(m any) (*structpb.Struct, error) {
	if m == nil {
		return &structpb.Struct{}, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: node metadata: %w", err)
	}
	var s structpb.Struct
	if err := protojson.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("xdsclient: node metadata is not a JSON object: %w", err)
	}
	return &s, nil
}

// Stats returns a copy of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Names returns the named set currently wanted for a type (nil for a
// wildcard or unknown type).
func (c *Client) Names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.types[typeURL]
	if ts == nil || ts.wildcard {
		return nil
	}
	return slices.Sorted(maps.Keys(ts.desired))
}

// SetNames replaces the named set of a non-wildcard subscription. The
// change goes to the server at once, or, when called while a response is
// being applied, right after that response's ACK. Names dropped from the
// set are forgotten (not resumed); the caller drops its own copies, since
// the server sends no removal for an unsubscribed name.
func (c *Client) SetNames(typeURL string, names []string) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	ts := c.types[typeURL]
	if ts == nil {
		c.mu.Unlock()
		return fmt.Errorf("xdsclient: %s is not subscribed", typeURL)
	}
	if ts.wildcard {
		c.mu.Unlock()
		return fmt.Errorf("xdsclient: %s is a wildcard subscription", typeURL)
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	if maps.Equal(want, ts.desired) {
		c.mu.Unlock()
		return nil
	}
	ts.desired = want
	for n := range ts.versions {
		if !want[n] {
			delete(ts.versions, n)
		}
	}
	ls := c.stream
	if ls == nil || ls.paused {
		ts.dirty = true
		c.mu.Unlock()
		return nil
	}
	req := c.subscriptionRequestLocked(typeURL, ts, ls)
	c.mu.Unlock()
	if req == nil {
		return nil
	}
	// A send error ends the stream; the next stream subscribes afresh.
	_ = ls.send(req)
	return nil
}

// subscriptionRequestLocked builds the request that brings the server's
// view of a named subscription to ts.desired, or nil if nothing is to be
// said. It records the new view as sent.
func (c *Client) subscriptionRequestLocked(typeURL string, ts *typeState, ls *liveStream) *discoveryv3.DeltaDiscoveryRequest {
	ts.dirty = false
	if ts.sent == nil {
		// The type's first request on this stream. An empty named set is
		// not sent at all: delta xDS reads a first request without names
		// as a wildcard subscription.
		if len(ts.desired) == 0 {
			return nil
		}
		req := c.initialRequestLocked(typeURL, ts, ls)
		if ls.onNewNames != nil {
			ls.onNewNames(typeURL)
		}
		return req
	}
	var sub, unsub []string
	for n := range ts.desired {
		if !ts.sent[n] {
			sub = append(sub, n)
		}
	}
	for n := range ts.sent {
		if !ts.desired[n] {
			unsub = append(unsub, n)
		}
	}
	if len(sub)+len(unsub) == 0 {
		return nil
	}
	// Unsubscribing every name leaves an empty, not a wildcard,
	// subscription: only a type's first request without names means
	// wildcard.
	slices.Sort(sub)
	slices.Sort(unsub)
	ts.sent = maps.Clone(ts.desired)
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}
}

// initialRequestLocked is a type's first request on a stream: its names and
// the versions we hold of them.
func (c *Client) initialRequestLocked(typeURL string, ts *typeState, ls *liveStream) *discoveryv3.DeltaDiscoveryRequest {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL}
	if !ts.wildcard {
		req.ResourceNamesSubscribe = slices.Sorted(maps.Keys(ts.desired))
		ts.sent = maps.Clone(ts.desired)
	} else {
		ts.sent = map[string]bool{}
	}
	if len(ts.versions) > 0 {
		req.InitialResourceVersions = maps.Clone(ts.versions)
	}
	if !ls.nodeSent {
		req.Node = &corev3.Node{Id: c.cfg.NodeID, Metadata: c.meta, Locality: c.cfg.Locality}
		ls.nodeSent = true
	}
	return req
}

// Run keeps a session up until ctx ends. While the server is away the
// handler keeps the last good state; nothing is torn down.
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
		// Jitter (half to one and a half times the backoff): spread
		// reconnects of many clients after a server restart.
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
			return nil, fmt.Errorf("read the xDS server's root cert: %w", err)
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

	st := newSyncTracker(c.cfg.SyncGrace, c.h.Synced)
	defer st.stop()
	ls := &liveStream{send: stream.Send, onNewNames: st.expect}
	defer func() {
		c.sendMu.Lock()
		c.mu.Lock()
		c.stream = nil
		for _, ts := range c.types {
			ts.sent = nil
		}
		c.mu.Unlock()
		c.sendMu.Unlock()
	}()
	if err := c.subscribeAll(ls, st); err != nil {
		return err
	}

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
		t := resp.GetTypeUrl()
		c.setPaused(ls, true)
		ack := c.handle(resp)
		resp = nil // a big response is garbage now, not in a minute
		if err := c.sendAndResume(ls, ack); err != nil {
			return err
		}
		st.got(t)
	}
}

// subscribeAll sends every type's first request, in order, and starts
// accepting SetNames for the stream.
func (c *Client) subscribeAll(ls *liveStream, st *syncTracker) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	c.stats.Connects++
	var reqs []*discoveryv3.DeltaDiscoveryRequest
	for _, t := range c.order {
		ts := c.types[t]
		ts.sent = nil
		ts.dirty = false
		if !ts.wildcard && len(ts.desired) == 0 {
			continue // subscribed once it has names
		}
		reqs = append(reqs, c.initialRequestLocked(t, ts, ls))
		st.expect(t)
	}
	c.stream = ls
	c.mu.Unlock()
	for _, r := range reqs {
		if err := ls.send(r); err != nil {
			return fmt.Errorf("subscribe %s: %w", r.GetTypeUrl(), err)
		}
	}
	return nil
}

func (c *Client) setPaused(ls *liveStream, p bool) {
	c.sendMu.Lock()
	c.mu.Lock()
	ls.paused = p
	c.mu.Unlock()
	c.sendMu.Unlock()
}

// sendAndResume sends an ACK/NACK (none when ack is nil: a response that
// is not answered), then the subscription changes asked for while the
// response was applied, in subscription order.
func (c *Client) sendAndResume(ls *liveStream, ack *discoveryv3.DeltaDiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if ack != nil {
		if err := ls.send(ack); err != nil {
			return fmt.Errorf("send ACK: %w", err)
		}
	}
	c.mu.Lock()
	ls.paused = false
	var reqs []*discoveryv3.DeltaDiscoveryRequest
	for _, t := range c.order {
		ts := c.types[t]
		if ts.dirty {
			if r := c.subscriptionRequestLocked(t, ts, ls); r != nil {
				reqs = append(reqs, r)
			}
		}
	}
	c.mu.Unlock()
	for _, r := range reqs {
		if err := ls.send(r); err != nil {
			return fmt.Errorf("subscribe %s: %w", r.GetTypeUrl(), err)
		}
	}
	return nil
}

// handle applies one response and builds its ACK or NACK, or nil when the
// response is not to be answered.
func (c *Client) handle(resp *discoveryv3.DeltaDiscoveryResponse) *discoveryv3.DeltaDiscoveryRequest {
	t := resp.GetTypeUrl()
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
	c.mu.Lock()
	ts := c.types[t]
	var wanted map[string]bool
	if ts != nil && !ts.wildcard {
		wanted = maps.Clone(ts.desired)
	}
	c.mu.Unlock()
	if ts == nil {
		// Never asked for: dropped without an answer, as Envoy's delta
		// mux does (new_grpc_mux_impl.cc, "Dropping received
		// DeltaDiscoveryResponse ... for non-existent subscription").
		// Any answer would be read by istiod as a request for that type
		// (pilot/pkg/xds/delta.go shouldRespondDelta): an ACK subscribes
		// us to it (ztunnel, src/xds/client.rs, ACKs it, with a TODO to
		// send none), and a NACK for a type it does not track sets
		// LastError on a WatchedResource that does not exist.
		c.mu.Lock()
		c.stats.Ignored++
		c.mu.Unlock()
		c.log.Warn("ignoring a response for a type not subscribed", "type", t, "nonce", resp.GetNonce(), "resources", len(resp.GetResources()))
		return nil
	}

	ups := make([]Resource, 0, len(resp.GetResources()))
	var malformed []string
	for _, r := range resp.GetResources() {
		if wanted != nil && !wanted[r.GetName()] {
			// A late answer for a name unsubscribed since: not ours any
			// more.
			continue
		}
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
	c.stats.Responses++
	if err == nil {
		for _, n := range resp.GetRemovedResources() {
			if _, kept := rejected[n]; !kept {
				// A removal the handler refused keeps its resource, and
				// so its version: a resumed stream names it still.
				delete(ts.versions, n)
			}
		}
		for _, r := range ups {
			if _, bad := rejected[r.Name]; !bad {
				ts.versions[r.Name] = r.Version
			}
		}
	}
	c.mu.Unlock()

	reasons := slices.Clone(malformed)
	for _, e := range rejected {
		reasons = append(reasons, e.Error())
	}
	if err != nil {
		reasons = append(reasons, "update not applied, previous state kept: "+err.Error())
	}
	if len(reasons) == 0 {
		c.mu.Lock()
		c.stats.ACKs++
		c.mu.Unlock()
		return req
	}
	slices.Sort(reasons)
	msg := strings.Join(reasons, "; ")
	c.countNACK(msg)
	c.log.Warn("NACK", "type", t, "nonce", resp.GetNonce(), "reason", msg)
	req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: msg}
	return req
}

func (c *Client) countNACK(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.NACKs++
	c.stats.LastNACK = msg
}

// syncTracker calls done once every expected type has answered, or a
// grace period after the first answer.
type syncTracker struct {
	mu      sync.Mutex
	pending map[string]bool
	grace   time.Duration
	timer   *time.Timer
	once    sync.Once
	done    func()
	fired   bool
}

func newSyncTracker(grace time.Duration, done func()) *syncTracker {
	return &syncTracker{pending: map[string]bool{}, grace: grace, done: done}
}

// expect adds a type to wait for, unless the first sync is done already.
func (s *syncTracker) expect(t string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.fired {
		s.pending[t] = true
	}
}

func (s *syncTracker) got(t string) {
	s.mu.Lock()
	if s.fired || !s.pending[t] {
		s.mu.Unlock()
		return
	}
	delete(s.pending, t)
	if len(s.pending) > 0 {
		if s.timer == nil {
			s.timer = time.AfterFunc(s.grace, s.fire)
		}
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.fire()
}

func (s *syncTracker) fire() {
	s.mu.Lock()
	s.fired = true
	s.mu.Unlock()
	s.once.Do(s.done)
}

func (s *syncTracker) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
}

// tokenCreds sends the token file's content as a bearer token, read again
// for every stream (GetRequestMetadata runs once per stream, so a rotated
// projected token is picked up at the next reconnect). Not grpc-go's
// credentials/jwt: that one is experimental and takes only JWTs with an
// "exp" claim, caching them until then; this sends whatever the file
// holds (istiod checks it), as istio-agent does.
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
