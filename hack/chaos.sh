#!/usr/bin/env bash
# `make chaos`: 2 000 items on 10 agents (an AgentPool) while tools/bench's chaos driver
# kills agent pods and agent processes, pauses agents past their lease, restarts each
# operator role and the whole operator, restarts kube-apiserver (etcd data kept) and
# submits invalid input. Writes target/chaos/report.json and prints a summary; fails
# when an item is lost or completed twice. Uses its own cluster `chaos`; KEEP=1 keeps it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-chaos}"
cd "$REPO_ROOT"
cargo build --release -p triad -p triad-localnode -p triad-bench
export TRIAD_BIN="$REPO_ROOT/target/release/triad"
export TRIAD_LOCALNODE_BIN="$REPO_ROOT/target/release/triad-localnode"
bash "$HACK_DIR/cluster.sh" down "$NAME" >/dev/null 2>&1 || true
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
cleanup() { [[ "${KEEP:-0}" == 1 ]] && { echo "$export_line"; return; }; bash "$HACK_DIR/cluster.sh" down "$NAME"; }
trap cleanup EXIT
mkdir -p target/chaos
status=0
RUST_LOG="${RUST_LOG:-warn}" "$REPO_ROOT/target/release/triad-bench" chaos \
  --kubeconfig "$KUBECONFIG" --state-dir "$STATE_DIR" --triad-bin "$TRIAD_BIN" --out target/chaos \
  ${CHAOS_ARGS:-} || status=$?
exit $status
