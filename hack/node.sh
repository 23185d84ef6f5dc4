#!/usr/bin/env bash
# The node of a local cluster: containerd (its own root, state and socket), a kubelet on
# it, a CNI bridge for the pod network and one NAT rule that stands in for kube-proxy's
# `kubernetes` Service. Sourced by hack/cluster.sh, which sets DIR, NAME, KUBECONFIG_PATH
# and the start/stop_one/alive helpers.
#
# Addresses, for cluster slot N (1-120, one per running cluster on this machine):
#   pods      198.18.N.0/24   on bridge triadbrN; the node (and the API server) is 198.18.N.1
#   services  198.19.N.0/24   the `kubernetes` Service is 198.19.N.1:443
# All of it is in the benchmarking range 198.18.0.0/15 and never leaves this machine.

node_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v umoci >/dev/null || missing+=(umoci)
  command -v busybox >/dev/null || missing+=(busybox-static)
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The lowest slot no other cluster under STATE_ROOT holds (flock: two `up`s at once).
claim_slot() {
  mkdir -p "$STATE_ROOT"
  exec 9>"$STATE_ROOT/.slots.lock"
  flock 9
  local n used
  used=" $(cat "$STATE_ROOT"/*/slot 2>/dev/null | tr '\n' ' ' || true) "
  for n in $(seq 1 120); do
    [[ "$used" == *" $n "* ]] || break
  done
  echo "$n" >"$DIR/slot"
  flock -u 9
}

slot() { cat "$DIR/slot"; }
node_ip() { echo "198.18.$(slot).1"; }
service_ip() { echo "198.19.$(slot).1"; }
bridge() { echo "triadbr$(slot)"; }
nat_chain() { echo "TRIAD-SVC-$(slot)"; }
cgroup_root() { echo "/triad-$NAME"; }

# The bridge exists before the API server starts: it carries the node's address, which
# the API server advertises and the kubelet serves on.
network_up() {
  local br; br="$(bridge)"
  ip link show "$br" >/dev/null 2>&1 || ip link add "$br" type bridge
  ip addr replace "$(node_ip)/24" dev "$br"
  ip link set "$br" up
  mkdir -p "$DIR/cni"
  cat >"$DIR/cni/10-triad.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "triad-$(slot)",
  "plugins": [
    {"type": "bridge", "bridge": "$br", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.$(slot).0/24", "gateway": "$(node_ip)"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$DIR/cni-ipam"}},
    {"type": "loopback"}
  ]
}
CNI
}

# kube-proxy's one job here: the `kubernetes` Service's ClusterIP reaches the API server.
# A chain of our own per cluster, so clusters side by side never touch each other's rules
# (kube-proxy would own the host's KUBE-* chains for all of them).
service_nat_up() {
  local chain port; chain="$(nat_chain)"; port="$(cat "$DIR/port.apiserver")"
  iptables -w -t nat -N "$chain" 2>/dev/null || iptables -w -t nat -F "$chain"
  iptables -w -t nat -A "$chain" -d "$(service_ip)/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$(node_ip):$port"
  iptables -w -t nat -C PREROUTING -j "$chain" 2>/dev/null || iptables -w -t nat -I PREROUTING -j "$chain"
  iptables -w -t nat -C OUTPUT -j "$chain" 2>/dev/null || iptables -w -t nat -I OUTPUT -j "$chain"
}

containerd_up() {
  local c="$DIR/containerd"
  mkdir -p "$c"
  cat >"$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # The processes here lack CAP_SYS_RESOURCE: without this every sandbox fails in runc
  # ("failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni"
    max_conf_num = 1
TOML
  start containerd containerd --config "$c/config.toml" --log-level warn
  local deadline=$((SECONDS + 30))
  until ctr --address "$c/containerd.sock" version >/dev/null 2>&1; do
    if ! alive containerd || ((SECONDS > deadline)); then
      log "containerd did not start; last lines of its log:"; tail -20 "$DIR/containerd.log" >&2; exit 1
    fi
    sleep 0.2
  done
}

