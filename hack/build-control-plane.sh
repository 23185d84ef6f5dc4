#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, etcd,
# crictl, helm, promtool and prometheus from the published Go modules into a cache outside the checkout. Only what is missing
# is built, so a warm cache makes this a no-op.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet) missing=0
  for b in "${want[@]}"; do [[ -x "$K8S_BIN/$b" ]] || missing=1; done
  [[ $missing == 0 ]] && return 0
  log "building kubernetes $K8S_VERSION (cold: ~15-25 min on 2 cores)"
  local work; work="$(mktemp -d)"
  cp "$HACK_DIR/k8s-wrapper/main.go" "$work/"
  cd "$work"
  go mod init triad.dev/k8s-wrapper >/dev/null 2>&1
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  # The release's go.mod replaces every staging module with ./staging/src/...; those
  # are published as their own modules at v0.<minor>.<patch>. Derive the list from the
  # release itself so it follows new staging modules.
  local gomod staging_version="v0.${K8S_VERSION#v1.}"
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  go mod edit -json "$gomod" \
    | python3 -c 'import json,sys; [print(r["Old"]["Path"]) for r in json.load(sys.stdin).get("Replace") or [] if r["New"]["Path"].startswith("./staging/")]' \
    | while read -r m; do go mod edit -replace="$m=$m@$staging_version"; done
  local godebug; godebug="$(grep -E '^godebug' "$gomod" || true)"
  [[ -n $godebug ]] && echo "$godebug" >>go.mod
  go mod tidy >/dev/null
  cp go.mod go.sum "$HACK_DIR/k8s-wrapper/" 2>/dev/null || true
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=triad-local -X $pkg.buildDate=$BUILD_DATE"
  done
  mkdir -p "$K8S_BIN"
  go build -trimpath -ldflags "-s -w $ld" -o "$K8S_BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet
  cd / && rm -rf "$work"
}

build_etcd() {
  [[ -x "$ETCD_BIN/etcd" ]] && return 0
  log "building etcd $ETCD_VERSION"
  local work; work="$(mktemp -d)"
  cp "$HACK_DIR/etcd-wrapper/main.go" "$work/"
  cd "$work"
  go mod init triad.dev/etcd-wrapper >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy >/dev/null
  mkdir -p "$ETCD_BIN"
  go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=triad-local" \
    -o "$ETCD_BIN/etcd" go.etcd.io/etcd/server/v3
  cd / && rm -rf "$work"
}

build_helm() {
  [[ -x "$HELM_BIN/helm" ]] && return 0
  log "building helm $HELM_VERSION"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  mkdir -p "$HELM_BIN"
  GOBIN="$HELM_BIN" go install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# promtool and the Prometheus server: commands of the same module and version.
build_prometheus_cmd() { # command, bin dir
  [[ -x "$2/$1" ]] && return 0
  log "building $1 $PROMTOOL_VERSION"
  mkdir -p "$2"
  GOBIN="$2" go install -trimpath -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/$1@$PROMTOOL_VERSION"
}

build_promtool() { build_prometheus_cmd promtool "$PROMTOOL_BIN"; }

# The server lets hack/prometheus.sh scrape a demo cluster and evaluate the chart's
# dashboard queries and alerts as a user's Prometheus would. Built without the
# builtinassets tag: only the HTTP API is used, not the web UI. Cold: ~7 min on 2 cores.
build_prometheus() { build_prometheus_cmd prometheus "$PROMETHEUS_BIN"; }

# crictl: the CRI client a node's operator uses; hack/node.sh removes a node's pods with it.
build_crictl() {
  [[ -x "$CRICTL_BIN/crictl" ]] && return 0
  log "building crictl $CRICTL_VERSION"
  mkdir -p "$CRICTL_BIN"
  GOBIN="$CRICTL_BIN" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

targets=("${@:-kubernetes etcd crictl helm promtool prometheus}")
for t in ${targets[*]}; do
  ( "build_$t" )
done
