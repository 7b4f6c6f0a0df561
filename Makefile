# kwarm — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export KUBECONFIG ?= /var/lib/kwarm-cluster/kubeconfig
REGISTRY ?= 127.0.0.1:5000
IMAGE_TAG ?= dev
KWARM_IMAGE ?= $(REGISTRY)/kwarm/kwarm:$(IMAGE_TAG)
SLEEP_IMAGE ?= $(REGISTRY)/kwarm/sleep:$(IMAGE_TAG)
KWOK_NODES ?= 0

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the manager and the sleep holder for x86_64 and aarch64 (static binaries in _output/bin)
	hack/build-kwarm.sh
	hack/build-sleep.sh

.PHONY: lint
lint: ## chart README fresh, yamllint and offline schema validation of every rendered manifest, cargo fmt --check, clippy -D warnings (manager, e2e, sleep), shellcheck when present
	@tmp="$$(mktemp)"; trap 'rm -f "$$tmp"' EXIT; python3 hack/chart-readme.py -o "$$tmp" && \
	  diff -u deploy/helm/README.md "$$tmp" || { echo "deploy/helm/README.md is stale: run make chart-readme" >&2; exit 1; }
	hack/lint-manifests.sh
	cargo fmt --all -- --check
	cargo fmt --manifest-path sleep/Cargo.toml -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --manifest-path sleep/Cargo.toml --all-targets -- -D warnings
	@if command -v shellcheck >/dev/null; then shellcheck -x -S warning hack/*.sh hack/tests/*.sh .ci/run; fi

.PHONY: unit
unit: ## Unit tests: config, rendering (golden files), image set, status, sleep (x86_64, aarch64 under qemu), hack/ scripts
	hack/tests/run.sh
	cargo test
	hack/build-sleep.sh
	cargo test --manifest-path sleep/Cargo.toml
	SLEEP_ARCH=arm64 cargo test --manifest-path sleep/Cargo.toml --test process

.PHONY: chart-readme
chart-readme: ## Regenerate the values table of deploy/helm/README.md from values.yaml and its schema
	hack/chart-readme.py

.PHONY: golden
golden: ## Rewrite the golden files after an intended rendering change
	KWARM_UPDATE_GOLDEN=1 cargo test golden

.PHONY: tools
tools: ## Install OS packages and build cluster binaries into the version-keyed cache
	hack/install-deps.sh
	hack/build-bins.sh all

.PHONY: cluster-up
cluster-up: ## Start the local cluster (KWOK_NODES=N fake nodes); idempotent
	KWOK_NODES=$(KWOK_NODES) hack/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its state
	hack/cluster-down.sh

.PHONY: images
images: build ## Build the manager and sleep images (an index: linux/amd64, linux/arm64) with buildah and push them to the local registry
	IMAGE_PLATFORMS=linux/amd64,linux/arm64 hack/image.sh docker/sleep.Dockerfile $(SLEEP_IMAGE)
	hack/image.sh docker/kwarm.Dockerfile $(KWARM_IMAGE)

.PHONY: e2e
e2e: ## End-to-end tests on the local cluster (started and stopped when it was not up)
	hack/e2e.sh

.PHONY: test
test: tools lint unit e2e ## Everything CI runs: OS packages and cluster binaries, lint, unit and end-to-end tests

.PHONY: render
render: ## Print the DaemonSet for the current environment (no cluster needed)
	cargo run -q -- render

.PHONY: run
run: ## Run the manager against the local cluster with the admin kubeconfig
	NAMESPACE=$${NAMESPACE:-kwarm} cargo run -q --

.PHONY: demo
demo: ## Local cluster, kwarm installed with its Helm chart, sample images warmed, status shown
	hack/demo.sh

.PHONY: bench
bench: ## Benchmarks against the peers; writes bench/RESULTS.md
	hack/bench.sh

.PHONY: chaos
chaos: ## Chaos suite on the local cluster (~10 min; not part of make test): faults injected under kwarm, results in bench/CHAOS.md
	hack/chaos.sh

.PHONY: clean
clean: ## Remove build output (not the binary cache)
	cargo clean
	rm -rf _output sleep/target
