#!/usr/bin/env bash
# make lint: everything that can be checked without running the integration tests.
#
#   fmt, clippy -D warnings, CRD drift (crds/ and the chart's copy), helm lint, helm
#   template with several value sets and a server-side dry run of each against a local
#   API server, promtool check/test of the alert rules (and of the rendered
#   PrometheusRule), the Grafana dashboard's JSON, and that every metric the dashboard
#   and the alerts use is registered in the source.
#
# Env: LINT_CLUSTER (default lint) names the local cluster used for the dry runs; it is
# started when not running and stopped at the end if this script started it.
# LINT_SKIP_CLUSTER=1 skips the dry runs (no control plane binaries).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
CARGO="${CARGO:-cargo}"
CHART=charts/triad
WORK="$(mktemp -d)"
LINT_CLUSTER="${LINT_CLUSTER:-lint}"
started_cluster=0
cleanup() {
  rm -rf "$WORK"
  if ((started_cluster)); then bash "$HACK_DIR/cluster.sh" down "$LINT_CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
step() { echo "==> $*" >&2; }
fail() { echo "lint: $*" >&2; exit 1; }

need_tools kubernetes helm promtool

step "cargo fmt --check"
$CARGO fmt --all -- --check

step "cargo clippy -D warnings"
$CARGO clippy --workspace --all-targets -- -D warnings

step "CRD drift"
$CARGO run -q --bin triad -- crds >"$WORK/crds.yaml"
diff -u crds/triad.dev.yaml "$WORK/crds.yaml" || fail "crds/ is stale: run make crds"
diff -u crds/triad.dev.yaml "$CHART/crds/triad.dev.yaml" ||
  fail "$CHART/crds/ differs from crds/: cp crds/triad.dev.yaml $CHART/crds/"

step "helm lint"
helm lint --strict "$CHART"

# Value sets rendered and dry-run: name → helm arguments.
declare -A SETS=(
  [default]=""
  [split]="--set roles.split=true"
  [monitoring]="--set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true --set metrics.prometheusRule.enabled=true"
  [custom]="--set roles.replicas=3 --set leaderElection.leaseSeconds=10 --set watchNamespace=work --set agentPolicy.validationActions={Warn,Audit} --set podDisruptionBudget.enabled=false --set dashboard.enabled=false"
)
step "helm template (${!SETS[*]})"
for name in "${!SETS[@]}"; do
  # shellcheck disable=SC2086
  helm lint --strict "$CHART" ${SETS[$name]} >/dev/null || fail "helm lint with the $name values"
  # shellcheck disable=SC2086
  helm template triad "$CHART" --namespace triad-system ${SETS[$name]} >"$WORK/$name.yaml" ||
    fail "helm template with the $name values"
done
# The schema must refuse a typo.
if helm template triad "$CHART" --set roles.splitt=true >/dev/null 2>&1; then
  fail "values.schema.json accepted an unknown key (roles.splitt)"
fi
# What every value set must render: restricted pod security and probes on each
# controller, the port named metrics.
for name in "${!SETS[@]}"; do
  f="$WORK/$name.yaml"
  deployments=$(grep -c '^kind: Deployment' "$f" || true)
  for want in 'runAsNonRoot: true' 'readOnlyRootFilesystem: true' 'allowPrivilegeEscalation: false' \
              'type: RuntimeDefault' '- ALL' 'name: metrics' 'path: /healthz' 'path: /readyz' \
              'name: TRIAD_LEADER_ELECT'; do
    got=$(grep -cF -- "$want" "$f" || true)
    ((got >= deployments)) || fail "$name values: $want appears $got times for $deployments Deployment(s)"
  done
done
[[ $(grep -c '^kind: Deployment' "$WORK/split.yaml") == 3 ]] || fail "roles.split=true must render 3 Deployments"
[[ $(grep -c '^kind: ServiceAccount' "$WORK/split.yaml") == 3 ]] || fail "roles.split=true must render 3 ServiceAccounts"
[[ $(grep -c '^kind: Deployment' "$WORK/default.yaml") == 1 ]] || fail "the default must render 1 Deployment"

step "alert rules: promtool check and test"
promtool check rules "$CHART/files/alerts.yaml"
(cd "$CHART/tests" && promtool test rules alerts_test.yaml)
# The PrometheusRule the chart renders carries the same, valid rules.
helm template triad "$CHART" --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml |
  sed -n '/^spec:/,$p' | tail -n +2 | sed 's/^  //' >"$WORK/rendered-rules.yaml"
promtool check rules "$WORK/rendered-rules.yaml" >/dev/null || fail "the rendered PrometheusRule has invalid rules"
# The ServiceMonitor and PodMonitor translate (as make demo's Prometheus uses them) into
# a scrape config promtool accepts.
mkdir -p "$WORK/prometheus"
helm template triad "$CHART" --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
  --set metrics.prometheusRule.enabled=true \
  --show-only templates/servicemonitor.yaml --show-only templates/prometheusrule.yaml >"$WORK/monitors.yaml"
python3 "$HACK_DIR/prometheus.py" config "$WORK/monitors.yaml" "$WORK/kubeconfig" "$WORK/prometheus" 30s >/dev/null &&
  promtool check config "$WORK/prometheus/prometheus.yml" >/dev/null ||
  fail "the ServiceMonitor and PodMonitor do not translate into a valid Prometheus config"

step "Grafana dashboard JSON and the metrics it and the alerts use"
python3 - "$CHART/dashboards/triad.json" "$CHART/files/alerts.yaml" <<'PY' || fail "dashboard or alert metrics"
import json, pathlib, re, sys
dash_path, alerts_path = sys.argv[1], sys.argv[2]
try:
    dash = json.loads(pathlib.Path(dash_path).read_text())
except ValueError as e:
    sys.exit(f"{dash_path}: invalid JSON: {e}")
for key in ("title", "uid", "panels"):
    if key not in dash:
        sys.exit(f"{dash_path}: no {key!r}")
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    sys.exit(f"{dash_path}: duplicate panel ids")
registered = set()
for f in pathlib.Path("src").rglob("*.rs"):
    registered |= set(re.findall(r'register\(\s*"(triad_[a-z0-9_]+)"', f.read_text()))
used = set(re.findall(r"\btriad_[a-z0-9_]+", pathlib.Path(dash_path).read_text()))
used |= set(re.findall(r"\btriad_[a-z0-9_]+", pathlib.Path(alerts_path).read_text()))
missing = []
for name in sorted(used):
    family = name
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in registered:
            family = name[: -len(suffix)]
    if family not in registered:
        missing.append(name)
if missing:
    sys.exit("used by the dashboard or alerts but not registered in src/: " + ", ".join(missing))
print(f"{len(used)} metric names used, all registered ({len(registered)} families in src/)")
PY

if [[ "${LINT_SKIP_CLUSTER:-0}" == 1 ]]; then
  step "server-side dry run skipped (LINT_SKIP_CLUSTER=1)"
  exit 0
fi
step "server-side dry run against the local API server (cluster $LINT_CLUSTER)"
if ! bash "$HACK_DIR/cluster.sh" env "$LINT_CLUSTER" >/dev/null 2>&1; then started_cluster=1; fi
export_line="$(TRIAD_NODE=0 bash "$HACK_DIR/cluster.sh" up "$LINT_CLUSTER" | tail -1)"
export KUBECONFIG="${export_line#export KUBECONFIG=}"
kubectl apply --server-side -f "$CHART/crds/" >/dev/null
# Stand-ins for the Prometheus Operator's CRDs, so the monitoring objects are checked
# for kind, version and scope (their fields are checked by promtool above).
for kind in ServiceMonitor PodMonitor PrometheusRule; do
  plural="$(tr '[:upper:]' '[:lower:]' <<<"$kind")s"
  kubectl apply --server-side -f - >/dev/null <<CRD
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: $plural.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: $kind, plural: $plural}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
CRD
done
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
# The release namespace, and the custom set's watchNamespace (its Roles live there).
for namespace in triad-system work; do
  kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
