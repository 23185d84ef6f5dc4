# Triad developer entry points. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CLUSTER ?= dev
TEST_CLUSTER ?= test
HACK := hack
K8S_PATH = $(shell bash -c 'source $(HACK)/lib.sh >/dev/null; echo $$PATH')

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## build the control plane, etcd, helm and promtool from Go modules (cached)
	@bash $(HACK)/build-control-plane.sh

.PHONY: build
build: ## build triad and the local node runner
	$(CARGO) build --workspace --bins

.PHONY: crds
crds: ## regenerate crds/ from the Rust types
	$(CARGO) run -q --bin triad -- crds > crds/triad.dev.yaml

.PHONY: cluster
cluster: build ## start the local control plane and node; last line: export KUBECONFIG=...
	@bash $(HACK)/cluster.sh up $(CLUSTER)

.PHONY: cluster-down
cluster-down: ## stop the local control plane and node, remove its state
	@bash $(HACK)/cluster.sh down $(CLUSTER)

.PHONY: test
test: build ## unit tests, then integration tests against a local control plane
	$(CARGO) test --workspace --lib --bins
	@bash $(HACK)/test-integration.sh $(TEST_CLUSTER)

.PHONY: lint
lint: ## fmt, clippy -D warnings, CRD drift
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@$(CARGO) run -q --bin triad -- crds | diff -u crds/triad.dev.yaml - || { echo "crds/ is stale: run make crds"; exit 1; }

.PHONY: demo
demo: build ## local cluster + CRDs + samples, then show them (KEEP=1 leaves the cluster up)
	@bash $(HACK)/demo.sh $(CLUSTER)
