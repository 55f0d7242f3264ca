// Package installer puts kmesh-cni on a node and takes it off again: it
// copies the binaries into the CNI bin directory, writes the plugin's
// kubeconfig, adds the kmesh-cni entry to the primary network's conflist,
// keeps all three in place while it runs, and undoes them when told to stop
// unless its DaemonSet is still there to start the next installer pod.
package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/fsnotify/fsnotify"

	"github.com/kmesh-go/kmesh/install/atomicfile"
	"github.com/kmesh-go/kmesh/install/cniconf"
	"github.com/kmesh-go/kmesh/install/kubeconfig"
	pluginconf "github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

// Config says where things are. Host paths (CNIBinDir, CNIConfDir,
// KubeconfigPath) are as the node sees them; HostRoot is where the node's
// root is mounted in this container. The others are container paths.
type Config struct {
	HostRoot   string
	CNIBinDir  string
	CNIConfDir string
	// ConflistName names the file to edit in CNIConfDir; empty means the
	// primary network's, found as the runtime finds it.
	ConflistName string

	// BinariesDir holds Binaries, the files to copy into CNIBinDir.
	BinariesDir string
	Binaries    []string

	// KubeconfigPath is where the plugin's kubeconfig goes; empty means none
	// is written (the plugin then enrolls by its defaultEnroll).
	KubeconfigPath string
	TokenFile      string
	CAFile         string
	// APIServer is the API server's URL; empty means from the environment.
	APIServer string

	// Entry is the kmesh-cni entry; its Kubeconfig is KubeconfigPath when
	// left empty.
	Entry cniconf.Entry

	// Resync is how often everything is checked even without a file event.
	Resync time.Duration
	// Debounce gathers a burst of file events into one check.
	Debounce time.Duration

	// DaemonSetName and DaemonSetNamespace name the DaemonSet that runs this
	// installer. When set, stopping uninstalls only if it is gone or being
	// deleted; otherwise (an upgrade, a node going down) everything stays
	// for the next installer pod. Empty means always uninstall.
	DaemonSetName      string
	DaemonSetNamespace string
	// UninstallOnExit uninstalls on stop whatever the DaemonSet's state.
	UninstallOnExit bool
	// UninstallNow: take kmesh-cni off the node and exit, installing
	// nothing (kmesh-install --uninstall, run by hand on a node whose
	// installer could not uninstall, e.g. the API server unreachable when
	// the DaemonSet went).
	UninstallNow bool
	// ExitCheckTimeout bounds the DaemonSet look-up on stop.
	ExitCheckTimeout time.Duration

	Log *slog.Logger
}

// Installer keeps kmesh-cni installed on a node while it runs.
type Installer struct {
	cfg       Config
	log       *slog.Logger
	entry     []byte
	confDir   string // with HostRoot
	binDir    string // with HostRoot
	kubecfg   string // with HostRoot; empty for none
	statePath string
	state     *state

	waiting string // the last reason logged for waiting, to log it once
}

