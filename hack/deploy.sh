#!/usr/bin/env bash
# Installs (or upgrades) the CRDs and the operator's Helm chart into the cluster of the
# current KUBECONFIG.
#
#   hack/deploy.sh [values.yaml]      (make deploy VALUES=<file>)
#
# Env: TRIAD_NAMESPACE (default triad-system), TRIAD_RELEASE (default triad),
#      HELM_TIMEOUT (default 3m), HELM_ARGS (extra arguments, e.g. "--set roles.split=true").
# On a local cluster (hack/cluster.sh) the chart's image is the one `make image` built and
# loaded into the node's containerd, so nothing is pulled.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
need_tools kubernetes helm

NAMESPACE="${TRIAD_NAMESPACE:-triad-system}"
RELEASE="${TRIAD_RELEASE:-triad}"
VALUES="${1:-${VALUES:-}}"
CHART="$REPO_ROOT/charts/triad"

[[ -n "${KUBECONFIG:-}" ]] || [[ -f "$HOME/.kube/config" ]] ||
  { echo "no KUBECONFIG: run 'make cluster' and the export line it prints" >&2; exit 1; }
kubectl version >/dev/null 2>&1 || { echo "the cluster of KUBECONFIG=${KUBECONFIG:-~/.kube/config} does not answer" >&2; exit 1; }

args=(upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --create-namespace
      --wait --timeout "${HELM_TIMEOUT:-3m}")
if [[ -n "$VALUES" ]]; then
  [[ -f "$VALUES" ]] || { echo "values file not found: $VALUES" >&2; exit 1; }
  args+=(--values "$VALUES")
fi
# shellcheck disable=SC2206
[[ -n "${HELM_ARGS:-}" ]] && args+=(${HELM_ARGS})

# Helm installs crds/ only on the first install and never upgrades them; apply them
# server-side every time so an upgrade brings new fields and validation rules.
log "applying CRDs"
kubectl apply --server-side --force-conflicts --field-manager=triad-deploy -f "$CHART/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f "$CHART/crds/" >/dev/null

log "helm ${args[*]}"
helm "${args[@]}"
kubectl -n "$NAMESPACE" get deploy,pods -l "app.kubernetes.io/instance=$RELEASE" -o wide
