# Triad developer entry points. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CLUSTER ?= dev
TEST_CLUSTER ?= test
# The static build the local images carry: debug builds fast; `make image` publishes release.
IMAGE_PROFILE ?= debug
HACK := hack

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## build the control plane, kubelet, etcd, crictl, helm, promtool and prometheus from Go modules (cached)
	@bash $(HACK)/build-control-plane.sh

.PHONY: build
build: ## build triad and the bench harness
	$(CARGO) build --workspace --bins

.PHONY: image
image: ## build Triad's image (static musl, release) without a container engine; load it into a running dev cluster
	@bash $(HACK)/image.sh build release
	@if bash $(HACK)/cluster.sh env $(CLUSTER) >/dev/null 2>&1; then bash $(HACK)/image.sh load $(CLUSTER); fi

.PHONY: crds
crds: ## regenerate crds/ from the Rust types
	$(CARGO) run -q --bin triad -- crds > crds/triad.dev.yaml

.PHONY: cluster
cluster: ## start the local control plane and a kubelet node with Triad's image; last line: export KUBECONFIG=...
	@bash $(HACK)/image.sh build $(IMAGE_PROFILE)
	@bash $(HACK)/cluster.sh up $(CLUSTER)

.PHONY: cluster-down
cluster-down: ## stop the local control plane and node, remove its state
	@bash $(HACK)/cluster.sh down $(CLUSTER)

.PHONY: test
test: build ## unit tests, then integration tests against a local cluster with a real kubelet
	$(CARGO) test --workspace --lib --bins
	@TRIAD_IMAGE_PROFILE=$(IMAGE_PROFILE) bash $(HACK)/test-integration.sh $(TEST_CLUSTER)

.PHONY: lint
lint: ## fmt, clippy -D warnings, CRD drift, helm lint/render + server dry run, promtool, dashboard
	@CARGO="$(CARGO)" bash $(HACK)/lint.sh

.PHONY: deploy
deploy: ## install the CRDs and the Helm chart into the current KUBECONFIG's cluster (VALUES=<file>)
	@bash $(HACK)/deploy.sh $(VALUES)

.PHONY: demo
demo: ## local cluster, the chart installed with helm, the samples run, a Prometheus from the chart's monitors; fails unless the story ends as told and the dashboard and alerts see it (KEEP=1 leaves it up)
	@bash $(HACK)/image.sh build $(IMAGE_PROFILE)
	@bash $(HACK)/demo.sh $(CLUSTER)

.PHONY: bench
bench: ## release build; benchmark on a dedicated cluster (etcd fsync on); writes target/bench/report.json
	@bash $(HACK)/harness.sh bench

.PHONY: chaos
chaos: ## release build; faults while 2 000 items run; writes target/chaos/report.json
	@bash $(HACK)/harness.sh chaos
