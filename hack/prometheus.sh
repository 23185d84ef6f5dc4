#!/usr/bin/env bash
# A real Prometheus beside a local cluster, configured from the chart: it scrapes the
# operator and the agents as the chart's ServiceMonitor and PodMonitor describe and
# evaluates the chart's PrometheusRule, so `make demo` can check that every dashboard
# query returns data and that the alerts fire when the demo's failures happen.
#
#   hack/prometheus.sh start <state-dir>           render the monitors, start Prometheus on
#                                                  loopback, wait until it scrapes the operator
#   hack/prometheus.sh check <state-dir> <since>   dashboard queries over [since, now] and the
#                                                  alerts; ok/FAIL lines, non-zero on FAIL
#   hack/prometheus.sh stop  <state-dir>
#
# <state-dir> is the cluster's (hack/cluster.sh), whose kubeconfig Prometheus uses for
# service discovery; `hack/cluster.sh down` stops a Prometheus left running there.
# Env: PROM_INTERVAL (scrape and evaluation interval in seconds, default 2s), TRIAD_NAMESPACE and
# TRIAD_RELEASE as for hack/deploy.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CMD="${1:?usage: $0 start|check|stop <state-dir> [since]}"
DIR="${2:?state dir}"
WORK="$DIR/prometheus"
INTERVAL="${PROM_INTERVAL:-2s}"
CHART="$REPO_ROOT/charts/triad"
# The alerts the demo's story must set off: a dead-lettered chore, the stalled
# flaky-login and the over-budget export-csv.
DEMO_ALERTS=(TriadDeadLettersRising TriadItemsStalled TriadItemsOverBudget)

url() { echo "http://127.0.0.1:$(cat "$WORK/port")"; }

# The operator's target, found through the ServiceMonitor's discovery, is up.
operator_scraped() {
  curl -sf "$(url)/api/v1/targets?state=active" | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
sys.exit(0 if any(x["scrapePool"].startswith("serviceMonitor/") and x["health"] == "up" for x in t) else 1)'
}

start() {
  need_tools helm prometheus
  mkdir -p "$WORK"
  # The monitors as the chart renders them for this release, with the demo's short
  # interval; Prometheus gets what a Prometheus Operator would generate from them.
  helm template "${TRIAD_RELEASE:-triad}" "$CHART" --namespace "${TRIAD_NAMESPACE:-triad-system}" \
    --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
    --set metrics.prometheusRule.enabled=true \
    --set "metrics.serviceMonitor.interval=$INTERVAL" --set "metrics.podMonitor.interval=$INTERVAL" \
    --show-only templates/servicemonitor.yaml --show-only templates/prometheusrule.yaml \
    >"$WORK/monitors.yaml"
  python3 "$HACK_DIR/prometheus.py" config "$WORK/monitors.yaml" "$DIR/kubeconfig" "$WORK" "$INTERVAL"
  log "starting $(prometheus --version 2>&1 | head -1)"
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' >"$WORK/port"
  # setsid and the pid in the cluster's directory: `hack/cluster.sh down` stops it too.
  setsid prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
    --web.listen-address="127.0.0.1:$(cat "$WORK/port")" --log.level=warn \
    >"$WORK/prometheus.log" 2>&1 </dev/null &
  echo $! >"$DIR/prometheus.pid"
  local deadline=$((SECONDS + 60))
  until operator_scraped; do
    if ((SECONDS > deadline)) || ! kill -0 "$(cat "$DIR/prometheus.pid")" 2>/dev/null; then
      echo "Prometheus does not scrape the operator through the ServiceMonitor's discovery:" >&2
      curl -sf "$(url)/api/v1/targets" >&2 || tail -20 "$WORK/prometheus.log" >&2
      return 1
    fi
    sleep 1
  done
  log "Prometheus at $(url) scrapes the operator (interval $INTERVAL)"
}

check() {
  local since="${1:?since (unix time)}" args=() a
  need_tools kubernetes
  export KUBECONFIG="$DIR/kubeconfig"
  # The dashboard's $namespace and $queue must offer the cluster's WorkQueues.
  args+=(--expect "namespace=$(kubectl get wq -A -o jsonpath='{.items[*].metadata.namespace}' | tr ' ' '\n' | sort -u | paste -sd,)")
  args+=(--expect "queue=$(kubectl get wq -A -o jsonpath='{.items[*].metadata.name}' | tr ' ' ',')")
  for a in "${DEMO_ALERTS[@]}"; do args+=(--alert "$a"); done
  python3 "$HACK_DIR/prometheus.py" check "$(url)" "$CHART/dashboards/triad.json" "$since" \
    "${INTERVAL%s}" "${args[@]}"
}

stop() {
  [[ -f "$DIR/prometheus.pid" ]] || return 0
  kill -TERM -- "-$(cat "$DIR/prometheus.pid")" 2>/dev/null || true
  rm -f "$DIR/prometheus.pid"
}

case "$CMD" in
  start) start ;;
  check) check "${3:-}" ;;
  stop) stop ;;
  *) echo "usage: $0 start|check|stop <state-dir> [since]" >&2; exit 2 ;;
esac
