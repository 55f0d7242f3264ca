// Command kmesh-cni-kube is kmesh-cni's client of the Kubernetes API. The
// plugin runs it when the daemon cannot decide a pod's enrollment (the
// daemon is down, or its watch has not seen the pod yet); the plugin itself
// links no TLS stack, whose package initialisation alone cost every
// plugin run ~0.4 ms whether it talked to the API or not.
//
//	kmesh-cni-kube decide --kubeconfig F --namespace N --name P [--uid U] [--mark]
//	kmesh-cni-kube mark|unmark --kubeconfig F --namespace N --name P
//	kmesh-cni-kube check --kubeconfig F
//
// decide reads the pod and its namespace and applies the enrollment rules;
// with --mark it also annotates an enrolled pod on the same connection.
// check only reads the kubeconfig and builds a client from it (no
// request): the plugin asks once per version of the file, so a broken
// kubeconfig fails ADD even while the daemon decides every pod.
// The answer is one JSON object on stdout (see answer); the exit status is
// non-zero only when the command line itself is wrong.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kmesh-go/kmesh/internal/enrollment"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/conf"
	"github.com/kmesh-go/kmesh/plugins/kmesh-cni/kube"
)

// answer is what the plugin reads back.
type answer struct {
	Enroll bool   `json:"enroll"`
	Reason string `json:"reason,omitempty"`
	// Marked: the pod carries the redirection annotation now.
	Marked    bool   `json:"marked"`
	MarkError string `json:"markError,omitempty"`
	// Kind classifies Error: config (the kubeconfig cannot make a client),
	// stale (the pod's UID differs), notfound, forbidden (also
	// unauthorized), unreachable (anything else).
	Kind  string `json:"kind,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	op := os.Args[1]
	fs := flag.NewFlagSet("kmesh-cni-kube "+op, flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file")
	namespace := fs.String("namespace", "", "pod namespace")
	name := fs.String("name", "", "pod name")
	uid := fs.String("uid", "", "pod UID (decide: a different one is a stale pod)")
	mark := fs.Bool("mark", false, "decide: annotate the pod when it is enrolled")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on the whole command")
	_ = fs.Parse(os.Args[2:])
	if *kubeconfig == "" || (op != "check" && (*namespace == "" || *name == "")) || fs.NArg() != 0 {
		usage()
	}
	var a answer
	switch op {
	case "decide", "mark", "unmark", "check":
		a = run(op, *kubeconfig, conf.Pod{Namespace: *namespace, Name: *name, UID: *uid}, *mark, *timeout)
	default:
		usage()
	}
	if err := json.NewEncoder(os.Stdout).Encode(a); err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-cni-kube:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kmesh-cni-kube decide|mark|unmark --kubeconfig FILE --namespace NS --name POD [--uid UID] [--mark] [--timeout D]\n       kmesh-cni-kube check --kubeconfig FILE")
	os.Exit(2)
}

func run(op, kubeconfig string, pod conf.Pod, mark bool, timeout time.Duration) answer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg, err := kube.LoadConfig(kubeconfig, timeout)
	if err != nil {
		return answer{Kind: "config", Error: err.Error()}
	}
	kc, err := kube.New(cfg)
	if err != nil {
		return answer{Kind: "config", Error: fmt.Sprintf("kubeconfig %s: %v", kubeconfig, err)}
	}
	defer kc.Close()
	var a answer
	switch op {
	case "check":
		// Reading the kubeconfig and making a client of it was the check.
	case "decide":
		d, err := kc.Decide(ctx, pod)
		if err != nil {
			return failed(err)
		}
		a.Enroll, a.Reason = d.Enroll, d.Reason
		if !d.Enroll || !mark {
			return a
		}
		fallthrough
	case "mark":
		if err := kc.AnnotatePod(ctx, pod.Namespace, pod.Name, enrollment.AnnotationRedirection, "enabled"); err != nil {
			if op == "mark" {
				return failed(err)
			}
			a.MarkError = err.Error()
			return a
		}
		a.Marked = true
	case "unmark":
		if err := kc.RemovePodAnnotation(ctx, pod.Namespace, pod.Name, enrollment.AnnotationRedirection); err != nil {
			return failed(err)
		}
	}
	return a
}

func failed(err error) answer {
	a := answer{Kind: "unreachable", Error: err.Error()}
	switch {
	case errors.Is(err, kube.ErrStalePod):
		a.Kind = "stale"
	case kube.IsNotFound(err):
		a.Kind = "notfound"
	case kube.IsForbidden(err) || kube.IsUnauthorized(err):
		a.Kind = "forbidden"
	}
	return a
}