// New checks cfg and reads the state a previous run left.
func New(cfg Config) (*Installer, error) {
	if cfg.CNIBinDir == "" || cfg.CNIConfDir == "" {
		return nil, errors.New("the CNI bin and conf directories must be set")
	}
	if cfg.KubeconfigPath != "" && (cfg.TokenFile == "" || cfg.CAFile == "") {
		return nil, errors.New("a kubeconfig needs the token and CA files")
	}
	if err := checkExitConfig(&cfg); err != nil {
		return nil, err
	}
	if cfg.ConflistName != "" && (filepath.Base(cfg.ConflistName) != cfg.ConflistName || !cniconf.IsConfFile(cfg.ConflistName)) {
		return nil, fmt.Errorf("--conflist-name %q must be a file name ending in one of %v", cfg.ConflistName, cniconf.Extensions)
	}
	for _, b := range cfg.Binaries {
		if b == "" || filepath.Base(b) != b {
			return nil, fmt.Errorf("binary %q must be a plain file name", b)
		}
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.ExitCheckTimeout <= 0 {
		// Well inside the pod's grace period, which the daemon shares.
		cfg.ExitCheckTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Entry.Kubeconfig == "" {
		cfg.Entry.Kubeconfig = cfg.KubeconfigPath
	}
	entry, err := json.Marshal(cfg.Entry)
	if err != nil {
		return nil, err
	}
	if err := checkEntry(entry, "kmesh-install-check", "1.0.0"); err != nil {
		return nil, err
	}
	in := &Installer{
		cfg:     cfg,
		log:     cfg.Log,
		entry:   entry,
		confDir: hostPath(cfg.HostRoot, cfg.CNIConfDir),
		binDir:  hostPath(cfg.HostRoot, cfg.CNIBinDir),
	}
	if cfg.KubeconfigPath != "" {
		in.kubecfg = hostPath(cfg.HostRoot, cfg.KubeconfigPath)
	}
	in.statePath = filepath.Join(in.confDir, stateName)
	if in.state, err = loadState(in.statePath); err != nil {
		return nil, err
	}
	return in, nil
}

// checkEntry runs the entry through kmesh-cni's own parser, as a runtime
// would hand it over in a list called name at cniVersion version, so a value
// the plugin rejects never reaches a node.
func checkEntry(entry []byte, name, version string) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(entry, &fields); err != nil {
		return err
	}
	var err error
	if fields["cniVersion"], err = json.Marshal(version); err != nil {
		return err
	}
	if fields["name"], err = json.Marshal(name); err != nil {
		return err
	}
	stdin, err := json.Marshal(fields)
	if err != nil {
		return err
	}
	if _, err := pluginconf.Parse(stdin); err != nil {
		var cniErr *types.Error
		if errors.As(err, &cniErr) && cniErr.Details != "" {
			return fmt.Errorf("kmesh-cni would reject its entry: %s: %s", cniErr.Msg, cniErr.Details)
		}
		return fmt.Errorf("kmesh-cni would reject its entry: %w", err)
	}
	return nil
}

// checkEntryIn checks the entry as the runtime would hand it over from list,
// the conflist about to be written: libcni injects the list's name and
// cniVersion into every plugin's config, and kmesh-cni fails an ADD whose
// cniVersion it does not speak, whatever its failurePolicy. In such a chain
// the entry would break every pod on the node, so it must not go in.
func checkEntryIn(entry, list []byte) error {
	parsed, err := libcni.NetworkConfFromBytes(list)
	if err != nil {
		return fmt.Errorf("the runtime would not read it: %w", err)
	}
	// A runtime with a libcni that knows "cniVersions" picks from it (that is
	// parsed.CNIVersion); an older one uses "cniVersion" alone. Either may
	// read the file.
	versions := []string{parsed.CNIVersion}
	var raw struct {
		CNIVersion *string `json:"cniVersion"`
	}
	if err := json.Unmarshal(list, &raw); err == nil && raw.CNIVersion != nil && *raw.CNIVersion != parsed.CNIVersion {
		versions = append(versions, *raw.CNIVersion)
	}
	for _, v := range versions {
		if err := checkEntry(entry, parsed.Name, v); err != nil {
			return err
		}
	}
	return nil
}

func hostPath(root, p string) string {
	if root == "" {
		return p
	}
	return filepath.Join(root, p)
}

// Run installs and keeps the installation in place until ctx is done. Then
// it uninstalls, unless shouldUninstall finds the DaemonSet still there: the
// entry, binaries, kubeconfig and state then stay, and the next installer
// pod adopts them as they are. After an error it always uninstalls.
func (in *Installer) Run(ctx context.Context) error {
	err := in.run(ctx)
	if err == nil && !in.shouldUninstall() {
		in.log.Info("left kmesh-cni installed")
		return nil
	}
	if uerr := in.Uninstall(); uerr != nil {
		err = errors.Join(err, uerr)
	}
	if err == nil {
		in.log.Info("uninstalled")
	}
	return err
}

func (in *Installer) run(ctx context.Context) error {
	// Binaries first and the conf entry last: the runtime must never find
	// an entry whose binary or kubeconfig is not there yet.
	if err := in.copyBinaries(); err != nil {
		return err
	}
	if err := in.writeKubeconfig(); err != nil {
		return err
	}
	if err := os.MkdirAll(in.confDir, 0o755); err != nil {
		return fmt.Errorf("failed to create the CNI conf directory %q: %w", in.confDir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("failed to start a file watcher: %w", err)
	}
	defer w.Close()
	if err := w.Add(in.confDir); err != nil {
		return fmt.Errorf("failed to watch %q: %w", in.confDir, err)
	}
	if in.kubecfg != "" {
		// Kubelet rotates a projected token by swapping a symlink in its
		// directory, so the directory is what to watch, not the file.
		for _, dir := range uniqueDirs(in.cfg.TokenFile, in.cfg.CAFile, in.kubecfg) {
			if err := w.Add(dir); err != nil {
				in.log.Warn("cannot watch; relying on the periodic check", "dir", dir, "err", err)
			}
		}
	}
	in.reconcile()

	resync := time.NewTicker(in.cfg.Resync)
	defer resync.Stop()
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("the file watcher stopped")
			}
			if isOwnTemp(ev.Name) {
				continue
			}
			if pending == nil {
				pending = time.After(in.cfg.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("the file watcher stopped")
			}
			// An overflow loses events, not the state on disk: look again.
			in.log.Warn("file watcher error; checking everything", "err", err)
			in.reconcile()
		case <-pending:
			pending = nil
			in.reconcile()
		case <-resync.C:
			in.reconcile()
		}
	}
}

