#!/usr/bin/env bash
# `make bench`: release-build triad, the node runner and the harness; start a dedicated
# cluster `bench` (etcd with fsync on, as in production) whose node runner runs the
# release triad; run tools/bench (`triad-bench bench`); write target/bench/report.json
# and print a summary. KEEP=1 leaves the cluster running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-bench}"
cd "$REPO_ROOT"
cargo build --release -p triad -p triad-localnode -p triad-bench
export TRIAD_BIN="$REPO_ROOT/target/release/triad"
export TRIAD_LOCALNODE_BIN="$REPO_ROOT/target/release/triad-localnode"
export TRIAD_ETCD_FSYNC=1
# A fresh cluster: earlier runs' objects would skew memory and write counts.
bash "$HACK_DIR/cluster.sh" down "$NAME" >/dev/null 2>&1 || true
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
cleanup() { [[ "${KEEP:-0}" == 1 ]] && { echo "$export_line"; return; }; bash "$HACK_DIR/cluster.sh" down "$NAME"; }
trap cleanup EXIT
mkdir -p target/bench
status=0
RUST_LOG="${RUST_LOG:-warn}" "$REPO_ROOT/target/release/triad-bench" bench \
  --kubeconfig "$KUBECONFIG" --state-dir "$STATE_DIR" --triad-bin "$TRIAD_BIN" --out target/bench \
  --versions "kubernetes=$K8S_VERSION;etcd=$ETCD_VERSION;rustc=$(rustc --version | cut -d' ' -f2)" \
  ${BENCH_ARGS:-} || status=$?
exit $status
