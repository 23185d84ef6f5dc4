#!/usr/bin/env bash
# The demo: a local cluster and node, the operator installed with Helm, and
# config/samples/ — then a live view until the sample request finishes, and a summary.
# KEEP=1 leaves everything running and prints how to use kubectl against it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NAME="${1:-dev}"
TIMEOUT="${DEMO_TIMEOUT:-240}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
# The operator is installed with its Helm chart, as on a real cluster; the node runner
# runs the locally built binary in place of the image.
HELM_TIMEOUT=2m bash "$HACK_DIR/deploy.sh" >"$STATE_DIR/deploy.log" 2>&1 ||
  { echo "helm install failed:"; tail -20 "$STATE_DIR/deploy.log"; exit 1; }
echo "operator installed: $(kubectl -n triad-system get deploy -o name | tr '\n' ' ')"

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
  echo; echo "Everything keeps running (the operator is the Helm release 'triad' in triad-system). Use it with:"; echo "$export_line"
else
  bash "$HACK_DIR/cluster.sh" down "$NAME"
fi
exit $status
