#!/usr/bin/env bash
# Tests of the hack/ scripts themselves, with fake system tools on PATH (no root, no network, no
# package is really installed), and of the Helm chart's values schema (chart.sh). Part of
# `make unit`. Prints one line per test and "N passed, N failed".
#   hack/tests/run.sh [NAME-FILTER]
set -uo pipefail
HACK_DIR="$(cd "$(dirname "$0")/.." && pwd)"
FILTER="${1:-}"
PASSED=0
FAILED=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- fakes ----------------------------------------------------------------------------------------
# dpkg-query: every package is installed except those listed in $FAKE/missing; like the real one,
# an unknown package is reported on stderr and makes the exit status 1. $FAKE/dpkg-status forces
# another exit status (a broken dpkg database).
# apt-get: logs its arguments to $FAKE/apt.log; `install` removes the named packages from
# $FAKE/missing, except those listed in $FAKE/broken (apt-get says yes, dpkg says no).
# python3 (LINT_PYTHON): `-m venv DIR` makes DIR/bin/pip, which logs its arguments to $FAKE/pip.log
# and "installs" kubernetes-validate and yamllint into DIR/bin, or fails when $FAKE/pip-fails
# exists. The cache (KWARM_CACHE_DIR) is $FAKE/cache; its linters' venv (FAKE_VENV) is complete
# unless make_fakes is given no-venv.
make_fakes() {
  FAKE="$WORK/$1"
  mkdir -p "$FAKE/bin"
  : >"$FAKE/missing"
  : >"$FAKE/broken"
  : >"$FAKE/apt.log"
  cat >"$FAKE/bin/dpkg-query" <<EOF
#!/usr/bin/env bash
if [ -s "$FAKE/dpkg-status" ]; then echo "dpkg-query: database is broken" >&2; exit "\$(cat "$FAKE/dpkg-status")"; fi
status=0
for a in "\$@"; do
  case "\$a" in -*) continue ;; esac
  if grep -qx -- "\$a" "$FAKE/missing"; then
    echo "dpkg-query: no packages found matching \$a" >&2; status=1
  else
    echo "\$a installed"
  fi
done
exit \$status
EOF
  cat >"$FAKE/bin/apt-get" <<EOF
#!/usr/bin/env bash
echo "\$*" >>"$FAKE/apt.log"
[ "\$1" = install ] || exit 0
for a in "\$@"; do
  case "\$a" in -* | install) continue ;; esac
  grep -qx -- "\$a" "$FAKE/broken" && continue
  grep -vx -- "\$a" "$FAKE/missing" >"$FAKE/missing.new"; mv "$FAKE/missing.new" "$FAKE/missing"
done
EOF
  printf '#!/usr/bin/env bash\nexec "$@"\n' >"$FAKE/bin/sudo"
  cat >"$FAKE/bin/pip" <<EOF
#!/usr/bin/env bash
echo "\$*" >>"$FAKE/pip.log"
[ ! -e "$FAKE/pip-fails" ] || exit 1
bin="\$(dirname "\$0")"
for t in kubernetes-validate yamllint; do printf '#!/bin/sh\n' >"\$bin/\$t"; chmod +x "\$bin/\$t"; done
EOF
  cat >"$FAKE/bin/python3" <<EOF
#!/usr/bin/env bash
[ "\$1 \$2" = "-m venv" ] || exit 2
mkdir -p "\$3/bin" && cp "$FAKE/bin/pip" "\$3/bin/pip"
EOF
  chmod +x "$FAKE/bin/"*
  FAKE_VENV="$(KWARM_CACHE_DIR="$FAKE/cache" bash -c '. "$1/lib.sh"; echo "$LINT_VENV"' _ "$HACK_DIR")"
  if [ "${2:-}" != no-venv ]; then
    mkdir -p "$FAKE_VENV/bin"
    cp "$FAKE/bin/pip" "$FAKE_VENV/bin/pip"
    for t in kubernetes-validate yamllint; do printf '#!/bin/sh\n' >"$FAKE_VENV/bin/$t"; done
    chmod +x "$FAKE_VENV/bin/"*
    touch "$FAKE_VENV/.complete"
  fi
}