// isOwnTemp matches atomicfile's temporary names, which come and go on every
// write and need no second look.
func isOwnTemp(name string) bool {
	base := filepath.Base(name)
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".tmp-")
}

func uniqueDirs(paths ...string) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, p := range paths {
		d := filepath.Dir(p)
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// reconcile puts back whatever is missing or out of date. Errors are logged:
// the next event or resync tries again.
func (in *Installer) reconcile() {
	if err := in.checkBinaries(); err != nil {
		in.log.Error("binaries", "err", err)
	}
	if err := in.writeKubeconfig(); err != nil {
		in.log.Error("kubeconfig", "err", err)
	}
	if err := in.reconcileConf(); err != nil {
		in.log.Error("CNI config", "err", err)
	}
}

func (in *Installer) copyBinaries() error {
	if len(in.cfg.Binaries) > 0 {
		if err := os.MkdirAll(in.binDir, 0o755); err != nil {
			return fmt.Errorf("failed to create the CNI bin directory %q: %w", in.binDir, err)
		}
	}
	for _, name := range in.cfg.Binaries {
		src, dst := filepath.Join(in.cfg.BinariesDir, name), filepath.Join(in.binDir, name)
		if err := atomicfile.Copy(src, dst, 0o755); err != nil {
			return fmt.Errorf("failed to install binary %q: %w", name, err)
		}
		in.log.Info("installed binary", "path", dst)
	}
	return nil
}

// checkBinaries copies again a binary that went missing or changed size.
func (in *Installer) checkBinaries() error {
	var errs []error
	for _, name := range in.cfg.Binaries {
		src, dst := filepath.Join(in.cfg.BinariesDir, name), filepath.Join(in.binDir, name)
		want, err := os.Stat(src)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if have, err := os.Stat(dst); err == nil && have.Size() == want.Size() && have.Mode().Perm() == 0o755 {
			continue
		}
		if err := atomicfile.Copy(src, dst, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("failed to reinstall binary %q: %w", name, err))
			continue
		}
		in.log.Info("reinstalled binary", "path", dst)
	}
	return errors.Join(errs...)
}

