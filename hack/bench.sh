#!/usr/bin/env bash
# Benchmarks of kwarm against the tools users pick instead, on the running local cluster
# (`make cluster-up`; this script never starts or stops it). Writes bench/sections/SECTION.md
# (+ .json with the raw numbers) per section and merges them into bench/RESULTS.md.
#
# Usage: hack/bench.sh [SECTION...]       (`make bench` runs all; ~30-45 min)
#   holder     holder binary size, RSS and SIGTERM-to-exit on the real node, kwarm vs the puller's sleep
#   image      bytes a node pulls for the init image
#   warmup     time until M images are held on N KWOK nodes, objects, API requests: kwarm and the
#              real peers side by side (kubernetes-image-puller, the kwarm seed, kube-fledged)
#   reaction   Deployment change -> DaemonSet updated (p50/p99), -> image in containerd vs ctr pull
#   footprint  manager RSS/CPU with 1,000 and 10,000 watched Deployments, kwarm vs the seed, idle writes, profile
#   gate       N KWOK nodes joining with the node gate taint: join -> released p50/p99, writes, CPU
#   refresh    20 mutable tags refreshed: the puller's delete-and-recreate vs kwarm's digest-aware
#              roll: seconds some node held no holder, registry requests and bytes (no change, 1 changed)
# Settings (environment):
#   BENCH_NODES="100 500 1000"   KWOK node counts for warmup      BENCH_IMAGES=20  images held
#   BENCH_PULLER_NODES=BENCH_NODES  BENCH_SEED_NODES="100"  BENCH_FLEDGED_NODES="100"
#                                the BENCH_NODES sizes at which each peer runs in warmup (the seed
#                                and kube-fledged run M x N Jobs: tens of minutes at 500+ nodes)
#   BENCH_PEER_TIMEOUT=1800      seconds a peer's warm-up may take   BENCH_WARMUP_TIMEOUT=900 kwarm's
#   BENCH_REACTION_SAMPLES=200   Deployment changes               BENCH_PULL_SAMPLES=6 per size
#   BENCH_DEPLOYMENTS="1000 10000"                                BENCH_IDLE=600   idle window (s)
#   BENCH_HOLDER_SAMPLES=20      holders of each kind             BENCH_PROFILE=1  perf the 10k sync
#   BENCH_GATE_NODES="1000"      KWOK node counts joining gated
# Everything it creates is its own: namespaces kwarm-bench-*, fake nodes bench-node-*, images
# 127.0.0.1:5000/kwarm-bench/*; built tools go to the cache (~/.cache/kwarm/bench), logs to
# _output/bench. The peers (warmup, refresh) are built by hack/peers.sh from their source archives
# (KWARM_PEERS_DIR); a peer without an archive or whose build failed is reported not run, with why.
# The peers' own names are theirs: namespaces kwarm-system (the seed's Jobs) and kube-fledged, their
# CRDs (removed at the end of warmup).
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

ALL_SECTIONS=(holder image warmup reaction footprint gate refresh)
BENCH_CACHE="$CACHE_DIR/bench"
SECTIONS_DIR="$ROOT_DIR/bench/sections"
RESULTS="$ROOT_DIR/bench/RESULTS.md"
PULL_SIZES=("4k:4096" "1m:1048576" "16m:16777216")
PEERS_DIR="${KWARM_PEERS_DIR:-$ROOT_DIR/../shared/peers}" # hack/peers.sh's default

go_version() { GOFLAGS='' go env GOVERSION; }

