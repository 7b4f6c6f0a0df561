#!/usr/bin/env bash
# Start the local cluster: registry, etcd, kube-apiserver, controller-manager, scheduler, a private
# containerd, one real kubelet node named 127.0.0.1, and KWOK simulating KWOK_NODES fake nodes.
# Idempotent: components already running are left alone (and checked), missing ones are started,
# and asking for more fake nodes than exist adds them.
#
#   KWOK_NODES=N       fake nodes to have (default 0; never removes any)
#   SLEEP_BUILD, SLEEP_DOCKERFILE
#                      how the pause image is made (default hack/build-sleep.sh and
#                      docker/sleep.Dockerfile, built with hack/image.sh)
#
# Everything lives in CLUSTER_DIR (see hack/lib.sh); hack/cluster-down.sh removes it all. Every
# server listens on 127.0.0.1 only. Each component gets a bounded wait; a failure names the
# component and shows the end of its log. Known limit: the apiserver refuses to proxy to a node
# at a loopback address, so `kubectl get --raw /api/v1/nodes/127.0.0.1/proxy/...` fails
# ("address not allowed"); logs and the kubelet's own API on 127.0.0.1:10250 work.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

KWOK_NODES="${KWOK_NODES:-0}"
[[ "$KWOK_NODES" =~ ^[0-9]+$ ]] || die "KWOK_NODES must be a number, got '$KWOK_NODES'"
# How the pause (sandbox) image is made: the project's sleep binary in a FROM-scratch image.
SLEEP_BUILD="${SLEEP_BUILD:-$ROOT_DIR/hack/build-sleep.sh}"
SLEEP_DOCKERFILE="${SLEEP_DOCKERFILE:-$ROOT_DIR/docker/sleep.Dockerfile}"

check_prereqs() {
  [ "$(id -u)" -eq 0 ] || die "cluster-up needs root (kubelet, containerd, mounts, cgroups)"
  local b missing=()
  for b in "$ETCD_BIN" "$KWOK_BIN" "$APISERVER_BIN" "$CM_BIN" "$SCHED_BIN" "$KUBELET_BIN" "$KUBECTL_BIN"; do
    [ -x "$b" ] || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing binaries (run 'make tools' or hack/build-bins.sh all): ${missing[*]}"
  for b in containerd containerd-shim-runc-v2 runc ctr docker-registry buildah openssl curl setsid; do
    command -v "$b" >/dev/null || die "$b is missing: run hack/install-deps.sh"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || die "CNI plugins missing in /usr/lib/cni: run hack/install-deps.sh"
}

# A port held by something that is not our component means a foreign or orphaned server: refuse
# rather than talk to the wrong thing.
check_port_free() { # NAME PORT
  if ! is_running "$1" && ss -Hltn "sport = :$2" 2>/dev/null | grep -q .; then
    die "port $2 (for $1) is in use by another process: $(ss -Hltnp "sport = :$2" | head -1)"
  fi
}

# --- certificates (openssl; one CA signs everything) ---

gen_leaf() { # NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
  local name="$1" subj="$2" eku="$3" sans="${4:-}"
  openssl genrsa -out "$PKI_DIR/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr" 2>/dev/null
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $eku"
    echo "authorityKeyIdentifier = keyid"
    [ -z "$sans" ] || echo "subjectAltName = $sans"
  } >"$PKI_DIR/$name.ext"
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$PKI_DIR/$name.ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