# install-deps ARGS... : runs hack/install-deps.sh with the fakes first on PATH; sets OUT and STATUS
install_deps() {
  STATUS=0
  OUT="$(PATH="$FAKE/bin:$PATH" KWARM_CACHE_DIR="$FAKE/cache" LINT_PYTHON="$FAKE/bin/python3" \
    "$HACK_DIR/install-deps.sh" "$@" 2>&1)" || STATUS=$?
}

# --- assertions -----------------------------------------------------------------------------------
fail() { printf '    %s\n' "$@"; return 1; }
expect_status() { [ "$STATUS" -eq "$1" ] || fail "exit status $STATUS, expected $1" "output: $OUT"; }
expect_output() { grep -qF -- "$1" <<<"$OUT" || fail "output lacks: $1" "output: $OUT"; }
expect_apt() { grep -qE -- "$1" "$FAKE/apt.log" || fail "apt-get was not called with /$1/" "calls: $(cat "$FAKE/apt.log")"; }
expect_no_apt() { [ ! -s "$FAKE/apt.log" ] || fail "apt-get was called: $(cat "$FAKE/apt.log")"; }

# --- tests ----------------------------------------------------------------------------------------
test_all_present_installs_nothing() {
  make_fakes all-present
  install_deps
  expect_status 0 && expect_output "OS packages: all present" && expect_no_apt
}

test_missing_package_is_installed() {
  make_fakes missing
  printf 'containerd\nshellcheck\n' >"$FAKE/missing"
  install_deps
  expect_status 0 &&
    expect_output "installing containerd" &&
    expect_apt '^update' &&
    expect_apt '^install .*containerd' &&
    expect_apt '^install .*shellcheck' &&
    { [ ! -s "$FAKE/missing" ] || fail "still missing: $(cat "$FAKE/missing")"; }
}

test_check_reports_missing_and_fails() {
  make_fakes check
  echo docker-registry >"$FAKE/missing"
  install_deps --check
  expect_status 1 && expect_output "OS packages missing: docker-registry" && expect_no_apt
}

test_check_optional_missing_passes() {
  make_fakes check-optional
  echo shellcheck >"$FAKE/missing"
  install_deps --check
  expect_status 0 && expect_output "optional OS packages missing: shellcheck" && expect_no_apt
}

test_install_that_did_not_install_fails() {
  make_fakes broken
  echo runc >"$FAKE/missing"
  echo runc >"$FAKE/broken"
  install_deps
  [ "$STATUS" -ne 0 ] || fail "exit status 0 although runc is still missing" "output: $OUT"
  expect_output "still not installed after apt-get install: runc"
}

test_broken_dpkg_stops() {
  make_fakes broken-dpkg
  echo 2 >"$FAKE/dpkg-status"
  install_deps
  [ "$STATUS" -ne 0 ] || fail "exit status 0 although dpkg-query failed" "output: $OUT"
  expect_output "dpkg-query failed (exit 2)" && expect_no_apt
}

test_missing_aarch64_toolchain_is_installed() {
  make_fakes aarch64-missing
  printf 'rustc-web\ncargo-web\nrust-web-src\nqemu-user\n' >"$FAKE/missing"
  install_deps
  expect_status 0 &&
    expect_output "installing rustc-web cargo-web rust-web-src qemu-user" &&
    expect_apt '^install .*rustc-web .*cargo-web .*rust-web-src .*qemu-user' &&
    { [ ! -s "$FAKE/missing" ] || fail "still missing: $(cat "$FAKE/missing")"; }
}

test_aarch64_toolchain_that_did_not_install_fails() {
  make_fakes aarch64-broken
  echo rust-web-src >"$FAKE/missing"
  echo rust-web-src >"$FAKE/broken"
  install_deps
  [ "$STATUS" -ne 0 ] || fail "exit status 0 although rust-web-src is still missing" "output: $OUT"
  expect_output "still not installed after apt-get install: rust-web-src"
}