# The kubelet's cgroupRoot must exist in every v1 hierarchy it uses.
cgroups_up() {
  local h cg
  for h in /sys/fs/cgroup/*/; do
    [[ "$h" == */unified/ ]] && continue
    cg="${h%/}$(cgroup_root)"
    mkdir -p "$cg"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$cg/cpuset.cpus"; cat "$h/cpuset.mems" >"$cg/cpuset.mems"
    fi
  done
}

kubelet_up() {
  local k="$DIR/kubelet" pki="$DIR/pki" node="triad-$NAME" port healthz
  mkdir -p "$k"
  port="$(free_port)"; healthz="$(free_port)"
  echo "$healthz" >"$DIR/port.kubelet-healthz"
  # The kubelet's identity for the Node authorizer, and its own kubeconfig.
  (cd "$pki" &&
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$node" \
      -keyout kubelet.key -out kubelet.csr 2>/dev/null &&
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out kubelet.crt 2>/dev/null)
  sed -e "s|client-certificate-data: .*|client-certificate-data: $(base64 -w0 "$pki/kubelet.crt")|" \
      -e "s|client-key-data: .*|client-key-data: $(base64 -w0 "$pki/kubelet.key")|" \
      "$KUBECONFIG_PATH" >"$k/kubeconfig"
  cat >"$k/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip)
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: $(cgroup_root)
# This machine kind has cgroup v1 only; the kubelet refuses it from 1.35 unless told.
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
podLogsDir: $DIR/pod-logs
maxPods: 250
serializeImagePulls: false
clusterDomain: cluster.local
resolvConf: ""
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 10s
# The host's iptables are shared by every cluster on this machine; the NAT chain above is
# the only rule a cluster adds.
makeIPTablesUtilChains: false
YAML
  start kubelet "$K8S_BIN/kubelet" --config "$k/config.yaml" --kubeconfig "$k/kubeconfig" \
    --root-dir "$k" --hostname-override "$node" --node-ip "$(node_ip)" \
    --node-labels "triad.dev/node=local" --v=1
}

# Ready node and the images in place: pods can be scheduled and started.
node_wait() {
  local deadline=$((SECONDS + 90)) node="triad-$NAME"
  until [[ "$(KUBECONFIG="$KUBECONFIG_PATH" "$K8S_BIN/kubectl" get node "$node" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; do
    if ! alive kubelet || ((SECONDS > deadline)); then
      log "node $node is not Ready; last lines of the kubelet's log:"; tail -20 "$DIR/kubelet.log" >&2; exit 1
    fi
    sleep 0.5
  done
}

node_up() {
  containerd_up
  bash "$HACK_DIR/image.sh" load "$NAME"
  service_nat_up
  cgroups_up
  kubelet_up
  node_wait
}

# Stop the kubelet, remove every pod sandbox through the CRI (so CNI releases addresses
# and network namespaces), stop containerd, then sweep what a crash can leave: mounts,
# processes in the cluster's cgroups, the bridge and the NAT chain.
node_down() {
  stop_one kubelet
  local sock="$DIR/containerd/containerd.sock"
  if alive containerd && [[ -S "$sock" ]] && [[ -x "$CRICTL_BIN/crictl" ]]; then
    timeout 60 "$CRICTL_BIN/crictl" --runtime-endpoint "unix://$sock" rmp --all --force >/dev/null 2>&1 || true
  fi
  stop_one containerd
  [[ -f "$DIR/slot" ]] || return 0
  local cg pid m chain br
  for cg in /sys/fs/cgroup/*"$(cgroup_root)"; do
    [[ -d "$cg" ]] || continue
    for pid in $(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for m in $(awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  for cg in /sys/fs/cgroup/*"$(cgroup_root)"; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  chain="$(nat_chain)"
  iptables -w -t nat -D PREROUTING -j "$chain" 2>/dev/null || true
  iptables -w -t nat -D OUTPUT -j "$chain" 2>/dev/null || true
  iptables -w -t nat -F "$chain" 2>/dev/null && iptables -w -t nat -X "$chain" 2>/dev/null || true
  br="$(bridge)"
  ip link del "$br" 2>/dev/null || true
}