# kubernetes-image-puller's own holder (its sleep/sleep.go, built by hack/peers.sh as its Makefile
# does: -a -ldflags '-w -s'). Without the puller's source archive it stays unset and the holder and
# image sections say why they cannot compare.
puller_sleep() {
  local a commit
  PULLER_SLEEP_BIN="" PULLER_SLEEP_MISSING=""
  a="$(find "$PEERS_DIR" -maxdepth 1 -name 'che-kubernetes-image-puller-*.tar.gz' 2>/dev/null | sort | head -1)"
  if [ -z "$a" ]; then
    PULLER_SLEEP_MISSING="no che-kubernetes-image-puller-*.tar.gz in $PEERS_DIR (KWARM_PEERS_DIR)"
  else
    commit="$(basename "$a" .tar.gz)" commit="${commit##*-}"
    PULLER_SLEEP_BIN="$CACHE_DIR/peers/kubernetes-image-puller-$commit/bin/sleep"
    [ -x "$PULLER_SLEEP_BIN" ] || "$HACK_DIR/peers.sh" build >&2 || true
    if [ ! -x "$PULLER_SLEEP_BIN" ]; then
      PULLER_SLEEP_MISSING="the puller did not build (hack/peers.sh build; see its build.log)"
      PULLER_SLEEP_BIN=""
    fi
  fi
  export PULLER_SLEEP_BIN PULLER_SLEEP_MISSING
}

busybox_static() {
  if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    log "bench: installing busybox-static (the shell of the puller's init-contract image)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  fi
  echo /bin/busybox
}

# push_image REF DOCKERFILE-TEXT CONTEXT-DIR: build and push unless the registry has REF
push_image() {
  local ref="$1" text="$2" ctx="$3"
  if registry_has "$ref"; then return; fi
  printf '%s\n' "$text" >"$ctx/Dockerfile"
  IMAGE_CONTEXT="$ctx" "$HACK_DIR/image.sh" "$ctx/Dockerfile" "$ref" 2>&1 | sed 's/^/  /' >&2
}

bench_images() {
  local tmp tag sleep_sha
  tmp="$(mktemp -d)"
  # kwarm's holder image, tagged by the content of the binary measured here
  sleep_sha="$(sha256sum "$ROOT_DIR/_output/bin/sleep" | cut -c1-12)"
  KIP_IMAGE="$REGISTRY/kwarm-bench/sleep:$sleep_sha"
  # (docker/sleep.Dockerfile copies the binary of the platform it builds for: amd64 here)
  mkdir -p "$tmp/kip/_output/bin" && cp "$ROOT_DIR/_output/bin/sleep" "$tmp/kip/_output/bin/sleep-amd64"
  push_image "$KIP_IMAGE" "$(cat "$ROOT_DIR/docker/sleep.Dockerfile")" "$tmp/kip"
  # the puller's sleep alone, and the puller's init contract (its sleep + a shell with cp)
  PULLER_SLEEP_IMAGE="" PULLER_FLOOR_IMAGE=""
  if [ -n "$PULLER_SLEEP_BIN" ]; then
    tag="$(sha256sum "$PULLER_SLEEP_BIN" | cut -c1-12)"
    PULLER_SLEEP_IMAGE="$REGISTRY/kwarm-bench/puller-sleep:$tag"
    PULLER_FLOOR_IMAGE="$REGISTRY/kwarm-bench/puller-floor:$tag"
    mkdir -p "$tmp/go" "$tmp/floor/bin"
    cp "$PULLER_SLEEP_BIN" "$tmp/go/sleep"
    push_image "$PULLER_SLEEP_IMAGE" $'FROM scratch\nCOPY sleep /sleep\nUSER 65532:65532\nENTRYPOINT ["/sleep"]' "$tmp/go"
    if ! registry_has "$PULLER_FLOOR_IMAGE"; then
      cp "$PULLER_SLEEP_BIN" "$tmp/floor/bin/sleep"
      cp "$(busybox_static)" "$tmp/floor/bin/busybox"
      ln -s busybox "$tmp/floor/bin/sh"
      ln -s busybox "$tmp/floor/bin/cp"
      push_image "$PULLER_FLOOR_IMAGE" $'FROM scratch\nCOPY bin /bin\nUSER 65532:65532\nCMD ["/bin/sleep", "720h"]' "$tmp/floor"
    fi
  fi
  rm -rf "$tmp"
  # kwarm's manager image (the image section's reference size), tagged by the binary measured
  KWARM_IMAGE="$REGISTRY/kwarm-bench/kwarm:$(sha256sum "$ROOT_DIR/_output/bin/kwarm" | cut -c1-12)"
  if ! registry_has "$KWARM_IMAGE"; then
    "$HACK_DIR/image.sh" "$ROOT_DIR/docker/kwarm.Dockerfile" "$KWARM_IMAGE" 2>&1 | sed 's/^/  /' >&2
  fi
  export KIP_IMAGE PULLER_SLEEP_IMAGE PULLER_FLOOR_IMAGE KWARM_IMAGE
}