test_missing_lint_tools_are_installed() {
  make_fakes lint-missing no-venv
  install_deps
  local pins
  pins="$(. "$HACK_DIR/versions.sh" && echo "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION")"
  expect_status 0 && expect_output "lint tools: installing" && expect_no_apt &&
    { grep -qF -- "$pins" "$FAKE/pip.log" || fail "pip was not asked for $pins: $(cat "$FAKE/pip.log" 2>&1)"; } &&
    { [ -f "$FAKE_VENV/.complete" ] && [ -x "$FAKE_VENV/bin/kubernetes-validate" ] || fail "no complete venv at $FAKE_VENV"; }
}

test_present_lint_tools_are_kept() {
  make_fakes lint-present
  install_deps
  expect_status 0 && expect_output "lint tools: present" &&
    { [ ! -e "$FAKE/pip.log" ] || fail "pip ran: $(cat "$FAKE/pip.log")"; }
}

test_incomplete_lint_venv_is_made_again() {
  make_fakes lint-incomplete
  rm "$FAKE_VENV/.complete"
  install_deps
  expect_status 0 && expect_output "lint tools: installing" &&
    { [ -f "$FAKE_VENV/.complete" ] || fail "the venv is still incomplete"; }
}

test_failed_lint_install_fails_and_leaves_no_venv() {
  make_fakes lint-broken no-venv
  touch "$FAKE/pip-fails"
  install_deps
  [ "$STATUS" -ne 0 ] || fail "exit status 0 although pip failed" "output: $OUT"
  expect_output "pip could not install kubernetes-validate==" &&
    { [ ! -e "$FAKE_VENV" ] || fail "a broken venv was left at $FAKE_VENV"; }
}

test_check_reports_missing_lint_tools() {
  make_fakes lint-check no-venv
  install_deps --check
  expect_status 1 && expect_output "lint tools missing: kubernetes-validate==" &&
    { [ ! -e "$FAKE/pip.log" ] || fail "--check ran pip"; }
}

# build-sleep ARGS... : runs hack/build-sleep.sh with the fake aarch64 rustc and cargo of
# make_fake_rustc; sets OUT and STATUS
build_sleep() {
  STATUS=0
  OUT="$(SLEEP_AARCH64_RUSTC="$FAKE/bin/rustc" SLEEP_AARCH64_CARGO="$FAKE/bin/cargo" "$HACK_DIR/build-sleep.sh" "$@" 2>&1)" || STATUS=$?
}

# make_fake_rustc NAME: a rustc that prints $FAKE/version and has its library source in
# $FAKE/sysroot, and a cargo that must not be reached
make_fake_rustc() {
  make_fakes "$1"
  mkdir -p "$FAKE/sysroot/lib/rustlib/src/rust/library/core"
  touch "$FAKE/sysroot/lib/rustlib/src/rust/library/core/Cargo.toml"
  cat >"$FAKE/bin/rustc" <<EOF
#!/usr/bin/env bash
case "\$1" in --version) cat "$FAKE/version" ;; --print) echo "$FAKE/sysroot" ;; esac
EOF
  printf '#!/usr/bin/env bash\necho "fake cargo must not run" >&2; exit 3\n' >"$FAKE/bin/cargo"
  chmod +x "$FAKE/bin/rustc" "$FAKE/bin/cargo"
}

pinned_rust() { (. "$HACK_DIR/versions.sh" && echo "$SLEEP_AARCH64_RUST_VERSION"); }

test_aarch64_sleep_needs_the_pinned_rustc() {
  make_fake_rustc aarch64-version
  echo "rustc 1.85.0 (4d91de4e4 2025-02-17) (built from a source tarball)" >"$FAKE/version"
  build_sleep arm64
  [ "$STATUS" -ne 0 ] || fail "exit status 0 with the wrong rustc" "output: $OUT"
  expect_output "the aarch64 sleep is built with rustc $(pinned_rust)" && expect_output "is: rustc 1.85.0"
}

