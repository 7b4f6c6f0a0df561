#!/usr/bin/env bash
# Install the OS packages the local cluster, the image builds and the linters need.
# Idempotent and fast when everything is present: dpkg is asked first, apt-get runs only for what is
# missing (and `apt-get update` only then, because a fresh machine may have no package lists).
# Go and Rust come with the machine; the cluster's Go binaries are built by hack/build-bins.sh.
# Then the Python linters of `make lint` (kubernetes-validate, yamllint; versions in
# hack/versions.sh) go into a venv under the cache (LINT_VENV), made again only when it is absent
# or incomplete.
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
  python3-venv               # the venv of the Python linters (kubernetes-validate, yamllint)
  busybox-static             # a static /bin/sh for kubernetes-image-puller's image (hack/peers.sh)
  curl                       # health endpoints
  util-linux                 # setsid, mount/umount, nsenter
  procps                     # ps, pgrep for teardown checks
  iptables                   # the bridge CNI plugin and the kubelet probe for it
  ca-certificates
  # the aarch64 sleep holder (hack/build-sleep.sh): rustup here has no aarch64 target, so core is
  # built from source with Debian's Rust (pinned in hack/versions.sh) and tested under qemu
  rustc-web                  # rustc-web: builds core and the holder for aarch64 (-Zbuild-std)
  cargo-web                  # cargo-web: drives that build
  rust-web-src               # the library source matching rustc-web, for -Zbuild-std
  qemu-user                  # qemu-aarch64: runs the aarch64 holder's tests on this x86_64 host
)
# nice to have: lint passes without it (the Makefile skips shellcheck when it is absent)
OPTIONAL=(shellcheck)

# Prints the packages in "$@" that are not installed, one per line. dpkg-query exits 1 when some
# package is unknown to dpkg (the usual case on a fresh machine): that is an answer, not an error.
# Any other failure (no dpkg database, a crash) stops here: better than reporting "all present"
# and failing twenty minutes later.
missing() {
  local status=0 out p
  out="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null)" || status=$?
  [ "$status" -le 1 ] || die "dpkg-query failed (exit $status) while checking: $*"
  for p in "$@"; do
    awk -v p="$p" '$1 == p && $2 == "installed" {found = 1} END {exit !found}' <<<"$out" || echo "$p"
  done
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

# The interpreter of the linters' venv: Debian's python3, which python3-venv completes.
LINT_PYTHON="${LINT_PYTHON:-/usr/bin/python3}"
LINT_PACKAGES=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION")

# The venv is complete once pip finished (.complete); a venv cannot be moved, so it is made in place.
lint_tools_present() {
  [ -f "$LINT_VENV/.complete" ] && [ -x "$LINT_VENV/bin/kubernetes-validate" ] && [ -x "$LINT_VENV/bin/yamllint" ]
}

install_lint_tools() {
  if lint_tools_present; then
    log "lint tools: present ($LINT_VENV)"
    return
  fi
  log "lint tools: installing ${LINT_PACKAGES[*]} into $LINT_VENV"
  rm -rf "$LINT_VENV"
  mkdir -p "$(dirname "$LINT_VENV")"
  "$LINT_PYTHON" -m venv "$LINT_VENV" || { rm -rf "$LINT_VENV"; die "$LINT_PYTHON -m venv failed (python3-venv)"; }
  "$LINT_VENV/bin/pip" install --quiet --disable-pip-version-check "${LINT_PACKAGES[@]}" ||
    { rm -rf "$LINT_VENV"; die "pip could not install ${LINT_PACKAGES[*]}"; }
  [ -x "$LINT_VENV/bin/kubernetes-validate" ] && [ -x "$LINT_VENV/bin/yamllint" ] ||
    { rm -rf "$LINT_VENV"; die "pip installed ${LINT_PACKAGES[*]} but $LINT_VENV/bin lacks them"; }
  touch "$LINT_VENV/.complete"
  log "lint tools: done"
}

usage() {
  cat <<EOF
Usage: hack/install-deps.sh [--check]
  (none)   install the missing OS packages with apt-get, then check with dpkg that all are there;
           then the Python linters (a venv under the cache) when they are missing
  --check  only report the missing packages and linters; exit 1 when a required one is missing
EOF
}

main() {
  local mode=install
  case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    -h | --help) usage; return 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  command -v dpkg-query >/dev/null || die "install-deps.sh expects a Debian-like system (dpkg, apt-get)"
  local need opt
  lines need missing "${REQUIRED[@]}"
  lines opt missing "${OPTIONAL[@]}"
  if [ "$mode" = check ]; then
    local ok=0
    [ ${#need[@]} -eq 0 ] || { log "OS packages missing: ${need[*]}"; ok=1; }
    [ ${#opt[@]} -eq 0 ] || log "optional OS packages missing: ${opt[*]}"
    [ ${#need[@]} -gt 0 ] || [ ${#opt[@]} -gt 0 ] || log "OS packages: all present"
    lint_tools_present || { log "lint tools missing: ${LINT_PACKAGES[*]} in $LINT_VENV"; ok=1; }
    return "$ok"
  fi
  install_os_packages
  install_lint_tools
}

# (need and opt: the missing packages main found)
install_os_packages() {
  if [ ${#need[@]} -eq 0 ] && [ ${#opt[@]} -eq 0 ]; then
    log "OS packages: all present"
    return
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "OS packages: installing ${need[*]}"
    apt_install "${need[@]}" || die "apt-get could not install: ${need[*]}"
    # dpkg has the last word, not apt-get's exit code: anything still missing stops here
    local still
    lines still missing "${need[@]}"
    [ ${#still[@]} -eq 0 ] || die "still not installed after apt-get install: ${still[*]}"
  fi
  if [ ${#opt[@]} -gt 0 ]; then
    log "OS packages: installing optional ${opt[*]}"
    # a missing optional package must not stop a build
    apt_install "${opt[@]}" 2>/dev/null || log "optional packages not installed: ${opt[*]}"
  fi
  log "OS packages: done"
}

main "$@"
