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
export PATH="$K8S_BIN:$ETCD_BIN:$HELM_BIN:$PROMTOOL_BIN:$PATH"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