gen_pki() {
  [ -f "$PKI_DIR/.complete" ] && return
  log "certificates: generating in $PKI_DIR"
  rm -rf "$PKI_DIR"; mkdir -p "$PKI_DIR"; chmod 700 "$PKI_DIR"
  cat >"$PKI_DIR/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
  openssl genrsa -out "$PKI_DIR/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI_DIR/ca.key" -subj "/CN=kwarm-local-ca" -days 3650 -sha256 \
    -config "$PKI_DIR/ca.cnf" -extensions v3_ca -out "$PKI_DIR/ca.crt"
  # RSA key generation dominates: make the leaves (and the service-account key) in parallel
  local jobs=()
  gen_leaf apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:$SERVICE_IP" &
  jobs+=($!)
  gen_leaf admin "/O=system:masters/CN=kwarm-admin" clientAuth & jobs+=($!)
  gen_leaf controller-manager "/CN=system:kube-controller-manager" clientAuth & jobs+=($!)
  gen_leaf scheduler "/CN=system:kube-scheduler" clientAuth & jobs+=($!)
  gen_leaf kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth & jobs+=($!)
  gen_leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth & jobs+=($!)
  gen_leaf kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:127.0.0.1, DNS:localhost" & jobs+=($!)
  # service-account token signing key pair
  { openssl genrsa -out "$PKI_DIR/sa.key" 2048 2>/dev/null && openssl rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null; } &
  jobs+=($!)
  local job
  for job in "${jobs[@]}"; do wait "$job" || die "certificate generation failed (openssl) in $PKI_DIR"; done
  touch "$PKI_DIR/.complete"
}

write_kubeconfig() { # FILE USER CERT_NAME
  local file="$1" user="$2" cert="$3"
  umask 077
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kwarm
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$cert.key")
contexts:
- name: kwarm
  context:
    cluster: kwarm
    user: $user
current-context: kwarm
EOF
  umask 022
}

gen_kubeconfigs() {
  mkdir -p "$CONF_DIR"
  [ -f "$KUBECONFIG_PATH" ] || write_kubeconfig "$KUBECONFIG_PATH" kwarm-admin admin
  [ -f "$CONF_DIR/controller-manager.kubeconfig" ] || write_kubeconfig "$CONF_DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  [ -f "$CONF_DIR/scheduler.kubeconfig" ] || write_kubeconfig "$CONF_DIR/scheduler.kubeconfig" system:kube-scheduler scheduler
  [ -f "$CONF_DIR/kubelet.kubeconfig" ] || write_kubeconfig "$CONF_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
}

# --- health checks (used with wait_for) ---

