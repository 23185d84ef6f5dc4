#!/usr/bin/env bash
# The demo: a local cluster with a kubelet node, the operator installed from Triad's
# image with Helm, and config/samples/ — then a live view until the sample request
# finishes, a summary, and a check that the story went as told: the request Succeeded,
# the stalled task was restarted, the over-budget task was escalated and re-routed, the
# broken chore was dead-lettered. A Prometheus configured from the chart's monitors and
# rules (hack/prometheus.sh) scrapes the run; every dashboard query must return data and
# the alerts for those failures must fire. Exits non-zero otherwise. KEEP=1 leaves
# everything running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# prometheus too, before the cluster starts: hack/prometheus.sh runs it beside the demo.
need_tools kubernetes helm prometheus
NAME="${1:-dev}"
TIMEOUT="${DEMO_TIMEOUT:-240}"
export_line="$(bash "$HACK_DIR/cluster.sh" up "$NAME" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
STATE_DIR="$(dirname "$KUBECONFIG")"
# The operator is installed with its Helm chart, as on a real cluster, from the image
# `make demo` built and loaded into the node's containerd.
HELM_TIMEOUT=2m bash "$HACK_DIR/deploy.sh" >"$STATE_DIR/deploy.log" 2>&1 ||
  { echo "helm install failed:"; tail -20 "$STATE_DIR/deploy.log"; exit 1; }
echo "operator installed: $(kubectl -n triad-system get deploy -o name | tr '\n' ' ')"
# Prometheus starts before the samples so that it sees every counter at 0 first.
bash "$HACK_DIR/prometheus.sh" start "$STATE_DIR" >"$STATE_DIR/prometheus-start.log" 2>&1 ||
  { echo "Prometheus did not start:"; tail -20 "$STATE_DIR/prometheus-start.log"; exit 1; }
prom_since="$(date +%s)"

kubectl delete workrequest release-1-2 --ignore-not-found --wait=true >/dev/null 2>&1 || true
kubectl delete workitem docs-broken-link --ignore-not-found --wait=true >/dev/null 2>&1 || true
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
# The story, checked: each line names what a viewer should have seen.
status=0
task() { kubectl get wi -l "triad.dev/task=$1" -o jsonpath="$2" 2>/dev/null; }
check() { if eval "$2"; then echo "  ok    $1"; else echo "  FAIL  $1"; status=1; fi; }
echo; echo "The story:"
check "the request Succeeded (phase: ${phase:-none})" '[[ "$phase" == Succeeded ]]'
check "flaky-login stalled, the progress monitor restarted it, and a later attempt succeeded" \
  '[[ "$(task flaky-login "{.items[0].status.interventions[*].monitor}")" == *progress* && "$(task flaky-login "{.items[0].status.attempt}")" -ge 2 ]]'
check "export-csv ran over its token budget, was escalated and re-routed to the bug queue" \
  '[[ "$(task export-csv "{.items[0].status.interventions[*].action}")" == *Escalate* && "$(task export-csv "{.items[0].status.queue}")" == bug ]]'
dead_lettered() {
  local deadline=$((SECONDS + 60))
  until [[ "$(kubectl get wi docs-broken-link -o jsonpath='{.status.phase}' 2>/dev/null)" == DeadLettered ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}
check "docs-broken-link failed every attempt and was dead-lettered" 'dead_lettered'
# A running agent of the Mortal pool (a replacement may still be starting): its log,
# served by the kubelet, within 30 s.
agent_log() {
  local deadline=$((SECONDS + 30)) pod
  while ((SECONDS < deadline)); do
    for pod in $(kubectl get pods -l triad.dev/pool=engineers --field-selector status.phase=Running -o name 2>/dev/null); do
      [[ -n "$(kubectl logs "$pod" --tail=5 2>/dev/null)" ]] && { agent="$pod"; return 0; }
    done
    sleep 1
  done
  return 1
}
agent=""
check "kubectl logs shows a running agent's log" 'agent_log'
[[ -n "$agent" ]] && echo "        ($agent: $(kubectl logs "$agent" --tail=1 2>/dev/null | cut -c1-100))"
echo; echo "Prometheus (scraping as the chart's ServiceMonitor and PodMonitor say, with its alert rules):"
bash "$HACK_DIR/prometheus.sh" check "$STATE_DIR" "$prom_since" || status=1
if [[ "${KEEP:-0}" == 1 ]]; then
  echo; echo "Everything keeps running (the operator is the Helm release 'triad' in triad-system;"
  echo "Prometheus's API at http://127.0.0.1:$(cat "$STATE_DIR/prometheus/port")). Use it with:"; echo "$export_line"
else
  bash "$HACK_DIR/cluster.sh" down "$NAME"
fi
exit $status