# Images the real node has never held: distinct random content per sample (no shared layers).
pull_images() {
  local n="${BENCH_PULL_SAMPLES:-6}" entry size bytes i ref tmp list=()
  for entry in "${PULL_SIZES[@]}"; do
    size="${entry%%:*}" bytes="${entry#*:}"
    for ((i = 0; i < n; i++)); do
      ref="$REGISTRY/kwarm-bench/pull-$size-$i:v1"
      list+=("$size=$ref")
      registry_has "$ref" && continue
      tmp="$(mktemp -d)"
      head -c "$bytes" < <(openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:kwarm-bench-$size-$i" </dev/zero 2>/dev/null) >"$tmp/blob"
      push_image "$ref" $'FROM scratch\nCOPY blob /data/blob' "$tmp"
      rm -rf "$tmp"
    done
  done
  PULL_IMAGES="${list[*]}"
  export PULL_IMAGES
}

# the peers' source archives by name and commit (what hack/peers.sh builds), or that there are none
peers_line() {
  local f list=()
  for f in "$PEERS_DIR"/*.tar.gz; do
    [ -f "$f" ] && list+=("$(basename "$f" .tar.gz)")
  done
  if [ ${#list[@]} -eq 0 ]; then
    echo "no source archives in KWARM_PEERS_DIR: not run"
  else
    echo "built from their source archives by \`hack/peers.sh\`: ${list[*]}"
  fi
}

machine_header() {
  local rev dirty kube_ver ctr_ver
  rev="$(git -C "$ROOT_DIR" rev-parse --short HEAD)"
  dirty="$(git -C "$ROOT_DIR" status --porcelain -- src sleep Cargo.toml Cargo.lock | head -1)"
  kube_ver="$(kubectl_ version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo "?")"
  ctr_ver="$(ctr -a "$CONTAINERD_SOCK" version 2>/dev/null | awk '/Server:/{s=1} s&&/Version:/{print $2; exit}')"
  cat <<EOF
# kwarm benchmarks

Written by \`make bench\` (\`hack/bench.sh\`; one section: \`hack/bench.sh SECTION\`). Every
comparison in a table was measured in the same run on the same cluster; the machine is shared
and noisy, so read ratios, not absolute numbers. Raw numbers: \`bench/sections/*.json\`.

| | |
|---|---|
| assembled | $(date -u '+%Y-%m-%d %H:%M UTC') |
| machine | $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, Linux $(uname -r) |
| kwarm (at assembly; each section names the build it measured) | $rev${dirty:+ (+ uncommitted changes in src/)}, manager $(stat -c %s "$ROOT_DIR/_output/bin/kwarm") bytes, sleep $(stat -c %s "$ROOT_DIR/_output/bin/sleep") bytes |
| toolchains | $(rustc --version), $(go_version) |
| cluster | Kubernetes $kube_ver (kube-apiserver, controller-manager, scheduler, kubelet), containerd ${ctr_ver:-?}, etcd $ETCD_VERSION, KWOK $KWOK_VERSION (one real node + fake nodes) |
| tools | $(skopeo --version), $(buildah --version | cut -d' ' -f1-3), $(perf --version 2>/dev/null || echo "perf: none") |
| peers | $(peers_line) |

EOF
}

assemble() {
  {
    machine_header
    for s in "${ALL_SECTIONS[@]}"; do
      if [ -f "$SECTIONS_DIR/$s.md" ]; then
        cat "$SECTIONS_DIR/$s.md"
      else
        # shellcheck disable=SC2016 # the backquotes are Markdown
        printf '## %s\n\n_Not measured yet: `hack/bench.sh %s`._\n' "$s" "$s"
      fi
      echo
    done
  } >"$RESULTS.tmp"
  mv "$RESULTS.tmp" "$RESULTS"
  log "bench: wrote ${RESULTS#"$ROOT_DIR"/}"
}

main() {
  local sections=("$@") s t0
  [ ${#sections[@]} -gt 0 ] || sections=("${ALL_SECTIONS[@]}")
  for s in "${sections[@]}"; do
    case " ${ALL_SECTIONS[*]} assemble " in *" $s "*) ;; *) die "unknown section: $s (one of: ${ALL_SECTIONS[*]})" ;; esac
  done
  use_cached_tools
  export KUBECONFIG="$KUBECONFIG_PATH" KUBECTL="$KUBECTL_BIN" CONTAINERD_SOCK
  if [ "${sections[*]}" = assemble ]; then assemble; return; fi
  is_running kube-apiserver || die "the local cluster is not running: \`make cluster-up\` first (bench never starts or stops it)"
  for tool in skopeo ctr go python3 buildah; do command -v "$tool" >/dev/null || die "$tool is missing (hack/install-deps.sh)"; done
  python3 -c 'import yaml' 2>/dev/null || die "python3 yaml module missing (apt-get install python3-yaml)"
  mkdir -p "$BENCH_CACHE" "$ROOT_DIR/_output/bench"
  log "bench: building kwarm and sleep"
  "$HACK_DIR/build-kwarm.sh" >&2
  "$HACK_DIR/build-sleep.sh" >&2
  KWARM_BUILD="$(git -C "$ROOT_DIR" rev-parse --short HEAD)"
  if [ -n "$(git -C "$ROOT_DIR" status --porcelain -- src sleep Cargo.toml Cargo.lock | head -1)" ]; then
    KWARM_BUILD="$KWARM_BUILD + uncommitted changes in src/"
  fi
  KWARM_BUILD="$KWARM_BUILD, manager sha256 $(sha256sum "$ROOT_DIR/_output/bin/kwarm" | cut -c1-12)"
  export KWARM_BUILD
  puller_sleep
  bench_images
  # a symbolized build of the same source for perf (separate target dir; the release build is stripped)
  if [[ " ${sections[*]} " == *" footprint "* ]] && [ "${BENCH_PROFILE:-1}" = 1 ]; then
    log "bench: building a symbolized kwarm for profiling"
    (cd "$ROOT_DIR" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
      cargo build --release --locked --bin kwarm --target-dir "$BENCH_CACHE/target-profile" >&2)
    export KWARM_PROFILE_BIN="$BENCH_CACHE/target-profile/release/kwarm"
  fi
  [[ " ${sections[*]} " == *" reaction "* ]] && pull_images
  if [[ " ${sections[*]} " =~ \ (warmup|refresh|image|footprint|reaction)\  ]]; then
    # a peer that does not build is reported by the sections, with the end of its build log
    "$HACK_DIR/peers.sh" || log "bench: not every peer built; the sections say which and why"
  fi
  export KWARM_PEERS_DIR="$PEERS_DIR" KWARM_PEERS_CACHE="$CACHE_DIR/peers"
  for s in "${sections[@]}"; do
    t0=$SECONDS
    log "bench: section $s"
    python3 "$ROOT_DIR/bench/driver.py" "$s"
    log "bench: section $s done ($((SECONDS - t0))s)"
    assemble
  done
}

main "$@"
