# kmesh-go: see README.md. Every target that needs system packages installs
# them first (.ci/deps), so a fresh machine needs nothing typed beforehand.

export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin

.PHONY: all deps build generate verify-generate lint test test-unit bench clean

all: build

deps:
	@.ci/deps

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./...

# Recompile the C under bpf/ with clang-19 (bpf2go); commit the results.
generate: deps
	$(GO) generate ./bpf/...

# CI: the committed objects must be exactly what the sources compile to.
verify-generate: generate
	@if [ -n "$$(git status --porcelain -- bpf)" ]; then \
		git status --porcelain -- bpf; \
		echo "generated BPF objects differ from the committed ones: run make generate and commit"; \
		exit 1; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every test, kernel tests included (root, real kernel).
test: deps lint
	KMESH_KERNEL_TESTS=1 CGO_ENABLED=0 $(GO) test -count=1 -timeout 20m ./...

# Pure-Go tests only: no root, no kernel.
test-unit:
	CGO_ENABLED=0 $(GO) test -count=1 ./...

bench: deps
	KMESH_KERNEL_TESTS=1 KMESH_BENCH=1 $(GO) test -count=1 -timeout 30m -run '^TestBench' -v ./bpf/ | grep -v -e '^=== RUN' -e '^--- ' -e '^PASS' -e '^ok '

clean:
	rm -rf $(BIN)
