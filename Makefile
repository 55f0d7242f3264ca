# kmesh-go: see README.md. Every target that needs system packages installs
# them first (.ci/deps), so a fresh machine needs nothing typed beforehand.

export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin

.PHONY: all deps build generate verify-generate lint test fuzz test-unit bench fortio clean

all: build

deps:
	@.ci/deps

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./...

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

# Every test, kernel tests included (root, real kernel), then short fuzz
# runs of the parsers that take untrusted input.
test: deps lint
	KMESH_KERNEL_TESTS=1 CGO_ENABLED=0 $(GO) test -count=1 -timeout 30m ./...
	$(MAKE) fuzz

FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/conf/
	$(GO) test -run '^$$' -fuzz '^FuzzParseArgs$$' -fuzztime $(FUZZTIME) ./plugins/kmesh-cni/conf/
	$(GO) test -run '^$$' -fuzz '^FuzzUpsertRemove$$' -fuzztime $(FUZZTIME) ./install/cniconf/

# Pure-Go tests only: no root, no kernel.
test-unit:
	CGO_ENABLED=0 $(GO) test -count=1 ./...

# Benchmarks print markdown tables; they never fail on a time.
bench: deps fortio
	KMESH_KERNEL_TESTS=1 KMESH_BENCH=1 $(GO) test -count=1 -timeout 60m -run '^TestBench' -v \
		./bpf/ ./daemon/ ./daemon/telemetry/ ./plugins/kmesh-cni/ | grep -v -e '^=== RUN' -e '^--- ' -e '^PASS' -e '^ok ' -e '^\s*$$'

# The load generator of the acceleration and telemetry benchmarks (later
# releases need a module the module proxy here refuses).
FORTIO_VERSION := v1.66.5
fortio:
	@command -v fortio >/dev/null || $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

clean:
	rm -rf $(BIN)