curl_admin() { # PATH on the apiserver with the admin client certificate
  curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" "$APISERVER_URL$1"
}
registry_healthy() { curl -fsS --max-time 3 -o /dev/null "http://$REGISTRY/v2/"; }
etcd_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() { curl_admin /readyz | grep -qx ok; }
# the healthz endpoints are in the components' always-allowed paths, served with self-signed certs
cm_healthy() { curl -fsSk --max-time 3 "https://127.0.0.1:$CM_PORT/healthz" | grep -qx ok; }
sched_healthy() { curl -fsSk --max-time 3 "https://127.0.0.1:$SCHED_PORT/healthz" | grep -qx ok; }
containerd_healthy() { ctr --address "$CONTAINERD_SOCK" --timeout 3s version; }
kubelet_healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" | grep -qx ok; }
node_ready() {
  [ "$(kubectl_ get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
default_sa_exists() { kubectl_ get serviceaccount default -n default; }
kwok_healthy() { curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$KWOK_PORT/healthz"; }
KWOK_PORT=10247

# --- components ---

# registry_config ADDR DATA_DIR [HTPASSWD_FILE]: a docker-registry config on stdout
registry_config() {
  cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $2
  delete:
    enabled: true
http:
  addr: $1
EOF
  if [ -n "${3:-}" ]; then
    printf 'auth:\n  htpasswd:\n    realm: kwarm-private\n    path: %s\n' "$3"
  fi
}

start_registry() {
  is_running registry || {
    check_port_free registry 5000
    mkdir -p "$REGISTRY_DATA" "$CONF_DIR"
    registry_config "$REGISTRY" "$REGISTRY_DATA" >"$CONF_DIR/registry.yml"
    log "registry: starting on $REGISTRY"
    start_bg registry docker-registry serve "$CONF_DIR/registry.yml"
  }
  wait_for registry 30 registry_healthy
}

private_registry_healthy() { # answers, and asks for a login
  [ "$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "http://$PRIVATE_REGISTRY/v2/")" = 401 ]
}

start_private_registry() {
  is_running private-registry || {
    check_port_free private-registry "${PRIVATE_REGISTRY##*:}"
    mkdir -p "$PRIVATE_REGISTRY_DATA" "$CONF_DIR"
    htpasswd -Bbn "$PRIVATE_REGISTRY_USER" "$PRIVATE_REGISTRY_PASSWORD" >"$CONF_DIR/private-registry.htpasswd"
    registry_config "$PRIVATE_REGISTRY" "$PRIVATE_REGISTRY_DATA" "$CONF_DIR/private-registry.htpasswd" \
      >"$CONF_DIR/private-registry.yml"
    log "private registry: starting on $PRIVATE_REGISTRY (login required)"
    start_bg private-registry docker-registry serve "$CONF_DIR/private-registry.yml"
  }
  wait_for private-registry 30 private_registry_healthy
}

start_etcd() {
  is_running etcd || {
    check_port_free etcd "$ETCD_CLIENT_PORT"
    log "etcd: starting on 127.0.0.1:$ETCD_CLIENT_PORT"
    # Plain HTTP on loopback only. --unsafe-no-fsync: this cluster is disposable, and fsync per write
    # makes thousands of fake-node lease updates crawl on a small disk.
    start_bg etcd "$ETCD_BIN" --name kwarm --data-dir "$ETCD_DATA" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "kwarm=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync --quota-backend-bytes=$((4 * 1024 * 1024 * 1024)) --log-level=warn
  }
  wait_for etcd 30 etcd_healthy
}

# The audit log: every request of a ServiceAccount outside kube-system (the manager installed by
# the chart, kustomize or the OpenShift templates, at Metadata level: who, verb, resource, response
# code), so that e2e/tests/rbac.rs can compare the rights kwarm is granted with those it uses. The
# cluster's controllers (kube-system ServiceAccounts) and every other user are not logged.
AUDIT_POLICY="$CONF_DIR/audit-policy.yaml"
write_audit_policy() {
  mkdir -p "$AUDIT_DIR"
  cat >"$AUDIT_POLICY" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF
}

start_apiserver() {
  is_running kube-apiserver && return
  check_port_free kube-apiserver "$APISERVER_PORT"
  log "kube-apiserver: starting on $APISERVER_URL"
  write_audit_policy
  # --advertise-address: there may be no default route to pick one from. --endpoint-reconciler-type
  # none: nothing needs the kubernetes service's endpoints and 127.0.0.1 is not a valid endpoint.
  # Unlimited in-flight requests and no priority-and-fairness: thousands of fake nodes hammer it.
  # Hostname first: the apiserver reaches the kubelet as "127.0.0.1", never via another address.
  # The requestheader flags only fill the extension-apiserver-authentication config map the other
  # components read (without them they log errors); no front-proxy-client certificate is issued.
  start_bg kube-apiserver "$APISERVER_BIN" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address=127.0.0.1 \
    --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --client-ca-file="$PKI_DIR/ca.crt" \
    --requestheader-client-ca-file="$PKI_DIR/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI_DIR/ca.crt" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --endpoint-reconciler-type=none --allow-privileged=true \
    --max-requests-inflight=0 --max-mutating-requests-inflight=0 --enable-priority-and-fairness=false \
    --cert-dir="$PKI_DIR/apiserver-generated" --profiling=false \
    --audit-policy-file="$AUDIT_POLICY" --audit-log-path="$AUDIT_DIR/audit.log" \
    --audit-log-maxsize=200 --audit-log-maxbackup=2
}

start_controller_manager() {
  is_running kube-controller-manager || {
    check_port_free kube-controller-manager "$CM_PORT"
    log "kube-controller-manager: starting"
    local kc="$CONF_DIR/controller-manager.kubeconfig"
    # --node-monitor-grace-period: fake nodes renew their leases less often (see start_kwok);
    # a generous grace period keeps thousands of them Ready on two busy cores.
    start_bg kube-controller-manager "$CM_BIN" \
      --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --bind-address=127.0.0.1 --secure-port="$CM_PORT" --cert-dir="$PKI_DIR/controller-manager-generated" \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$PKI_DIR/sa.key" --root-ca-file="$PKI_DIR/ca.crt" \
      --cluster-signing-cert-file="$PKI_DIR/ca.crt" --cluster-signing-key-file="$PKI_DIR/ca.key" \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --leader-elect=false --kube-api-qps=500 --kube-api-burst=1000 \
      --node-monitor-grace-period=3m --concurrent-daemonset-syncs=4 --profiling=false
  }
  wait_for kube-controller-manager 60 cm_healthy
}

start_scheduler() {
  is_running kube-scheduler || {
    check_port_free kube-scheduler "$SCHED_PORT"
    log "kube-scheduler: starting"
    cat >"$CONF_DIR/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CONF_DIR/scheduler.kubeconfig
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
EOF
    local kc="$CONF_DIR/scheduler.kubeconfig"
    start_bg kube-scheduler "$SCHED_BIN" --config="$CONF_DIR/scheduler.yaml" \
      --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$PKI_DIR/scheduler-generated"
  }
  wait_for kube-scheduler 60 sched_healthy
}

# The sandbox ("pause") image of the real node is the project's sleep image, served by our
# registry: it must be there before the kubelet creates its first pod sandbox.
build_pause_image() {
  if registry_has "$PAUSE_IMAGE"; then return; fi
  [[ -x "$SLEEP_BUILD" && -f "$SLEEP_DOCKERFILE" ]] ||
    die "the pause image needs $SLEEP_BUILD and $SLEEP_DOCKERFILE (the sleep crate)"
  log "pause image: building $PAUSE_IMAGE"
  "$SLEEP_BUILD" >"$LOG_DIR/build-sleep.log" 2>&1 || component_failed build-sleep "build failed"
  "$HACK_DIR/image.sh" "$SLEEP_DOCKERFILE" "$PAUSE_IMAGE" >>"$LOG_DIR/build-sleep.log" 2>&1 ||
    component_failed build-sleep "image build/push failed"
}

write_cni_config() {
  mkdir -p "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  # No gateway and no masquerading: the bridge gets no address, pods cannot reach anything outside
  # it (they need no network for holding images). IPAM state lives in CLUSTER_DIR.
  cat >"$CNI_CONF_DIR/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_SUBNET" }]],
        "dataDir": "$CNI_IPAM_DIR"
      }
    }
  ]
}
EOF
}

