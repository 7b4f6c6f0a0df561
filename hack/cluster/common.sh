# Layout, binaries and process helpers shared by cluster-up.sh, cluster-down.sh and e2e.sh.
# Source it after hack/lib.sh; do not run it.
# shellcheck shell=bash
# Its variables are used by the scripts that source it:
# shellcheck disable=SC2034

# --- layout under CLUSTER_DIR (removed whole by cluster-down) ---
PKI_DIR="$CLUSTER_DIR/pki"
PID_DIR="$CLUSTER_DIR/pids"
CONF_DIR="$CLUSTER_DIR/conf"
# the API server's audit log of ServiceAccount requests (hack/cluster-up.sh; e2e/tests/rbac.rs)
AUDIT_DIR="$CLUSTER_DIR/audit"
ETCD_DATA="$CLUSTER_DIR/etcd"
REGISTRY_DATA="$CLUSTER_DIR/registry"
# A second registry that requires a login (htpasswd), for pull-secret tests. Test-only
# credentials: it listens on loopback only and holds only generated test images.
PRIVATE_REGISTRY="127.0.0.1:5001"
PRIVATE_REGISTRY_USER="kwarm"
PRIVATE_REGISTRY_PASSWORD="warm-secret"
PRIVATE_REGISTRY_DATA="$CLUSTER_DIR/private-registry"
CONTAINERD_DIR="$CLUSTER_DIR/containerd"
CONTAINERD_ROOT="$CONTAINERD_DIR/root"
CONTAINERD_STATE="$CONTAINERD_DIR/state"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
KUBELET_DIR="$CLUSTER_DIR/kubelet"
CNI_CONF_DIR="$CLUSTER_DIR/cni/net.d"
CNI_IPAM_DIR="$CLUSTER_DIR/cni/ipam"
# Saved values of the sysctls the kubelet rewrites, restored by cluster-down.
SYSCTL_SAVE="$CLUSTER_DIR/sysctl.saved"

# --- network: everything listens on 127.0.0.1 ---
APISERVER_PORT=6443
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
CM_PORT=10257
SCHED_PORT=10259
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"
# Pod addresses exist only inside the pods' network namespaces on our bridge: the bridge has no
# address of its own, there is no gateway and no masquerading, so no pod traffic leaves the bridge.
POD_SUBNET="10.88.0.0/16"
CNI_NETWORK="kwarm"
CNI_BRIDGE="kwarm0"
# Fake pod IPs KWOK hands out to pods on fake nodes (never routed anywhere).
KWOK_POD_CIDR="10.244.0.1/16"

NODE_NAME="127.0.0.1"
PAUSE_IMAGE="$REGISTRY/kwarm/sleep:dev"
KWOK_ANNOTATION="kwok.x-k8s.io/node"

# --- binaries: absolute cache paths, versions from hack/versions.sh ---
ETCD_BIN="$(bin_path etcd "$ETCD_VERSION")"
KWOK_BIN="$(bin_path kwok "$KWOK_VERSION")"
APISERVER_BIN="$(bin_path kube-apiserver "$KUBE_VERSION")"
CM_BIN="$(bin_path kube-controller-manager "$KUBE_VERSION")"
SCHED_BIN="$(bin_path kube-scheduler "$KUBE_VERSION")"
KUBELET_BIN="$(bin_path kubelet "$KUBE_VERSION")"
KUBECTL_BIN="$(bin_path kubectl "$KUBE_VERSION")"

# Put the cached kubectl (and helm, kwok, etcd) first on PATH under their plain names, through a
# directory of symlinks, so scripts and tests never pick up a system kubectl of another version.
use_cached_tools() {
  local dir="$CACHE_DIR/path" name target
  mkdir -p "$dir"
  for pair in "kubectl:$KUBECTL_BIN" "kwok:$KWOK_BIN" "etcd:$ETCD_BIN" "helm:$(helm_bin)"; do
    name="${pair%%:*}" target="${pair#*:}"
    [ -x "$target" ] || continue
    [ "$(readlink "$dir/$name" 2>/dev/null)" = "$target" ] || ln -sfn "$target" "$dir/$name"
  done
  case ":$PATH:" in *":$dir:"*) ;; *) export PATH="$dir:$PATH" ;; esac
  export KUBECONFIG="$KUBECONFIG_PATH"
}

kubectl_() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# --- processes: one pid file per component in PID_DIR, logs in LOG_DIR ---
pid_of() { # NAME -> pid if the recorded process is alive, else nothing (exit 1)
  local f="$PID_DIR/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # guard against pid reuse: the process must still be ours (its command line mentions CLUSTER_DIR
  # or is one of the cached binaries)
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "$CLUSTER_DIR|$BIN_DIR" || return 1
  echo "$pid"
}
is_running() { pid_of "$1" >/dev/null; }

# start_bg NAME CMD... : detached from our session (setsid), immune to hangups (nohup), stdin closed,
# output to LOG_DIR/NAME.log, pid to PID_DIR/NAME.pid. Every other inherited descriptor is closed:
# a daemon must not keep what its starter held open, such as the lock of
# `flock LOCKFILE make cluster-up`, which it would otherwise hold until the cluster stops.
start_bg() {
  local name="$1"; shift
  mkdir -p "$PID_DIR" "$LOG_DIR"
  printf '\n===== %s starting: %s\n' "$(date -Is)" "$*" >>"$LOG_DIR/$name.log"
  (
    for fd in /proc/self/fd/*; do
      fd="${fd##*/}"
      [ "$fd" -le 2 ] || eval "exec $fd>&-" 2>/dev/null || true
    done
    exec setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null
  ) &
  echo $! >"$PID_DIR/$name.pid"
}

# wait_for NAME SECONDS CHECK... : poll CHECK until it succeeds. Fails naming the component, with
# the tail of its log, when the deadline passes or when its process has died.
wait_for() {
  local name="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    # (kill -0, not is_running: right after the fork the child's command line is still ours)
    if [ -f "$PID_DIR/$name.pid" ] && ! kill -0 "$(cat "$PID_DIR/$name.pid")" 2>/dev/null; then
      component_failed "$name" "exited while starting"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      component_failed "$name" "did not become ready within ${timeout}s"
    fi
    sleep 0.5
  done
}

component_failed() { # NAME WHY
  local log="$LOG_DIR/$1.log"
  {
    echo "error: $1 $2 (log: $log)"
    if [ -f "$log" ]; then echo "----- last lines of $log -----"; tail -n 25 "$log"; echo "-----"; fi
  } >&2
  exit 1
}

# stop_components SECONDS NAME...: TERM to all at once, KILL to those still alive after the
# deadline; returns when all are gone. Names without a live recorded process are skipped.
stop_components() {
  local timeout="$1"; shift
  local name pid pids=() names=()
  for name in "$@"; do
    if pid="$(pid_of "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid") names+=("$name")
    fi
    rm -f "$PID_DIR/$name.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local deadline=$((SECONDS + timeout)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "pids ${alive[*]} ignored TERM for ${timeout}s: killing"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  log "stopped ${names[*]}"
}

registry_has() { # REF (host/repo:tag) -> success when the local registry serves that tag
  local ref="${1#"$REGISTRY"/}"
  curl -fsS -o /dev/null -I \
    -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json' \
    "http://$REGISTRY/v2/${ref%:*}/manifests/${ref##*:}" 2>/dev/null
}
