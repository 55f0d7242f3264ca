#!/usr/bin/env bash
# Builds the Kubernetes and Istio binaries the end-to-end tests run from the
# versions pinned in this module's go.mod, into tests/e2e/.bin/: the control
# plane (kube-apiserver, istiod's pilot-discovery) and, for the real node of
# tests/kubenode, kubelet, kube-controller-manager, kube-scheduler and
# kubectl. A binary newer than go.sum is kept as it is.
#
# Usage: tests/e2e/tools/build.sh [-f] [NAME...]
#   -f rebuilds even when up to date; NAMEs pick binaries (default: all).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${KMESH_E2E_BIN:-$(cd "$here/.." && pwd)/.bin}"
force=0
if [[ "${1:-}" == "-f" ]]; then
	force=1
	shift
fi
want=("$@")

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "build.sh: go not found on PATH or in /usr/local/go/bin" >&2; exit 1; }

# Static binaries: nothing here needs cgo.
export CGO_ENABLED=0
# The tools module is self-contained; ignore a go.work in a parent folder.
export GOWORK=off

# kubectl and client-go parse the server's version; an unset one ("v0.0.0-master")
# breaks them.
k8s_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version}"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor}"
k8s_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

mkdir -p "$bin"

# build NAME PACKAGE LDFLAGS: one `go build` at a time (the machines have 2 cores).
build() {
	local name="$1" pkg="$2" ldflags="$3"
	local out="$bin/$name"
	if ((${#want[@]})) && [[ " ${want[*]} " != *" $name "* ]]; then
		return
	fi
	if [[ $force -eq 0 && -x "$out" && "$out" -nt "$here/go.sum" && "$out" -nt "$here/go.mod" ]]; then
		echo "build.sh: $name is up to date ($out)"
		return
	fi
	echo "build.sh: building $name from $pkg"
	local start=$SECONDS
	(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
	mv -f "$out.tmp" "$out"
	echo "build.sh: built $name in $((SECONDS - start))s"
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery "-s -w"
# The real node (tests/kubenode): same module graph, so most packages are
# already compiled by the time these start.
build kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
