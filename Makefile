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
lint: ## fmt, clippy -D warnings, CRD drift, helm lint/render + server dry run, promtool, dashboard
	@CARGO="$(CARGO)" bash $(HACK)/lint.sh

.PHONY: deploy
deploy: ## install the CRDs and the Helm chart into the current KUBECONFIG's cluster (VALUES=<file>)
	@bash $(HACK)/deploy.sh $(VALUES)

.PHONY: demo
demo: build ## local cluster + CRDs + samples, then show them (KEEP=1 leaves the cluster up)
	@bash $(HACK)/demo.sh $(CLUSTER)

.PHONY: bench
bench: ## release build; benchmark on a dedicated cluster (etcd fsync on); writes target/bench/report.json
	@bash $(HACK)/harness.sh bench

.PHONY: chaos
chaos: ## release build; faults while 2 000 items run; writes target/chaos/report.json
	@bash $(HACK)/harness.sh chaos
