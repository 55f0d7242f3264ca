package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kmesh-go/kmesh/bpf/manage"
	"github.com/kmesh-go/kmesh/bpf/podtc"
	"github.com/kmesh-go/kmesh/internal/cnistate"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/registry"
)

// Bounds on what a plugin run waits for. A runtime runs the chain while a
// pod waits to start, so nothing here may hang.
const (
	daemonTimeout = 2 * time.Second
	kubeTimeout   = 3 * time.Second
)

// run is one plugin invocation: the parsed conf, the logger and what the
// command has opened.
type run struct {
	args    *skel.CmdArgs
	conf    *conf.Conf
	log     *slog.Logger
	logFile io.Closer
	start   time.Time
	// registry is the connection to the daemon, once one is made.
	registry *registry.Client

	// ADD's: the record of an earlier ADD of the attachment, the pod's
	// netns cookie, and whether this ADD wrote the manage entry (what a
	// failure may take back).
	prior     *cnistate.Record
	cookie    uint64
	madeEntry bool
}

// newRun parses the conf and sets up logging.
func newRun(op string, args *skel.CmdArgs) (*run, error) {
	c, err := conf.Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	r := &run{args: args, conf: c, start: time.Now()}
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel))
	var w io.Writer = os.Stderr
	if c.LogFile != "" {
		// Logging must never break a pod: fall back to stderr.
		if err := os.MkdirAll(filepath.Dir(c.LogFile), 0o755); err == nil {
			if f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
				w, r.logFile = f, f
			} else {
				fmt.Fprintf(os.Stderr, "kmesh-cni: open log file: %v\n", err)
			}
		}
	}
	r.log = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With(
		"op", op, "container", args.ContainerID, "ifname", args.IfName, "network", c.Name)
	return r, nil
}

// done logs how the command ended and closes the log.
func (r *run) done(err error) error {
	d := time.Since(r.start).Round(time.Microsecond)
	if err != nil {
		r.log.Error("failed", "took", d, "error", err)
	} else {
		r.log.Debug("done", "took", d)
	}
	if r.registry != nil {
		r.registry.Close()
	}
	if r.logFile != nil {
		r.logFile.Close()
	}
	return err
}

// step logs at debug level how long the run has taken so far.
func (r *run) step(what string) {
	r.log.Debug(what, "at", time.Since(r.start).Round(time.Microsecond))
}

// stateDir opens the state directory, as a CNI error on failure.
func (r *run) stateDir(exclusive bool) (*cnistate.Dir, error) {
	d, err := cnistate.Open(r.conf.StateDir, exclusive)
	if err != nil {
		return nil, types.NewError(conf.ErrState, fmt.Sprintf("kmesh-cni state directory %s: %v", r.conf.StateDir, err),
			"the plugin runs as root and needs a writable directory there (conf field stateDir)")
	}
	return d, nil
}

// daemon runs fn against the daemon with the daemon timeout, on one
// connection per run.
func (r *run) daemon(fn func(ctx context.Context, c *registry.Client) error) error {
	return r.daemonWithin(daemonTimeout, fn)
}

// daemonWithin is daemon with another bound.
func (r *run) daemonWithin(timeout time.Duration, fn func(ctx context.Context, c *registry.Client) error) error {
	if r.registry == nil {
		c, err := registry.Dial(r.conf.DaemonSocket)
		if err != nil {
			return err
		}
		r.registry = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return fn(ctx, r.registry)
}

// connectDaemon opens the connection to the daemon in the background, so
// its handshake overlaps the run's own work and the call is one round trip.
func (r *run) connectDaemon() {
	if r.registry == nil {
		c, err := registry.Dial(r.conf.DaemonSocket)
		if err != nil {
			return
		}
		r.registry = c
	}
	r.registry.Connect(daemonTimeout)
}

// errNoDatapath means the pinned maps are not there: no daemon has loaded
// the data path on this node since boot.
var errNoDatapath = errors.New("kmesh data path not loaded")

// openManage opens the pinned manage map under dir.
func openManage(dir string) (*manage.Map, error) {
	m, err := manage.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no pinned maps under %s (is the kmesh daemon running, with the same bpfDir?)", errNoDatapath, dir)
	}
	return m, err
}

// podOf is an attachment record as the daemon's API describes a pod.
func podOf(rec *cnistate.Record) *registry.Pod {
	p := &registry.Pod{
		Name:        rec.PodName,
		Namespace:   rec.PodNamespace,
		UID:         rec.PodUID,
		ContainerID: rec.ContainerID,
		NetnsPath:   rec.Netns,
		NetnsCookie: rec.Cookie,
		IPs:         rec.IPs,
		HostVeth:    rec.HostVeth,
		Enrolled:    rec.Enrolled,
		Reason:      rec.Reason,
		CgroupPath:  rec.CgroupPath,
		CgroupID:    rec.CgroupID,
		CNIIfname:   rec.IfName,
	}
	for _, i := range rec.Interfaces {
		p.Interfaces = append(p.Interfaces, registry.Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
	}
	return p
}

// tcKey names the attachment's tc filter: the one ADD attached, or the
// one the daemon attaches when it enrolls the pod later (same name).
func tcKey(rec *cnistate.Record) string {
	if rec.TCKey == "" && rec.HostVeth != "" {
		return podtc.Key(rec.ContainerID, rec.HostVeth)
	}
	return rec.TCKey
}

// release takes the attachment's netns out of the data path and removes
// its tc filter (tcKey, if any); what is already gone is not an error.
func release(bpfDir, tcKey string, cookie uint64) error {
	var errs []error
	if cookie != 0 {
		m, err := openManage(bpfDir)
		switch {
		case errors.Is(err, errNoDatapath):
			// Nothing pinned: nothing enrolled.
		case err != nil:
			errs = append(errs, err)
		default:
			errs = append(errs, m.Release(cookie))
			m.Close()
		}
	}
	if tcKey != "" {
		errs = append(errs, detachTC(bpfDir, tcKey))
	}
	return errors.Join(errs...)
}
