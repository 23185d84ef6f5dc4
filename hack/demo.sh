#!/usr/bin/env bash
# The demo: a local cluster with the CRDs and config/samples/ applied. Grows into the
# full operator demo as the roles land.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-dev}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
kubectl apply --server-side -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for condition=established crd -l '!nonexistent' --timeout=60s >/dev/null 2>&1 || true
kubectl apply -f "$REPO_ROOT/config/samples/"
echo
kubectl get triad
if [[ "${KEEP:-0}" == 1 ]]; then
  echo; echo "The cluster keeps running. Use it with:"; echo "$export_line"
else
  bash "$HACK_DIR/cluster.sh" down "$NAME"
fi
