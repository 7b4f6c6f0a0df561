#!/usr/bin/env bash
# Restart one component of the running local cluster, the way hack/cluster-up.sh starts it (its
# start_* functions, same flags and files; state such as etcd's data and the containers is kept).
# Idempotent: a component that is down is just started. Returns once the component is healthy
# again, printing how long it was stopped and how long the whole restart took.
#
#   hack/cluster-restart.sh COMPONENT
#   COMPONENT: etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kwok
#
# containerd is stopped with TERM only: its shims, and so the containers, keep running (as with a
# systemd restart of containerd). The kubelet's pods keep running too.
# shellcheck source=hack/cluster-up.sh
. "$(dirname "$0")/cluster-up.sh"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kwok)

# restart COMPONENT: stop it, then start it and wait until it is healthy; STOPPED_AT is when it
# was gone.
restart() {
  case "$1" in
    etcd) stop_components 20 etcd ;;
    containerd) stop_components 15 containerd ;;
    *) stop_components 20 "$1" ;;
  esac
  STOPPED_AT=$SECONDS
  case "$1" in
    etcd) start_etcd; wait_for kube-apiserver 120 apiserver_ready ;;
    kube-apiserver) start_apiserver; wait_for kube-apiserver 120 apiserver_ready ;;
    kube-controller-manager) start_controller_manager ;;
    kube-scheduler) start_scheduler ;;
    containerd) start_containerd ;;
    kubelet) start_kubelet ;;
    kwok) start_kwok ;;
  esac
}

restart_main() {
  [ $# -eq 1 ] || die "usage: hack/cluster-restart.sh COMPONENT (one of: ${COMPONENTS[*]})"
  case " ${COMPONENTS[*]} " in *" $1 "*) ;; *) die "unknown component: $1 (one of: ${COMPONENTS[*]})" ;; esac
  [ "$(id -u)" -eq 0 ] || die "cluster-restart needs root"
  is_running kube-apiserver || is_running etcd || die "the local cluster is not running (make cluster-up)"
  use_cached_tools
  local t0=$SECONDS
  log "restarting $1"
  restart "$1"
  log "$1 restarted: healthy $((SECONDS - STOPPED_AT))s after it stopped, $((SECONDS - t0))s in all"
}

restart_main "$@"
