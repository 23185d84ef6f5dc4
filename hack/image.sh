#!/usr/bin/env bash
# Triad's container images, built without a container engine (umoci), as OCI layouts in
# the tool cache, and loaded into a local cluster's containerd.
#
#   hack/image.sh build [debug|release]   the static musl build, then the images below
#   hack/image.sh load  <cluster>         import every built image into that cluster's containerd
#   hack/image.sh pause                   only the sandbox (pause) image
#
# Images:
#   ghcr.io/triad-dev/triad:<chart appVersion>   the Dockerfile's image: /usr/local/bin/triad
#       as entrypoint, `controller` as command, user 65532, ports 8080 and 9090. The chart
#       installs it unchanged.
#   ghcr.io/triad-dev/triad-simulate:<appVersion>  a user's work image, as the samples and the
#       demo use it: `triad simulate` (a simulated AI agent) and nothing else. Triad's
#       runner is not in it: the agent pod's init container brings it.
#   localhost/triad-busybox:dev                  a work image with a shell: busybox under /bin
#       and the triad binary (for `triad simulate` and `triad status`). The tests' pools
#       use it.
#   registry.k8s.io/pause:3.10                   the pod sandbox: busybox sleeping, since
#       nothing can be pulled here.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES="$TRIAD_CACHE/images"
TARGET=x86_64-unknown-linux-musl
TRIAD_REPO=ghcr.io/triad-dev/triad
TRIAD_TAG="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO_ROOT/charts/triad/Chart.yaml")"
BUSYBOX_REPO=localhost/triad-busybox
SIMULATE_REPO=ghcr.io/triad-dev/triad-simulate
PAUSE_REPO=registry.k8s.io/pause
PAUSE_TAG=3.10

need_packages() {
  local missing=()
  command -v umoci >/dev/null || missing+=(umoci)
  command -v busybox >/dev/null || missing+=(busybox-static)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# new_image <layout dir> <tag>: an empty image with a root filesystem to fill in
# $BUNDLE/rootfs; commit_image writes it back with the given config.
new_image() {
  LAYOUT="$1"; TAG="$2"; BUNDLE="$(mktemp -d)/bundle"
  rm -rf "$LAYOUT"
  umoci init --layout "$LAYOUT"
  umoci new --image "$LAYOUT:$TAG"
  umoci unpack --image "$LAYOUT:$TAG" "$BUNDLE" >/dev/null
}

commit_image() { # umoci config arguments...
  umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
  umoci config --image "$LAYOUT:$TAG" --os linux --architecture amd64 "$@"
  umoci gc --layout "$LAYOUT"
  rm -rf "$(dirname "$BUNDLE")"
}

# The files distroless/static:nonroot gives the binary: users root and nonroot (65532),
# their home directories and a world-writable /tmp.
base_files() {
  local root="$1"
  mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot" "$root/root"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
}

install_busybox() {
  local root="$1" applet
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
  done
}

build_pause() {
  [[ -f "$IMAGES/pause.tar" ]] && return 0
  need_packages
  mkdir -p "$IMAGES"
  new_image "$IMAGES/pause" "$PAUSE_TAG"
  mkdir -p "$BUNDLE/rootfs/bin" && cp /bin/busybox "$BUNDLE/rootfs/bin/busybox"
  commit_image --config.user 65535:65535 --config.entrypoint /bin/busybox \
    --config.cmd sleep --config.cmd 2147483647
  tar -C "$IMAGES/pause" -cf "$IMAGES/pause.tar" .
}

build_triad() {
  local profile="${1:-release}" flag=() bin
  need_packages
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  [[ "$profile" == release ]] && flag=(--release)
  (cd "$REPO_ROOT" && cargo build --locked "${flag[@]}" --target "$TARGET" --bin triad)
  bin="$REPO_ROOT/target/$TARGET/$profile/triad"
  if ldd "$bin" 2>&1 | grep -q "=>"; then
    echo "image: $bin links shared libraries" >&2; exit 1
  fi
  mkdir -p "$IMAGES"
  # The Dockerfile's final stage, file for file and field for field (a test compares them).
  new_image "$IMAGES/triad" "$TRIAD_TAG"
  base_files "$BUNDLE/rootfs"
  install -D -m 0755 "$bin" "$BUNDLE/rootfs/usr/local/bin/triad"
  commit_image --config.user 65532:65532 --config.entrypoint /usr/local/bin/triad \
    --config.cmd controller --config.exposedports 8080/tcp --config.exposedports 9090/tcp \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin
  tar -C "$IMAGES/triad" -cf "$IMAGES/triad.tar" .

  new_image "$IMAGES/triad-busybox" dev
  base_files "$BUNDLE/rootfs"
  install -D -m 0755 "$bin" "$BUNDLE/rootfs/usr/local/bin/triad"
  install_busybox "$BUNDLE/rootfs"
  commit_image --config.user 65532:65532 --config.entrypoint /usr/local/bin/triad \
    --config.cmd agent --config.env PATH=/usr/local/bin:/usr/bin:/bin
  tar -C "$IMAGES/triad-busybox" -cf "$IMAGES/triad-busybox.tar" .

  new_image "$IMAGES/triad-simulate" "$TRIAD_TAG"
  base_files "$BUNDLE/rootfs"
  install -D -m 0755 "$bin" "$BUNDLE/rootfs/usr/local/bin/triad"
  commit_image --config.user 65532:65532 --config.cmd triad --config.cmd simulate \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin
  tar -C "$IMAGES/triad-simulate" -cf "$IMAGES/triad-simulate.tar" .
  echo "$profile" >"$IMAGES/triad.profile"
  log "images built from $bin: $TRIAD_REPO:$TRIAD_TAG, $SIMULATE_REPO:$TRIAD_TAG, $BUSYBOX_REPO:dev"
}

# load <cluster>: import into the cluster's containerd (namespace k8s.io, where the
# kubelet's CRI looks), under the names the chart and the pools use.
load() {
  local name="$1" sock
  sock="${TRIAD_STATE_ROOT:-$TRIAD_CACHE/clusters}/$name/containerd/containerd.sock"
  [[ -S "$sock" ]] || { echo "image: cluster '$name' has no containerd at $sock" >&2; exit 1; }
  build_pause
  import "$sock" pause "$PAUSE_REPO"
  [[ -f "$IMAGES/triad.tar" ]] && import "$sock" triad "$TRIAD_REPO"
  [[ -f "$IMAGES/triad-busybox.tar" ]] && import "$sock" triad-busybox "$BUSYBOX_REPO"
  [[ -f "$IMAGES/triad-simulate.tar" ]] && import "$sock" triad-simulate "$SIMULATE_REPO"
  return 0
}

import() { # socket, image, repository
  ctr --address "$1" -n k8s.io images import --base-name "$3" --digests \
    --snapshotter overlayfs "$IMAGES/$2.tar" >/dev/null
}

case "${1:-build}" in
  build) build_pause; build_triad "${2:-release}" ;;
  load) load "${2:?usage: hack/image.sh load <cluster>}" ;;
  pause) build_pause ;;
  *) echo "usage: $0 build [debug|release] | load <cluster> | pause" >&2; exit 2 ;;
esac
