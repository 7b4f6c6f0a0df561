#!/usr/bin/env bash
# Stop the local cluster and remove every trace of it: processes (by recorded PID), containers and
# their shims, mounts, kubepods cgroups, the CNI bridge and CNI state, the sysctls the kubelet
# changed, and CLUSTER_DIR itself. Idempotent: with nothing up it just checks and returns.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

[ "$(id -u)" -eq 0 ] || die "cluster-down needs root"

# Processes still in the kubepods cgroups are the pods' containers (and their sandboxes).
kubepods_pids() {
  local d
  for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/unified/kubepods /sys/fs/cgroup/kubepods; do
    if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done | sort -un
}

kill_containers() {
  local pids
  lines pids kubepods_pids
  [ ${#pids[@]} -gt 0 ] || return 0
  log "killing ${#pids[@]} container processes"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while [ -n "$(kubepods_pids)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
}

# Shims of *our* containerd carry its socket on their command line; they outlive containerd.
shim_pids() { pgrep -f -- "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true; }

kill_shims() {
  local pids
  lines pids shim_pids
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping ${#pids[@]} containerd shims"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while [ -n "$(shim_pids)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  lines pids shim_pids
  [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
}

# mounts_under DIR: mount points at or below DIR, deepest first
mounts_under() { awk -v dir="$1" '$2 == dir || index($2, dir "/") == 1 {print $2}' /proc/mounts | sort -r; }

# Everything mounted under CLUSTER_DIR (kubelet volumes, the kubelet's own bind mount, container
# rootfs overlays, sandbox shm, netns bind mounts), deepest first; lazily when busy.
unmount_all() {
  local mounts m
  lines mounts mounts_under "$CLUSTER_DIR"
  [ ${#mounts[@]} -gt 0 ] || return 0
  log "unmounting ${#mounts[@]} mounts under $CLUSTER_DIR"
  for m in "${mounts[@]}"; do
    m="$(printf '%b' "$m")" # /proc/mounts escapes spaces as \040
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done
  # a bind mount can be stacked on itself (the kubelet's root dir): repeat while any is left
  if awk -v dir="$CLUSTER_DIR" '$2 == dir || index($2, dir "/") == 1 {found=1} END {exit !found}' /proc/mounts; then
    unmount_all
  fi
}

# kubepods cgroups in every v1 hierarchy and the unified one: children before parents.
remove_cgroups() {
  local dirs
  lines dirs find /sys/fs/cgroup -maxdepth 2 -type d -name 'kubepods*'
  [ ${#dirs[@]} -gt 0 ] || return 0
  log "removing kubepods cgroups"
  local d
  for d in "${dirs[@]}"; do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && log "warning: cgroup $d is still busy"
  done
  return 0
}

remove_network() {
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    log "deleting bridge $CNI_BRIDGE"
    ip link delete "$CNI_BRIDGE" || log "warning: could not delete bridge $CNI_BRIDGE"
  fi
  # IPAM state is in CLUSTER_DIR, but libcni caches results in /var/lib/cni/results, named after
  # the network (ours, and containerd's own "cni-loopback") and the sandbox id
  rm -rf "/var/lib/cni/networks/$CNI_NETWORK"
  find /var/lib/cni/results -maxdepth 1 -name "$CNI_NETWORK-*" -delete 2>/dev/null || true
  local sb
  for sb in "$CONTAINERD_STATE"/io.containerd.grpc.v1.cri/sandboxes/* "$CONTAINERD_ROOT"/io.containerd.grpc.v1.cri/sandboxes/*; do
    [ -e "$sb" ] || continue
    find /var/lib/cni/results -maxdepth 1 -name "*-$(basename "$sb")-*" -delete 2>/dev/null || true
  done
}

restore_sysctls() {
  [ -f "$SYSCTL_SAVE" ] || return 0
  local line
  while IFS= read -r line; do
    if [ -n "${line#*=}" ]; then sysctl -q -w "$line" >/dev/null 2>&1 || true; fi
  done <"$SYSCTL_SAVE"
}

main() {
  local t0=$SECONDS
  if [ ! -d "$CLUSTER_DIR" ] && [ -z "$(shim_pids)" ] && ! ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    log "cluster is not up; nothing to do"
    return 0
  fi
  log "stopping the cluster in $CLUSTER_DIR"
  # the fake-node simulator, the controllers and the kubelet first, so nothing makes new pods
  stop_components 20 kwok kube-scheduler kube-controller-manager kubelet
  kill_containers
  stop_components 15 containerd
  kill_shims
  stop_components 20 kube-apiserver etcd registry private-registry
  # any other pid file left (a component added later, a crashed start)
  local f
  for f in "$PID_DIR"/*.pid; do
    if [ -e "$f" ]; then stop_components 10 "$(basename "$f" .pid)"; fi
  done
  unmount_all
  remove_cgroups
  remove_network
  restore_sysctls
  if awk -v dir="$CLUSTER_DIR" 'index($2, dir) == 1 {found=1} END {exit !found}' /proc/mounts; then
    die "mounts are still left under $CLUSTER_DIR; not removing it"
  fi
  # --one-file-system: never descend into something that is still mounted
  rm -rf --one-file-system "$CLUSTER_DIR"
  log "cluster down ($((SECONDS - t0))s)"
}

main "$@"
