// Package bootstrap runs kmesh-waypoint from a standard Envoy bootstrap
// file (YAML or JSON) instead of istiod: its static_resources (listeners
// with the proxy_protocol listener filter and filter_chain_match, HTTP
// connection managers with inline route_config, tcp_proxy, clusters with
// static load_assignment endpoints) go through the same translator as
// istiod's config. The file is watched; a version that does not parse or
// translate is logged and the last good one keeps serving.
//
// A file that runs here runs unchanged in Envoy. The converse holds for
// what the translator supports: anything else is refused with a clear
// error (a typed_config of a type this binary does not know cannot even be
// parsed) or, where it could deny traffic, turns its chain into a Deny.
package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/fsnotify/fsnotify"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/waypoint/model"
	"github.com/kmesh-go/kmesh/waypoint/translate"

	// The typed configs a bootstrap may name must be known to parse it.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/proxy_protocol/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// parse reads a bootstrap's static_resources, and names the other
// top-level fields it sets: Envoy would act on them, kmesh-waypoint does
// not (node alone is left out: with static resources it only names the
// proxy in Envoy's logs and stats).
func parse(b []byte) (translate.Input, []string, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return translate.Input{}, nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &bs); err != nil {
		return translate.Input{}, nil, fmt.Errorf("not an Envoy bootstrap (envoy.config.bootstrap.v3.Bootstrap): %w", err)
	}
	// The field rules Envoy checks before it looks at a config.
	if err := bs.ValidateAll(); err != nil {
		return translate.Input{}, nil, fmt.Errorf("invalid bootstrap: %w", err)
	}
	if dr := bs.GetDynamicResources(); dr != nil && (dr.GetLdsConfig() != nil || dr.GetCdsConfig() != nil || dr.GetAdsConfig() != nil) {
		return translate.Input{}, nil, errors.New("dynamic_resources are not supported: use static_resources (or run against istiod)")
	}
	sr := bs.GetStaticResources()
	if len(sr.GetListeners()) == 0 {
		return translate.Input{}, nil, errors.New("static_resources has no listeners")
	}
	if len(sr.GetSecrets()) > 0 {
		return translate.Input{}, nil, errors.New("static_resources.secrets (TLS) are not supported")
	}
	var ignored []string
	bs.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if name := string(fd.Name()); name != "static_resources" && name != "node" {
			ignored = append(ignored, name)
		}
		return true
	})
	sort.Strings(ignored)
	sum := sha256.Sum256(b)
	return translate.Input{Version: "file:" + hex.EncodeToString(sum[:6]), Listeners: sr.GetListeners(), Clusters: sr.GetClusters()}, ignored, nil
}

// Load reads and translates a bootstrap file.
func Load(path string, opts translate.Options) (*model.Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	in, ignored, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	snap, err := translate.Translate(in, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Said, not silently dropped: the log, the config dump and
	// kmesh_waypoint_config_unsupported show them as they show filters
	// that are not run.
	for _, name := range ignored {
		snap.Unsupported = append(snap.Unsupported, model.Unsupported{Where: "bootstrap", Name: name,
			Reason: "a bootstrap field kmesh-waypoint does not act on (its flags cover what it needs)"})
	}
	return snap, nil
}

// Watch applies the file now and again whenever it changes, until ctx
// ends. A version that cannot be read, parsed or translated is logged and
// skipped: the last good snapshot stays. A version apply refuses (the
// engine cannot bind a port, say) is tried again every RetryApply until
// it is taken or the file changes: what stood in its way may go without
// the file changing. It returns an error only when the file cannot be
// watched, or when its first version is bad (there is nothing to serve).
// RetryApply is how often Watch tries a refused version again.
var RetryApply = 5 * time.Second

func Watch(ctx context.Context, path string, opts translate.Options, apply func(*model.Snapshot) error, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "bootstrap", "path", path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	// The directory, not the file: editors save by writing a new file and
	// renaming it over the old one, and ConfigMap volumes swap a symlink.
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	var lastVersion string
	refused := false // the file's version was refused by apply: try again
	load := func() error {
		snap, err := Load(path, opts)
		if err != nil {
			return err
		}
		if snap.Version == lastVersion {
			return nil
		}
		log.Info("configuration loaded", "version", snap.Version, "listeners", len(snap.Listeners),
			"clusters", len(snap.Clusters), "unsupported", len(snap.Unsupported))
		for _, u := range snap.Unsupported {
			log.Warn("not enforced", "where", u.Where, "name", u.Name, "failClosed", u.FailClosed, "reason", u.Reason)
		}
		if err := apply(snap); err != nil {
			refused = true
			return fmt.Errorf("version %s refused, trying again in %v: %w", snap.Version, RetryApply, err)
		}
		refused = false
		lastVersion = snap.Version
		return nil
	}
	retry := time.NewTicker(RetryApply)
	defer retry.Stop()
	if err := load(); err != nil {
		if !refused {
			return err
		}
		log.Error("configuration not applied", "err", err)
	}
	// Changes come in bursts (truncate, write, rename); read once they
	// settle.
	const settle = 100 * time.Millisecond
	var timer *time.Timer
	fire := make(chan struct{}, 1)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	base := filepath.Base(path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			name := filepath.Base(ev.Name)
			if name != base && !strings.HasPrefix(name, "..") {
				continue // another file in the folder ("..data" is a ConfigMap swap)
			}
			if timer == nil {
				timer = time.AfterFunc(settle, func() {
					select {
					case fire <- struct{}{}:
					default:
					}
				})
			} else {
				timer.Reset(settle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			log.Warn("file watcher", "err", err)
		case <-fire:
			if err := load(); err != nil {
				log.Error("configuration not applied; keeping the last good one", "version", lastVersion, "err", err)
			}
		case <-retry.C:
			if !refused {
				continue
			}
			if err := load(); err != nil {
				log.Debug("configuration still not applied", "version", lastVersion, "err", err)
			}
		}
	}
}