# hosts.toml per registry name (containerd reads them at every pull, so a running containerd sees
# changes). Our registries speak plain HTTP. The registries kubernetes-image-puller's own files name
# (MIRRORED_REGISTRIES) are served by the local registry, so the puller's values and templates are
# used as they are and nothing leaves the machine: quay.io/che-incubator/che-code:next is pulled
# from 127.0.0.1:5000/che-incubator/che-code:next (hack/test-images.sh pushes it).
MIRRORED_REGISTRIES=(quay.io)
write_registry_hosts() {
  local r
  for r in "$REGISTRY" "$PRIVATE_REGISTRY" "${MIRRORED_REGISTRIES[@]}"; do
    local target="$r"
    [ "$r" = "$REGISTRY" ] || [ "$r" = "$PRIVATE_REGISTRY" ] || target="$REGISTRY"
    mkdir -p "$CONTAINERD_DIR/certs.d/$r"
    cat >"$CONTAINERD_DIR/certs.d/$r/hosts.toml" <<EOF
server = "http://$target"

[host."http://$target"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
EOF
  done
}

start_containerd() {
  write_registry_hosts
  is_running containerd || {
    log "containerd: starting (socket $CONTAINERD_SOCK)"
    mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE"
    # Everything (root, state, sockets, runc state, netns mounts, /opt) under CLUSTER_DIR so that
    # it cannot collide with a system containerd and cluster-down finds all of it.
    # restrict_oom_score_adj: this VM lacks CAP_SYS_RESOURCE; without it every sandbox fails with
    # "oom_score_adj: Permission denied".
    cat >"$CONTAINERD_DIR/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CONTAINERD_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONTAINERD_DIR/certs.d"
EOF
    start_bg containerd containerd --config "$CONTAINERD_DIR/config.toml"
  }
  wait_for containerd 30 containerd_healthy
}

# The kubelet sets a few kernel sysctls (vm.overcommit_memory, kernel.panic, ...); remember the
# machine's values once so cluster-down can put them back.
save_sysctls() {
  [ -f "$SYSCTL_SAVE" ] && return
  local k
  for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    echo "$k=$(sysctl -n "$k" 2>/dev/null)"
  done >"$SYSCTL_SAVE"
}

start_kubelet() {
  is_running kubelet || {
    check_port_free kubelet "$KUBELET_PORT"
    log "kubelet: starting node $NODE_NAME"
    save_sysctls
    mkdir -p "$KUBELET_DIR"
    # pods get no DNS server of their own: nothing to resolve, and the host's may be unreachable
    printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$CONF_DIR/resolv.conf"
    # Eviction thresholds are low so that a nearly full small disk does not evict the test pods,
    # and image GC waits until the disk is almost full so pre-pulled images stay.
    cat >"$CONF_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI_DIR/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI_DIR/kubelet-serving.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
resolvConf: $CONF_DIR/resolv.conf
clusterDomain: cluster.local
# no cluster DNS runs; naming one keeps ClusterFirst pods from a MissingClusterDNS event each sync
clusterDNS: [127.0.0.1]
serializeImagePulls: false
maxPods: 250
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
containerLogMaxSize: 10Mi
containerLogMaxFiles: 2
EOF
    start_bg kubelet "$KUBELET_BIN" --config="$CONF_DIR/kubelet.yaml" \
      --kubeconfig="$CONF_DIR/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
      --root-dir="$KUBELET_DIR" --v=1
  }
  wait_for kubelet 60 kubelet_healthy
  wait_for kubelet 120 node_ready "$NODE_NAME"
}

start_kwok() {
  is_running kwok || {
    check_port_free kwok "$KWOK_PORT"
    log "kwok: starting (manages nodes annotated $KWOK_ANNOTATION=fake)"
    # kwok's own config file: none (its built-in stages make nodes Ready and pods Running at once).
    # A 120 s lease renewed every ~30 s keeps the apiserver load of many fake nodes low.
    start_bg kwok "$KWOK_BIN" --kubeconfig="$KUBECONFIG_PATH" --config=/dev/null \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector="$KWOK_ANNOTATION=fake" \
      --cidr="$KWOK_POD_CIDR" --node-lease-duration-seconds=120 \
      --server-address="127.0.0.1:$KWOK_PORT" --v=WARN
  }
  wait_for kwok 30 kwok_healthy
}

kwok_node_yaml() { # NAME
  cat <<EOF
- apiVersion: v1
  kind: Node
  metadata:
    name: $1
    annotations:
      $KWOK_ANNOTATION: fake
      node.alpha.kubernetes.io/ttl: "0"
    labels:
      kubernetes.io/arch: amd64
      kubernetes.io/hostname: $1
      kubernetes.io/os: linux
      kubernetes.io/role: agent
      node-role.kubernetes.io/agent: ""
      type: kwok
  status:
    allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
    capacity: {cpu: "32", memory: 256Gi, pods: "250"}
EOF
}

kwok_ready_count() {
  kubectl_ get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    grep -c True || true
}

# Have at least KWOK_NODES fake nodes (kwok-node-0 ... kwok-node-N-1): create the missing ones.
ensure_kwok_nodes() {
  local want="$KWOK_NODES" have i batch=()
  [ "$want" -gt 0 ] || return 0
  lines have kubectl_ get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
  local -A exists=()
  for i in "${have[@]}"; do [ -n "$i" ] && exists[$i]=1; done
  for ((i = 0; i < want; i++)); do [ -n "${exists[kwok-node-$i]:-}" ] || batch+=("kwok-node-$i"); done
  if [ ${#batch[@]} -gt 0 ]; then
    log "kwok: creating ${#batch[@]} fake nodes"
    { echo "apiVersion: v1"; echo "kind: List"; echo "items:"; for i in "${batch[@]}"; do kwok_node_yaml "$i"; done; } |
      kubectl_ create -f - >/dev/null
  fi
  local deadline=$((SECONDS + 60 + want / 5)) ready
  while ready="$(kwok_ready_count)"; [ "$ready" -lt "$want" ]; do
    [ "$SECONDS" -lt "$deadline" ] || component_failed kwok "has only $ready of $want fake nodes Ready after $((60 + want / 5))s"
    is_running kwok || component_failed kwok "exited"
    sleep 1
  done
}

# A CLUSTER_DIR whose processes are all gone (the machine or the session was stopped) still has
# mounts, cgroups, the bridge and old cluster state: clean it up and start afresh.
clean_stale_cluster() {
  [ -d "$CLUSTER_DIR" ] || return 0
  local f
  for f in "$PID_DIR"/*.pid; do
    [ -e "$f" ] || continue
    if is_running "$(basename "$f" .pid)"; then return 0; fi
  done
  log "found $CLUSTER_DIR with no component running: removing the stale cluster first"
  "$HACK_DIR/cluster-down.sh"
}

main() {
  local t0=$SECONDS
  check_prereqs
  clean_stale_cluster
  mkdir -p "$CLUSTER_DIR" "$LOG_DIR" "$PID_DIR" "$CONF_DIR"
  use_cached_tools
  local was_up=0
  if is_running kube-apiserver && is_running kubelet && is_running kwok && apiserver_ready 2>/dev/null && node_ready "$NODE_NAME"; then
    was_up=1
  fi

  gen_pki
  gen_kubeconfigs
  start_registry
  start_private_registry
  start_etcd
  start_apiserver
  # build the pause image while the apiserver starts
  build_pause_image
  wait_for kube-apiserver 120 apiserver_ready
  start_controller_manager
  start_scheduler
  write_cni_config
  start_containerd
  start_kubelet
  start_kwok
  ensure_kwok_nodes
  wait_for kube-controller-manager 60 default_sa_exists

  if [ "$was_up" -eq 1 ]; then
    log "cluster already up and healthy ($((SECONDS - t0))s)"
  else
    log "cluster up in $((SECONDS - t0))s"
  fi
  cat >&2 <<EOF
  kubeconfig: export KUBECONFIG=$KUBECONFIG_PATH
  kubectl:    $KUBECTL_BIN
  nodes:      1 real ($NODE_NAME) + $(kubectl_ get nodes -l type=kwok --no-headers 2>/dev/null | wc -l) KWOK
  registry:   http://$REGISTRY (and http://$PRIVATE_REGISTRY, login $PRIVATE_REGISTRY_USER)
  containerd: ctr -a $CONTAINERD_SOCK -n k8s.io images ls
  logs:       $LOG_DIR/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,containerd,kubelet,kwok,registry}.log
  stop:       make cluster-down
EOF
}

# hack/cluster-restart.sh sources this file for its start_* functions
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
