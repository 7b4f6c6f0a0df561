#!/usr/bin/env bash
# shellcheck disable=SC2317 # false positive: teardown runs through trap
# The chaos suite (bench/chaos.py) on the real local cluster: kwarm installed with its chart, two
# replicas, faults injected one after the other (API server, etcd, 410 Gone, leader kill during a
# rollout, partition, kubelet, containerd, other writers, hand-edited state, Events and Lease).
#   - starts the cluster when it is not up and stops it at the end (also on failure or ^C); a
#     cluster that was already up is left running
#   - pushes the test images and the kwarm images (make images)
#   - runs python3 bench/chaos.py ARGS... and exits with its status (1: an assertion failed)
# Writes bench/CHAOS.md and bench/chaos.json (all faults only). About 10 minutes.
# Usage: hack/chaos.sh [FAULT...]
#   CHAOS_NODES=20     KWOK nodes holding the images besides the real node
#   CHAOS_SABOTAGE=1   run the deliberately broken case instead (it must fail)
#   CHAOS_KEEP=1       leave kwarm installed in namespace kwarm-chaos afterwards
#   KEEP_CLUSTER=1     do not stop a cluster this script started
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

STARTED_CLUSTER=0

teardown() {
  [ "$STARTED_CLUSTER" -eq 1 ] || return 0
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "chaos: KEEP_CLUSTER=1: leaving the cluster up (make cluster-down stops it)"
  else
    "$HACK_DIR/cluster-down.sh" || true
  fi
}

main() {
  [ "$(id -u)" -eq 0 ] || die "the chaos suite needs root (it restarts cluster components and kills processes)"
  python3 -c 'import yaml' 2>/dev/null || die "python3 yaml module missing (hack/install-deps.sh)"
  use_cached_tools
  trap teardown EXIT
  if ! is_running kube-apiserver; then STARTED_CLUSTER=1; fi
  "$HACK_DIR/cluster-up.sh"
  "$HACK_DIR/test-images.sh"
  make -C "$ROOT_DIR" --no-print-directory images
  local build dirty
  build="$(git -C "$ROOT_DIR" rev-parse --short HEAD)"
  dirty="$(git -C "$ROOT_DIR" status --porcelain -- src sleep Cargo.toml Cargo.lock | head -1)"
  KWARM_BUILD="$build${dirty:+ + uncommitted changes in src/}, manager sha256 $(sha256sum "$ROOT_DIR/_output/bin/kwarm" | cut -c1-12)"
  HELM="$(helm_bin)"
  export KWARM_BUILD KUBECONFIG="$KUBECONFIG_PATH" KUBECTL="$KUBECTL_BIN" HELM CONTAINERD_SOCK
  local status=0
  python3 "$ROOT_DIR/bench/chaos.py" "$@" || status=$?
  exit "$status"
}

main "$@"
