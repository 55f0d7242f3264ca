// Command kmesh-cni is the chained CNI plugin that enrolls pods in the kmesh
// data path at creation. It runs after the primary network plugin (e.g.
// bridge), decides from the Kubernetes API whether the pod joins the mesh,
// writes the pod's netns cookie into the pinned manage map, attaches the tc
// program to the pod's host-side veth, and tells the node daemon.
//
// Every CNI 1.1 operation is served: ADD, DEL, CHECK, GC, STATUS, VERSION.

// A run is one short process: reading the cgroup's CPU limit at start (and
// updating GOMAXPROCS from it later) is time spent for nothing.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "ADD" {
		if err := addMain(os.Stdin); err != nil {
			if perr := err.Print(); perr != nil {
				fmt.Fprintln(os.Stderr, "kmesh-cni: write error JSON:", perr)
			}
			os.Exit(1)
		}
		return
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.PluginSupports(conf.SupportedVersions...), "CNI plugin kmesh-cni: enrolls pods in the kmesh sidecarless data path")
}