// writeKubeconfig writes the kubeconfig if its content would change, which
// is how a rotated token reaches the plugin.
func (in *Installer) writeKubeconfig() error {
	if in.kubecfg == "" {
		return nil
	}
	token, err := os.ReadFile(in.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("failed to read the service-account token: %w", err)
	}
	ca, err := os.ReadFile(in.cfg.CAFile)
	if err != nil {
		return fmt.Errorf("failed to read the cluster CA: %w", err)
	}
	server := in.cfg.APIServer
	if server == "" {
		if server, err = kubeconfig.ServerFromEnv(); err != nil {
			return err
		}
	}
	want, err := kubeconfig.Build(server, ca, string(token))
	if err != nil {
		return fmt.Errorf("cannot build the kubeconfig from %q and %q: %w", in.cfg.TokenFile, in.cfg.CAFile, err)
	}
	if have, err := os.ReadFile(in.kubecfg); err == nil && bytes.Equal(have, want) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(in.kubecfg), 0o755); err != nil {
		return fmt.Errorf("failed to create the kubeconfig's directory: %w", err)
	}
	if err := atomicfile.Write(in.kubecfg, want, 0o600); err != nil {
		return err
	}
	in.log.Info("wrote kubeconfig", "path", in.kubecfg)
	return nil
}

// waitFor logs, once per reason, why the entry is not written yet.
func (in *Installer) waitFor(reason string) {
	if in.waiting != reason {
		in.waiting = reason
		in.log.Warn("waiting for the primary CNI network config; kmesh-cni is not in the chain yet",
			"dir", in.confDir, "reason", reason)
	}
}