for name in "${!SETS[@]}"; do
  kubectl apply --dry-run=server -f "$WORK/$name.yaml" >"$WORK/$name.out" ||
    fail "server-side dry run of the $name values (output: $WORK/$name.out)"
  echo "  $name: $(wc -l <"$WORK/$name.out") objects accepted" >&2
done
# The admission policy's CEL must type-check against the WorkItem schema: create it for
# real (no binding, so it enforces nothing) and read the API server's verdict. (awk reads
# to the end rather than exit at the first policy's end: an early exit lets helm die of
# SIGPIPE, which pipefail turns into a failed lint.)
helm template triad "$CHART" --show-only templates/agent-policy.yaml |
  awk '/^kind: ValidatingAdmissionPolicy$/{if(!done)p=1} /^---/{if(p){p=0;done=1}} p' |
  sed '1i apiVersion: admissionregistration.k8s.io/v1' |
  sed 's/^  name: triad-agent-writes$/  name: triad-lint-agent-writes/' >"$WORK/vap.yaml"
kubectl apply -f "$WORK/vap.yaml" >/dev/null
for _ in $(seq 1 50); do
  checked="$(kubectl get validatingadmissionpolicy triad-lint-agent-writes -o jsonpath='{.status.observedGeneration}')"
  [[ -n "$checked" ]] && break
  sleep 0.2
done
warnings="$(kubectl get validatingadmissionpolicy triad-lint-agent-writes -o jsonpath='{.status.typeChecking.expressionWarnings}')"
kubectl delete validatingadmissionpolicy triad-lint-agent-writes >/dev/null
[[ -z "$warnings" ]] || fail "the agent admission policy does not type-check: $warnings"
echo "lint: all checks passed" >&2
