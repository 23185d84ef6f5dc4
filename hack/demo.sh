#!/usr/bin/env bash
# The demo: a local cluster and node, the CRDs, the operator (all three roles), and
# config/samples/ — then a live view until the sample request finishes, and a summary.
# KEEP=1 leaves everything running and prints how to use kubectl against it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-dev}"
TIMEOUT="${DEMO_TIMEOUT:-240}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
kubectl apply --server-side -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for condition=established crd/workitems.triad.dev crd/workqueues.triad.dev \
  crd/agentpools.triad.dev crd/workrequests.triad.dev --timeout=60s >/dev/null

# The operator runs as a local process (the Helm chart is the production path).
if ! { [[ -f "$STATE_DIR/operator.pid" ]] && kill -0 "$(cat "$STATE_DIR/operator.pid")" 2>/dev/null; }; then
  RUST_LOG="${RUST_LOG:-info}" setsid "$REPO_ROOT/target/debug/triad" controller --metrics-addr 127.0.0.1:0 \
    >"$STATE_DIR/operator.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/operator.pid"
fi
stop_operator() { [[ -f "$STATE_DIR/operator.pid" ]] && kill -TERM "$(cat "$STATE_DIR/operator.pid")" 2>/dev/null || true; }

kubectl delete workrequest release-1-2 --ignore-not-found --wait=true >/dev/null 2>&1 || true
kubectl apply -f "$REPO_ROOT/config/samples/"
start=$SECONDS
phase=""
while ((SECONDS - start < TIMEOUT)); do
  phase="$(kubectl get wr release-1-2 -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  clear 2>/dev/null || true
  echo "Triad demo — $((SECONDS - start)) s   (request phase: ${phase:-Pending})"
  echo; kubectl get wq; echo; kubectl get ap; echo
  kubectl get wi -L triad.dev/task --sort-by=.metadata.creationTimestamp
  [[ "$phase" == Succeeded || "$phase" == Failed || "$phase" == Cancelled ]] && break
  sleep 2
done
echo; echo "Summary:"
kubectl get wr release-1-2
kubectl get wi -o custom-columns='ITEM:.metadata.name,PHASE:.status.phase,QUEUE:.status.queue,ATTEMPTS:.status.attempt,AGENT:.status.claim.agent,TOKENS:.status.usage.tokens,LAST ERROR:.status.lastError.reason,INTERVENTIONS:.status.interventions[*].action'
echo; kubectl get events --field-selector involvedObject.kind=WorkItem --sort-by=.lastTimestamp -o custom-columns='ITEM:.involvedObject.name,REASON:.reason,MESSAGE:.message' 2>/dev/null | tail -15
status=0
[[ "$phase" == Succeeded || "$phase" == Failed ]] || { echo "the request did not finish within ${TIMEOUT}s"; status=1; }
if [[ "${KEEP:-0}" == 1 ]]; then
  echo; echo "Everything keeps running (operator log: $STATE_DIR/operator.log). Use it with:"; echo "$export_line"
else
  stop_operator
  bash "$HACK_DIR/cluster.sh" down "$NAME"
fi
exit $status
