# kmesh-go: see README.md. Every target that needs system packages installs
# them first (.ci/deps), so a fresh machine needs nothing typed beforehand
# beyond Go itself (go.mod's version; .ci/deps installs no Go), make and git.

export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin

.PHONY: all deps build generate verify-generate lint test race fuzz test-unit e2e e2e-tools images node demo bench bench-node fortio clean

all: build

deps:
	@.ci/deps

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./...

# The images (kmesh-daemon, kmesh-install, kmesh-waypoint; the tests' fortio
# and pause) as docker-archive tarballs in bin/images, built from static
# binaries with go-containerregistry: no Docker, no registry, the same
# digest for the same sources. Load one on a node with `ctr -n k8s.io images import FILE`.
images:
	cd tests && CGO_ENABLED=0 $(GO) run ./mkimages -out ../$(BIN)/images

# Recompile the C under bpf/ with clang-19 (bpf2go) and the gRPC API with
# protoc; commit the results.
generate: deps
	$(GO) generate ./bpf/...
	$(GO) build -o $(BIN)/tools/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(GO) generate ./api/...

# CI: the committed objects must be exactly what the sources compile to.
verify-generate: generate
	@if [ -n "$$(git status --porcelain -- bpf api)" ]; then \
		git status --porcelain -- bpf api; \
		echo "generated BPF objects or gRPC code differ from the committed ones: run make generate and commit"; \
		exit 1; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd tests && $(GO) vet ./...

# Every test, kernel tests included (root, real kernel), short fuzz runs of
# the parsers that take untrusted input, then the end-to-end suite against
# the real control plane. fortio: the daemon's upgrade-under-load kernel test
# skips without it.
test: deps fortio lint
	KMESH_KERNEL_TESTS=1 CGO_ENABLED=0 $(GO) test -count=1 -timeout 30m ./...
	$(MAKE) race
	$(MAKE) fuzz
	$(MAKE) e2e

# The waypoint's packages again under the race detector, which needs cgo
# (tests only: the binaries stay static). Its goroutines share
# connections, pools and configuration; about 1.5 minutes here.
race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m ./waypoint/...

# Budgets in executions, not seconds: a duration's deadline races the
# fuzz workers in Go 1.26 (golang/go#75804: a bare "context deadline
# exceeded" failure at the end of a run, no input to blame) on a busy
# machine. 2-25 s each here.
FUZZTIME ?= 100000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/conf/
	$(GO) test -run '^$$' -fuzz '^FuzzParseArgs$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/conf/
	$(GO) test -run '^$$' -fuzz '^FuzzUpsertRemove$$' -fuzztime $(FUZZTIME) ./install/cniconf/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePod$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/registry/
	$(GO) test -run '^$$' -fuzz '^FuzzReadAnswer$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/registry/
	$(GO) test -run '^$$' -fuzz '^FuzzPrevResult$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/conf/
	$(GO) test -run '^$$' -fuzz '^FuzzOriginForm$$' -fuzztime $(FUZZTIME) ./waypoint/h1/

# kube-apiserver and pilot-discovery for the end-to-end suite, and kubelet,
# kube-controller-manager, kube-scheduler and kubectl for its real node,
# built from the versions pinned in tests/e2e/tools (cold: see
# tests/e2e/README.md; then a no-op).
e2e-tools:
	tests/e2e/tools/build.sh

# The end-to-end suite (tests/, its own module): real etcd, kube-apiserver
# and istiod, the real CNI chain, kmesh-daemon as a process, real traffic;
# and tests/e2e/node: a real node (kubelet, containerd) with kmesh installed
# from its images by kubectl apply. One package at a time: each starts its
# own control plane on 2 cores.
e2e: deps e2e-tools
	cd tests && KMESH_E2E=1 CGO_ENABLED=0 $(GO) test -count=1 -p 1 -timeout 30m ./...

# A real Kubernetes node on this machine (tests/kubenode) with kmesh
# installed through its DaemonSet, for a person to poke at with kubectl;
# ^C removes it all. `bin/kmnode -no-kmesh` leaves kmesh out.
node: deps e2e-tools
	cd tests && CGO_ENABLED=0 $(GO) build -o ../$(BIN)/kmnode ./kmnode
	$(BIN)/kmnode

# A node in a box on the embedded default mesh (conf/kmesh-demo.yaml): no
# cluster needed. Builds what it runs and removes what it made, also on ^C.
demo: deps
	cd tests && CGO_ENABLED=0 $(GO) build -o ../$(BIN)/kmesh-demo ./demo
	$(BIN)/kmesh-demo

# Pure-Go tests only: no root, no kernel.
test-unit:
	CGO_ENABLED=0 $(GO) test -count=1 ./...
	cd tests && CGO_ENABLED=0 $(GO) test -count=1 ./...

# Benchmarks print markdown tables; they never fail on a time. The last one
# puts every path side by side with fortio (direct, iptables DNAT, HAProxy,
# kmesh) on the same pods: about 12 minutes. One package at a time (-p 1):
# two benchmarks sharing the 2 cores would each measure the other.
bench: deps fortio
	KMESH_KERNEL_TESTS=1 KMESH_BENCH=1 $(GO) test -count=1 -p 1 -timeout 60m -run '^TestBench' -v \
		./bpf/ ./daemon/ ./daemon/telemetry/ ./plugins/kmesh-cni/ | grep -v -e '^=== RUN' -e '^--- ' -e '^PASS' -e '^ok ' -e '^\s*$$'
	cd tests && CGO_ENABLED=0 $(GO) build -o ../$(BIN)/kmesh-bench ./bench
	$(BIN)/kmesh-bench
	$(MAKE) bench-node

# On a real node: pod start-up (creation to Ready) with and without kmesh in
# the chain, and the L4 paths through kubelet-made pods (~10 minutes).
bench-node: deps e2e-tools
	cd tests && CGO_ENABLED=0 $(GO) build -o ../$(BIN)/kmesh-bench-node ./benchnode
	$(BIN)/kmesh-bench-node

# The load generator of the acceleration and telemetry benchmarks, at the
# release internal/fortio pins.
FORTIO_VERSION := $(shell sed -n 's/^const Version = "\(.*\)"/\1/p' internal/fortio/version.go)
fortio:
	@command -v fortio >/dev/null || $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

clean:
	rm -rf $(BIN)
