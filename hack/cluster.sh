#!/usr/bin/env bash
# A local cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler as
# plain processes, and a node of containerd, runc and a kubelet (hack/node.sh) that runs
# pods as containers of locally built images (hack/image.sh).
#
#   hack/cluster.sh up   [name]   start (idempotent); last line: export KUBECONFIG=<path>
#   hack/cluster.sh down [name]   stop every process it started and remove the state
#   hack/cluster.sh env  [name]   print the export line of a running cluster
#
# TRIAD_NODE=0 starts the control plane alone (make lint's server-side dry runs).
#
# Each cluster lives in its own directory with ports chosen free at start, so a test run
# can start its own cluster beside a developer's without a collision.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$HACK_DIR/node.sh"

CMD="${1:-up}"
NAME="${2:-${TRIAD_CLUSTER:-dev}}"
STATE_ROOT="${TRIAD_STATE_ROOT:-$TRIAD_CACHE/clusters}"
DIR="$STATE_ROOT/$NAME"
KUBECONFIG_PATH="$DIR/kubeconfig"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

with_node() { [[ "${TRIAD_NODE:-1}" != 0 ]]; }

apiserver_ready() {
  [[ -f "$DIR/port.apiserver" ]] || return 1
  curl -sf --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
    "https://$(node_ip):$(cat "$DIR/port.apiserver")/readyz" >/dev/null 2>&1
}

start() { # name, command...
  local name="$1"; shift
  # setsid: own process group, so `down` can stop the whole tree and a Ctrl-C in the
  # developer's shell does not take the cluster with it.
  setsid "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

stop_one() {
  local name="$1" pid
  [[ -f "$DIR/$name.pid" ]] || return 0
  pid="$(cat "$DIR/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/$name.pid"
}

make_pki() {
  local pki="$DIR/pki"; mkdir -p "$pki"; cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=triad-local-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  cat >server.ext <<EXT
subjectAltName=IP:127.0.0.1,IP:$(node_ip),IP:$(service_ip),DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout server.key -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile server.ext -out server.crt 2>/dev/null
  echo "extendedKeyUsage=clientAuth" >client.ext
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=triad-admin" -keyout admin.key -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile client.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

write_kubeconfig() {
  local port; port="$(cat "$DIR/port.apiserver")"
  cat >"$KUBECONFIG_PATH" <<KC
apiVersion: v1
kind: Config
clusters:
- name: triad-$NAME
  cluster:
    server: https://$(node_ip):$port
    certificate-authority-data: $(base64 -w0 "$DIR/pki/ca.crt")
users:
- name: triad-admin
  user:
    client-certificate-data: $(base64 -w0 "$DIR/pki/admin.crt")
    client-key-data: $(base64 -w0 "$DIR/pki/admin.key")
contexts:
- name: triad-$NAME
  context: {cluster: triad-$NAME, user: triad-admin}
current-context: triad-$NAME
KC
}

up() {
  if alive etcd && alive apiserver && alive controller-manager && alive scheduler &&
    { ! with_node || { alive containerd && alive kubelet; }; } && apiserver_ready; then
    # Images built since the cluster started (make image, make test) replace the old ones.
    with_node && bash "$HACK_DIR/image.sh" load "$NAME"
    log "cluster '$NAME' already running"
    echo "export KUBECONFIG=$KUBECONFIG_PATH"
    return 0
  fi
  down quiet
  need_tools kubernetes etcd crictl
  with_node && node_packages
  mkdir -p "$DIR"
  local t0=$SECONDS
  claim_slot
  network_up
  make_pki
  local etcd_port etcd_peer api_port
  etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"
  echo "$api_port" >"$DIR/port.apiserver"; echo "$etcd_port" >"$DIR/port.etcd"
  start etcd "$ETCD_BIN/etcd" --name triad --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "triad=http://127.0.0.1:$etcd_peer" ${TRIAD_ETCD_FSYNC:+} \
    $([[ "${TRIAD_ETCD_FSYNC:-0}" == 1 ]] || echo --unsafe-no-fsync) \
    --quota-backend-bytes=8589934592 --log-level=warn
  start apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address="$(node_ip)" --advertise-address="$(node_ip)" --secure-port "$api_port" \
    --cert-dir "$DIR/pki" --tls-cert-file "$DIR/pki/server.crt" --tls-private-key-file "$DIR/pki/server.key" \
    --client-ca-file "$DIR/pki/ca.crt" \
    --service-cluster-ip-range="198.19.$(slot).0/24" --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate "$DIR/pki/admin.crt" --kubelet-client-key "$DIR/pki/admin.key" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --max-requests-inflight=2000 --max-mutating-requests-inflight=1000 \
    --enable-priority-and-fairness=false \
    --watch-cache=true --profiling="${TRIAD_APISERVER_PROFILING:-false}" --v=1
  local deadline=$((SECONDS + 120))
  until apiserver_ready; do
    if ! alive apiserver || ! alive etcd || ((SECONDS > deadline)); then
      log "kube-apiserver did not become ready; last lines of its log:"; tail -20 "$DIR/apiserver.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  write_kubeconfig
  start controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_PATH" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt" \
    --use-service-account-credentials=false --cluster-name="triad-$NAME" --v=1
  start scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_PATH" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1
  # The namespace controller and service accounts come from the controller manager;
  # wait until the default namespace has its service account so pods can be created.
  deadline=$((SECONDS + 60))
  until KUBECONFIG="$KUBECONFIG_PATH" "$K8S_BIN/kubectl" get serviceaccount default -n default >/dev/null 2>&1; do
    ((SECONDS > deadline)) && { log "no default service account; see $DIR/controller-manager.log"; exit 1; }
    sleep 0.2
  done
  with_node && node_up
  log "cluster '$NAME' ready in $((SECONDS - t0)) s (state: $DIR, node triad-$NAME at $(node_ip))"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

down() {
  node_down
  for p in prometheus scheduler controller-manager apiserver etcd; do stop_one "$p"; done
  rm -rf "$DIR"
  [[ "${1:-}" == quiet ]] || log "cluster '$NAME' stopped"
}

case "$CMD" in
  up) up ;;
  down) down ;;
  env) apiserver_ready && echo "export KUBECONFIG=$KUBECONFIG_PATH" || { log "cluster '$NAME' is not running"; exit 1; } ;;
  *) echo "usage: $0 up|down|env [name]" >&2; exit 2 ;;
esac
