#!/usr/bin/env bash
# Shared paths for the hack/ scripts.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
TRIAD_CACHE="${TRIAD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/triad}"
K8S_BIN="$TRIAD_CACHE/k8s-$K8S_VERSION/bin"
ETCD_BIN="$TRIAD_CACHE/etcd-$ETCD_VERSION/bin"
HELM_BIN="$TRIAD_CACHE/helm-$HELM_VERSION/bin"
PROMTOOL_BIN="$TRIAD_CACHE/promtool-$PROMTOOL_VERSION/bin"
PROMETHEUS_BIN="$TRIAD_CACHE/prometheus-$PROMTOOL_VERSION/bin"
CRICTL_BIN="$TRIAD_CACHE/crictl-$CRICTL_VERSION/bin"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# need_tools <tool>...: build what is missing of kubernetes, etcd, crictl, helm, promtool,
# prometheus (hack/build-control-plane.sh) and put those on PATH. A script reaches only the tools it
# asks for, so one that forgets fails at once on every machine, warm cache or cold, and
# not only on a new one.
need_tools() {
  bash "$HACK_DIR/build-control-plane.sh" "$@"
  local t
  for t in "$@"; do
    case "$t" in
      kubernetes) PATH="$K8S_BIN:$PATH" ;;
      etcd) PATH="$ETCD_BIN:$PATH" ;;
      crictl) PATH="$CRICTL_BIN:$PATH" ;;
      helm) PATH="$HELM_BIN:$PATH" ;;
      promtool) PATH="$PROMTOOL_BIN:$PATH" ;;
      prometheus) PATH="$PROMETHEUS_BIN:$PATH" ;;
      *) echo "need_tools: unknown tool $t" >&2; exit 2 ;;
    esac
  done
  export PATH
}
