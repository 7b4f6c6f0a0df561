#!/usr/bin/env bash
# Install the OS packages the local cluster, the image builds and the linters need.
# Idempotent and fast when everything is present: dpkg is asked first, apt-get runs only for what is
# missing (and `apt-get update` only then, because a fresh machine may have no package lists).
# Go and Rust come with the machine; the cluster's Go binaries are built by hack/build-bins.sh.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

# package -> why we need it
REQUIRED=(
  containerd                 # private containerd for the real node (CRI v1), ships ctr
  runc                       # the OCI runtime containerd's runc shim calls
  containernetworking-plugins # bridge, host-local, loopback in /usr/lib/cni
  docker-registry            # the local registry on 127.0.0.1:5000
  buildah                    # builds FROM-scratch images without a Docker engine
  skopeo                     # inspects / copies images in the registry
  openssl                    # the cluster's CA and certificates
  iproute2                   # ip link: deleting the CNI bridge on teardown
  apache2-utils              # htpasswd, for registry auth tests
  jq                         # JSON in scripts
  python3-yaml               # hack/process-template.py (OpenShift templates without oc)
  curl                       # health endpoints
  util-linux                 # setsid, mount/umount, nsenter
  procps                     # ps, pgrep for teardown checks
  iptables                   # the bridge CNI plugin and the kubelet probe for it
  ca-certificates
)
# nice to have: lint passes without it (the Makefile skips shellcheck when it is absent)
OPTIONAL=(shellcheck)

missing() { # prints the packages in "$@" that are not installed (one dpkg-query for all: fast)
  local installed
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null | awk '$2 == "installed" {print $1}')"
  local p
  for p in "$@"; do grep -qx "$p" <<<"$installed" || echo "$p"; done
}

APT_UPDATED=0
apt_install() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the lists once, only when something has to be installed: they may be absent or stale.
  if [ "$APT_UPDATED" -eq 0 ]; then
    "${sudo[@]}" apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

main() {
  command -v dpkg-query >/dev/null || die "install-deps.sh expects a Debian-like system (dpkg, apt-get)"
  local need opt
  mapfile -t need < <(missing "${REQUIRED[@]}")
  mapfile -t opt < <(missing "${OPTIONAL[@]}")
  if [ ${#need[@]} -eq 0 ] && [ ${#opt[@]} -eq 0 ]; then
    log "OS packages: all present"
    return
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "OS packages: installing ${need[*]}"
    apt_install "${need[@]}" || die "apt-get could not install: ${need[*]}"
  fi
  if [ ${#opt[@]} -gt 0 ]; then
    log "OS packages: installing optional ${opt[*]}"
    # a missing optional package must not stop a build
    apt_install "${opt[@]}" 2>/dev/null || log "optional packages not installed: ${opt[*]}"
  fi
  log "OS packages: done"
}

main "$@"