test_aarch64_sleep_needs_the_library_source() {
  make_fake_rustc aarch64-source
  echo "rustc $(pinned_rust) (ac68faa20 2026-05-25)" >"$FAKE/version"
  rm -r "$FAKE/sysroot/lib/rustlib/src"
  build_sleep arm64
  [ "$STATUS" -ne 0 ] || fail "exit status 0 without the library source" "output: $OUT"
  expect_output "no Rust library source at" && expect_output "rust-web-src"
}

test_aarch64_sleep_without_rustc_web_says_how_to_fix() {
  make_fakes aarch64-absent
  STATUS=0
  OUT="$(SLEEP_AARCH64_RUSTC="$FAKE/none/rustc" "$HACK_DIR/build-sleep.sh" arm64 2>&1)" || STATUS=$?
  [ "$STATUS" -ne 0 ] || fail "exit status 0 without an aarch64 rustc" "output: $OUT"
  expect_output "run hack/install-deps.sh"
}

test_lines_propagates_failure() {
  local out status=0
  out="$(
    # shellcheck source=hack/lib.sh
    . "$HACK_DIR/lib.sh"
    producer() { echo partial; false; }
    local -a got=()
    lines got producer || { echo "failed as it should"; exit 0; }
    echo "no failure, got ${#got[@]} lines"
  )" || status=$?
  [ "$status" -eq 0 ] && [ "$out" = "failed as it should" ] || fail "lines with a failing producer: $out (status $status)"
}

test_lines_splits_output() {
  local out
  out="$(
    # shellcheck source=hack/lib.sh
    . "$HACK_DIR/lib.sh"
    local -a two=() none=(x)
    lines two printf 'a b\nc\n'
    lines none true
    echo "${#two[@]} ${two[0]}|${two[1]} ${#none[@]}"
  )"
  [ "$out" = "2 a b|c 0" ] || fail "got: $out"
}

test_cluster_restart_names_its_components() {
  STATUS=0
  OUT="$(KWARM_CLUSTER_DIR="$WORK/no-cluster" "$HACK_DIR/cluster-restart.sh" 2>&1)" || STATUS=$?
  expect_status 1 && expect_output "usage: hack/cluster-restart.sh COMPONENT (one of: etcd kube-apiserver" || return
  STATUS=0
  OUT="$(KWARM_CLUSTER_DIR="$WORK/no-cluster" "$HACK_DIR/cluster-restart.sh" kube-proxy 2>&1)" || STATUS=$?
  expect_status 1 && expect_output "unknown component: kube-proxy"
}

test_cluster_up_runs_nothing_when_sourced() {
  local out
  # $0 in hack/, as for hack/cluster-restart.sh, which sources it
  # shellcheck disable=SC2016 # expanded by the inner bash
  out="$(KWARM_CLUSTER_DIR="$WORK/no-cluster" bash -c '. "$1/cluster-up.sh"
    declare -F start_etcd start_apiserver start_containerd start_kubelet | tr "\n" " "' \
    "$HACK_DIR/cluster-restart.sh" "$HACK_DIR" 2>&1)"
  [ "$out" = "start_etcd start_apiserver start_containerd start_kubelet " ] || fail "got: $out" || return
  [ ! -e "$WORK/no-cluster" ] || fail "sourcing cluster-up.sh created $WORK/no-cluster"
}

# shellcheck source=hack/tests/chart.sh
. "$HACK_DIR/tests/chart.sh"

for t in $(declare -F | awk '$3 ~ /^test_/ {print $3}'); do
  [ -z "$FILTER" ] || [[ "$t" == *"$FILTER"* ]] || continue
  if ( "$t" ); then
    echo "ok   ${t#test_}"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL ${t#test_}"
    FAILED=$((FAILED + 1))
  fi
done
echo "hack tests: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
