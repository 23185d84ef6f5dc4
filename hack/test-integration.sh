#!/usr/bin/env bash
# Runs the integration tests against one shared local cluster (started here if needed),
# whose node runs agent pods from the images built here; each test works in its own
# namespace, so they run in parallel.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-test}"
# The images the tests' pods run (the static debug build: the same code, built fast).
need_tools kubernetes etcd crictl helm
bash "$HACK_DIR/image.sh" build "${TRIAD_IMAGE_PROFILE:-debug}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export TRIAD_TEST_KUBECONFIG="${export_line#export KUBECONFIG=}"
export TRIAD_KUBECTL="$K8S_BIN/kubectl" TRIAD_CRICTL="$CRICTL_BIN/crictl" TRIAD_HELM="$HELM_BIN/helm"
export TRIAD_IMAGES="$TRIAD_CACHE/images"
cd "$REPO_ROOT"
status=0
cargo test --workspace --test '*' -- --test-threads="${TRIAD_TEST_THREADS:-8}" || status=$?
# CI wants a clean machine afterwards; developers may keep the cluster with KEEP=1.
[[ "${KEEP:-0}" == 1 ]] || bash "$HACK_DIR/cluster.sh" down "$NAME"
exit $status
