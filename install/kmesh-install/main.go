// kmesh-install is the install container of the kmesh DaemonSet: it puts the
// kmesh-cni binary, its kubeconfig and its conflist entry on the node, keeps
// them there while it runs, and removes them on SIGTERM or SIGINT unless its
// DaemonSet is still there (an upgrade or a node reboot: the next pod takes
// them over). --uninstall removes them and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kmesh-go/kmesh/install/installer"
)

func main() {
	err := run(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-install:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg, err := installer.ParseArgs(args, os.Stderr)
	if err != nil {
		return err
	}
	in, err := installer.New(cfg)
	if err != nil {
		return err
	}
	if cfg.UninstallNow {
		// By hand, on a node the DaemonSet's installer could not clean.
		if err := in.Uninstall(); err != nil {
			return err
		}
		cfg.Log.Info("uninstalled")
		return nil
	}
	// The kubelet sends SIGTERM when the pod goes: uninstall if kmesh is
	// going away, then exit 0.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := in.Run(ctx); err != nil {
		return err
	}
	cfg.Log.Info("exiting")
	return nil
}
