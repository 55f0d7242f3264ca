// mkimages builds the project's images (kmesh-daemon, kmesh-install,
// kmesh-waypoint) and the tests' workload images (fortio, pause) from
// static binaries, reproducibly, as docker-archive tarballs a node imports
// with `ctr -n k8s.io images import FILE`. `make images` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/kmesh-go/kmesh/tests/images"
)

func main() {
	root := images.RepoRoot()
	out := flag.String("out", filepath.Join(root, "bin", "images"), "folder for the tarballs (binaries go to its bin/)")
	workloads := flag.Bool("workloads", true, "also build the test workload images (fortio, pause)")
	flag.Parse()
	// make images runs this from tests/ with a relative -out.
	if abs, err := filepath.Abs(*out); err == nil {
		*out = abs
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bins, err := images.BuildBinaries(ctx, images.BuildOptions{Root: root, Out: filepath.Join(*out, "bin"), Logf: log.Printf})
	if err != nil {
		log.Fatal(err)
	}
	specs := images.Product(bins)
	if *workloads {
		specs = append(specs, images.Workloads(bins)...)
	}
	written, err := images.WriteAll(*out, specs)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("| image | digest | image ID (config) | size | file |")
	fmt.Println("| --- | --- | --- | ---: | --- |")
	for _, w := range written {
		rel, _ := filepath.Rel(root, w.Path)
		fmt.Printf("| %s | %s | %s | %.1f MB | %s |\n", w.Ref, w.Digest, w.ID, float64(w.Size)/1e6, rel)
	}
}