// target returns the name of the file to put the entry in, or "" to wait.
func (in *Installer) target() (string, error) {
	if name := in.cfg.ConflistName; name != "" {
		if exists(filepath.Join(in.confDir, name)) {
			return name, nil
		}
		// A named .conf that this installer already turned into a .conflist.
		if list := cniconf.ListName(name); !cniconf.IsList(name) && in.state.Files[list] != nil &&
			in.state.Files[list].FromName == name && exists(filepath.Join(in.confDir, list)) {
			return list, nil
		}
		in.waitFor(fmt.Sprintf("%s does not exist yet", name))
		return "", nil
	}
	name, skipped, err := cniconf.FindPrimary(in.confDir)
	if errors.Is(err, cniconf.ErrNoPrimary) {
		reason := "no network config file yet"
		if len(skipped) > 0 {
			var b strings.Builder
			for i, s := range skipped {
				if i > 0 {
					b.WriteString("; ")
				}
				b.WriteString(s.Name + ": " + s.Reason)
			}
			reason = "no usable network config file (" + b.String() + ")"
		}
		in.waitFor(reason)
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, s := range skipped {
		in.log.Debug("skipped conf file", "name", s.Name, "reason", s.Reason)
	}
	// A single-plugin file this installer turned into name, written again
	// by its agent: a .conf sorts before its conflist and is found first,
	// but a .json sorts after it, and the conflist made from the earlier
	// content would stay the node's network (for the runtime too). The
	// file is converted again, as a .conf is.
	if st := in.state.Files[name]; st != nil && st.FromName != "" && st.FromName != name {
		if err := cniconf.CheckFile(in.confDir, st.FromName); err == nil {
			return st.FromName, nil
		}
	}
	return name, nil
}

func (in *Installer) reconcileConf() error {
	name, err := in.target()
	if err != nil || name == "" {
		return err
	}
	in.waiting = ""
	// The primary network moved to another file: leave the old one as it
	// was before the entry went in.
	for old, st := range in.state.Files {
		// A single-plugin file written again next to the conflist made from
		// it: convert replaces that conflist, nothing to release.
		again := !cniconf.IsList(name) && old == cniconf.ListName(name) && st.FromName == name
		if old != name && !again {
			if err := in.release(old); err != nil {
				return err
			}
		}
	}
	path := filepath.Join(in.confDir, name)
	doc, mode, err := readFile(path)
	if err != nil {
		return err
	}
	if !cniconf.IsList(name) {
		return in.convert(name, doc, mode)
	}
	out, err := cniconf.Upsert(doc, in.entry)
	if err != nil {
		return fmt.Errorf("cannot add the kmesh-cni entry to %q: %w", path, err)
	}
	if err := checkEntryIn(in.entry, out); err != nil {
		// An entry already there (the file changed under it) comes out.
		if _, has, rerr := cniconf.Remove(doc); in.state.Files[name] != nil || (rerr == nil && has) {
			if rerr := in.release(name); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return fmt.Errorf("not adding the kmesh-cni entry to %q: %w", path, err)
	}
	if in.state.Files[name] == nil {
		in.state.Files[name] = &fileState{}
		if err := in.state.save(in.statePath); err != nil {
			return err
		}
	}
	if bytes.Equal(out, doc) {
		return nil
	}
	if err := atomicfile.Write(path, out, mode); err != nil {
		return err
	}
	in.log.Info("added the kmesh-cni entry", "conflist", path)
	return nil
}

// convert replaces a single-plugin file with a conflist holding that plugin
// and the entry, and records the original so uninstall can restore it.
func (in *Installer) convert(name string, doc []byte, mode os.FileMode) error {
	path := filepath.Join(in.confDir, name)
	listName := cniconf.ListName(name)
	listPath := filepath.Join(in.confDir, listName)
	if exists(listPath) && (in.state.Files[listName] == nil || in.state.Files[listName].FromName != name) {
		return fmt.Errorf("cannot turn %q into a conflist: %q exists and kmesh did not write it; "+
			"name the file to edit with --conflist-name", path, listPath)
	}
	made, err := cniconf.FromConf(doc)
	if err != nil {
		return fmt.Errorf("cannot turn %q into a conflist: %w", path, err)
	}
	out, err := cniconf.Upsert(made, in.entry)
	if err != nil {
		return err
	}
	if err := checkEntryIn(in.entry, out); err != nil {
		// The file was written again at a version kmesh-cni does not
		// speak: the conflist made from its earlier content goes too.
		if st := in.state.Files[listName]; st != nil && st.FromName == name {
			if rerr := in.release(listName); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return fmt.Errorf("not turning %q into a conflist with the kmesh-cni entry: %w", path, err)
	}
	// Remember the original before it goes, so a crash in between loses
	// nothing.
	in.state.Files[listName] = &fileState{FromName: name, FromContent: doc, FromMode: mode, Made: made}
	if err := in.state.save(in.statePath); err != nil {
		return err
	}
	if err := atomicfile.Write(listPath, out, mode); err != nil {
		return err
	}
	changed, err := removeIfUnchanged(path, doc, mode)
	if err != nil {
		return fmt.Errorf("failed to remove %q after writing %q: %w", path, listPath, err)
	}
	if changed {
		// Its write event (or the next resync) converts it again; target
		// picks it over the conflist made from its earlier content.
		in.log.Info("the network config changed while it was converted; converting it again", "path", path)
		return nil
	}
	in.log.Info("turned the network config into a conflist with the kmesh-cni entry", "from", path, "conflist", listPath)
	return nil
}

// removeIfUnchanged removes path if it still holds doc with mode, and
// reports whether it held something else, which it leaves in place. The
// network agent may write its file again at any moment, in place or by a
// rename: the file is first renamed aside (atomic: whatever is at path then
// is what is judged, and a writer still holding it open writes on into the
// aside copy), then compared; a changed one is linked back, unless an even
// newer file took the name meanwhile, which then stays.
func removeIfUnchanged(path string, doc []byte, mode os.FileMode) (bool, error) {
	aside := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".kmesh-removed")
	if err := os.Rename(path, aside); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // removed meanwhile: nothing to keep
		}
		return false, err
	}
	now, nowMode, err := readFile(aside)
	if err == nil && bytes.Equal(now, doc) && nowMode == mode {
		return false, os.Remove(aside)
	}
	switch err := os.Link(aside, path); {
	case err == nil, errors.Is(err, os.ErrExist):
		return true, os.Remove(aside)
	default:
		// A file system without hard links: a rename puts it back (over
		// a newer file, if one came in these microseconds).
		if rerr := os.Rename(aside, path); rerr != nil {
			return true, fmt.Errorf("put the changed %q back: %w (it is at %q)", path, errors.Join(err, rerr), aside)
		}
		return true, nil
	}
}

