#!/usr/bin/env bash
# `make bench` and `make chaos`: release-build triad and the harness (tools/bench), and
# Triad's image from the release static build; start a fresh dedicated cluster named
# after the mode, whose kubelet runs agent pods from that image; run `triad-bench <mode>`;
# write target/<mode>/report.json and print a summary. KEEP=1 leaves the cluster running.
#
#   bench  etcd with fsync on, as in production; BENCH_ARGS passes harness flags
#   chaos  2 000 items on 10 agents under agent, operator and kube-apiserver faults and
#          invalid input; fails when an item is lost or completed twice; CHAOS_ARGS
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MODE="${1:?usage: hack/harness.sh bench|chaos}"
NAME="$MODE"
need_tools kubernetes etcd crictl helm
# Both harnesses render the chart's agent admission policies.
TRIAD_HELM="$(command -v helm)"
export TRIAD_HELM
cd "$REPO_ROOT"
extra=()
case "$MODE" in
  bench)
    export TRIAD_ETCD_FSYNC=1
    extra=(--versions "kubernetes=$K8S_VERSION;etcd=$ETCD_VERSION;rustc=$(rustc --version | cut -d' ' -f2)")
    # shellcheck disable=SC2206
    extra+=(${BENCH_ARGS:-}) ;;
  # shellcheck disable=SC2206
  chaos) extra=(${CHAOS_ARGS:-}) ;;
  *) echo "unknown mode $MODE: bench or chaos" >&2; exit 2 ;;
esac
cargo build --release -p triad -p triad-bench
bash "$HACK_DIR/image.sh" build release
export TRIAD_BIN="$REPO_ROOT/target/release/triad"
# A fresh cluster: earlier runs' objects would skew memory and write counts.
bash "$HACK_DIR/cluster.sh" down "$NAME" >/dev/null 2>&1 || true
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
cleanup() { [[ "${KEEP:-0}" == 1 ]] && { echo "$export_line"; return; }; bash "$HACK_DIR/cluster.sh" down "$NAME"; }
trap cleanup EXIT
mkdir -p "target/$MODE"
RUST_LOG="${RUST_LOG:-warn}" "$REPO_ROOT/target/release/triad-bench" "$MODE" \
  --kubeconfig "$KUBECONFIG" --state-dir "$STATE_DIR" --triad-bin "$TRIAD_BIN" --out "target/$MODE" \
  "${extra[@]}"
