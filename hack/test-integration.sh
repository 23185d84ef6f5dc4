#!/usr/bin/env bash
# Runs the integration tests against one shared local control plane (started here if
# needed); each test works in its own namespace, so they run in parallel.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-test}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export TRIAD_TEST_KUBECONFIG="${export_line#export KUBECONFIG=}"
export TRIAD_KUBECTL="$K8S_BIN/kubectl"
cd "$REPO_ROOT"
status=0
cargo test --workspace --test '*' -- --test-threads="${TRIAD_TEST_THREADS:-8}" || status=$?
# CI wants a clean machine afterwards; developers may keep the cluster with KEEP=1.
[[ "${KEEP:-0}" == 1 ]] || bash "$HACK_DIR/cluster.sh" down "$NAME"
exit $status