// release takes the entry out of the conf file name and forgets the file. A
// conflist made from a single-plugin file that nobody else changed becomes
// that file again, byte for byte.
func (in *Installer) release(name string) error {
	st := in.state.Files[name]
	path := filepath.Join(in.confDir, name)
	doc, mode, err := readFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Someone else removed it; nothing of ours is left in it.
	case err != nil:
		return err
	default:
		out, removed, err := cniconf.Remove(doc)
		if err != nil {
			return fmt.Errorf("cannot remove the kmesh-cni entry from %q: %w", path, err)
		}
		orig := ""
		if st != nil && st.FromName != "" {
			orig = filepath.Join(in.confDir, st.FromName)
		}
		switch {
		case orig != "" && bytes.Equal(out, st.Made) && !exists(orig):
			// The original first, then the conflist: in between, the
			// runtime reads the original, which sorts first.
			if err := atomicfile.Write(orig, st.FromContent, st.FromMode); err != nil {
				return err
			}
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("failed to remove %q after restoring %q: %w", path, orig, err)
			}
			in.log.Info("restored the original network config", "path", orig, "removed", path)
		case orig != "" && bytes.Equal(out, st.Made):
			// Its owner wrote the original again since: the conflist, made
			// from an earlier copy, is stale, and would become the node's
			// network once the owner renames or removes its file.
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("failed to remove %q, made from an earlier %q: %w", path, orig, err)
			}
			in.log.Info("removed the conflist made from an earlier copy of the network config", "removed", path, "original", orig)
		case removed:
			if err := atomicfile.Write(path, out, mode); err != nil {
				return err
			}
			in.log.Info("removed the kmesh-cni entry", "conflist", path)
		}
	}
	delete(in.state.Files, name)
	return in.state.save(in.statePath)
}

// Uninstall removes the entry, the kubeconfig and the binaries, in that
// order, so the runtime never runs an entry without its binary.
func (in *Installer) Uninstall() error {
	var errs []error
	// Every conf file carrying the entry, recorded or not: the state file
	// may be gone (deleted by hand, another installer's), and an entry
	// left in a file would fail every pod's ADD once the binary goes.
	names, err := in.filesWithEntry()
	if err != nil {
		errs = append(errs, err)
	}
	for name := range in.state.Files {
		names[name] = true
	}
	for name := range names {
		if err := in.release(name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// An entry is still in a conf file: without its binary every
		// pod's ADD would fail, so what it needs stays for a later try.
		errs = append(errs, errors.New("kept the kmesh-cni binaries and kubeconfig, which an entry left in place needs"))
		return errors.Join(errs...)
	}
	if in.kubecfg != "" {
		if err := os.Remove(in.kubecfg); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("failed to remove the kubeconfig: %w", err))
		} else {
			in.log.Info("removed kubeconfig", "path", in.kubecfg)
		}
	}
	for _, name := range in.cfg.Binaries {
		path := filepath.Join(in.binDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("failed to remove binary: %w", err))
		} else {
			in.log.Info("removed binary", "path", path)
		}
	}
	return errors.Join(errs...)
}

// filesWithEntry names the conf files in the conf directory that carry a
// kmesh-cni entry.
func (in *Installer) filesWithEntry() (map[string]bool, error) {
	names := map[string]bool{}
	des, err := os.ReadDir(in.confDir)
	if errors.Is(err, os.ErrNotExist) {
		return names, nil
	}
	if err != nil {
		return names, err
	}
	for _, de := range des {
		if !de.Type().IsRegular() || !cniconf.IsConfFile(de.Name()) {
			continue
		}
		doc, err := os.ReadFile(filepath.Join(in.confDir, de.Name()))
		if err != nil {
			return names, err
		}
		if _, removed, err := cniconf.Remove(doc); err == nil && removed {
			names[de.Name()] = true
		}
	}
	return names, nil
}

func readFile(path string) ([]byte, os.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, fmt.Errorf("failed to read %q: %w", path, err)
	}
	return b, st.Mode().Perm(), nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
