#!/usr/bin/env bash
# The peers kwarm replaces, built from their source archives for compatibility tests and benchmarks
# (never copied into kwarm). Binaries are cached by commit under the cache; images go to the local
# registry under the names the peers' own files use (the real node's containerd serves quay.io from
# it, see MIRRORED_REGISTRIES in hack/cluster-up.sh).
# Usage: hack/peers.sh [build|images]      (default: both)
#   KWARM_PEERS_DIR   the archives (default: ../shared/peers beside the checkout)
# Without an archive it says so and goes on (exit 0): the tests and benchmarks that need that peer
# report it not run. A failed build leaves its output in the peer's cache folder (build.log, which
# the benchmarks quote), goes on with the other peers and exits 1 at the end.
#
# kubernetes-image-puller (che): its binary and its sleep, built as its Makefile does
# (go build -mod=vendor); one image for the manager and for KIP_IMAGE, as its chart uses it, pushed
# as 127.0.0.1:5000/eclipse/kubernetes-image-puller:next. What differs from its Dockerfile: FROM
# scratch with a static busybox as /bin/sh (its init contract is `/bin/sh -c "cp /bin/sleep ..."`)
# instead of ubi9-minimal (no registry reachable here), and no CA bundle (in-cluster it uses the
# service account's CA). Its /etc/passwd user appuser (65532) and its file layout are kept.
#
# kwarm seed (bcfmtolgahan/kwarm): its manager, built as its README does (go mod download, go build
# ./cmd/main.go); its CRDs stay in the extracted source (src/config/crd/bases). No image: the
# benchmarks run it out of cluster.
#
# kube-fledged: its controller, built as its Makefile does (go build -ldflags '-s -w'
# ./cmd/controller); its CRD stays in src/deploy. Its Jobs' init image BUSYBOX_IMAGE (`cp /bin/echo`)
# is a static busybox as /bin/echo, /bin/cp and /bin/sh, pushed as
# 127.0.0.1:5000/senthilrch/busybox:1.35.0 (the name its deployment uses). Its purge image
# (cri-client) is not built: its Dockerfile downloads prebuilt binaries, and pulls do not need it.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

PEERS_DIR="${KWARM_PEERS_DIR:-$ROOT_DIR/../shared/peers}"
PULLER_IMAGE="$REGISTRY/eclipse/kubernetes-image-puller:next"
FLEDGED_BUSYBOX_IMAGE="$REGISTRY/senthilrch/busybox:1.35.0"

# archive NAME-PREFIX -> path of the peer's source archive (empty when absent)
archive() {
  local f
  for f in "$PEERS_DIR/$1"-*.tar.gz; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 0
}

# the commit in an archive's name (che-kubernetes-image-puller-8a5a530.tar.gz -> 8a5a530)
archive_commit() { local b; b="$(basename "$1" .tar.gz)"; echo "${b##*-}"; }

peer_dir() { echo "$CACHE_DIR/peers/$1-$2"; } # NAME COMMIT
puller_dir() { peer_dir kubernetes-image-puller "$1"; }

# build_peer NAME ARCHIVE-PREFIX BUILD-FUNCTION BINARY...: unless every BINARY is in the cache
# folder of the archive's commit, extract the source to DIR/src and run BUILD-FUNCTION DIR/bin
# there; it writes each BINARY as BINARY.tmp. Its output goes to DIR/build.log.
build_peer() {
  local name="$1" prefix="$2" fn="$3" a commit dir b t0 missing=""
  shift 3
  a="$(archive "$prefix")"
  [ -n "$a" ] || { log "peers: no $prefix-*.tar.gz in $PEERS_DIR: skipping $name"; return 0; }
  commit="$(archive_commit "$a")"
  dir="$(peer_dir "$name" "$commit")"
  for b in "$@"; do [ -x "$dir/bin/$b" ] || missing=1; done
  if [ -z "$missing" ]; then
    log "peers: $name $commit: cached"
    return 0
  fi
  log "peers: $name $commit: building (log: $dir/build.log)"
  rm -rf "$dir/src" "$dir/build.log"
  mkdir -p "$dir/src" "$dir/bin"
  tar -xzf "$a" -C "$dir/src"
  t0=$SECONDS
  # `if !` turns errexit off inside: the build functions chain their steps with &&
  if ! (cd "$dir/src" && "$fn" "$dir/bin") >"$dir/build.log" 2>&1; then
    log "peers: $name $commit: build failed after $((SECONDS - t0)) s; the end of $dir/build.log:"
    tail -n 5 "$dir/build.log" | sed 's/^/  /' >&2
    return 1
  fi
  for b in "$@"; do mv "$dir/bin/$b.tmp" "$dir/bin/$b"; done
  echo "built in $((SECONDS - t0)) s" >>"$dir/build.log"
  log "peers: $name $commit: built in $((SECONDS - t0)) s"
}

# The builds run in the extracted source; $1 is the bin folder. GOFLAGS='': the peers' own flags
# only (lib.sh's -trimpath is passed explicitly); GOTOOLCHAIN=local (lib.sh): no toolchain download.
puller_build() {
  GOFLAGS='' go build -mod=vendor -trimpath -o "$1/kubernetes-image-puller.tmp" ./cmd/main.go &&
    GOFLAGS='' go build -mod=vendor -trimpath -a -ldflags '-w -s' -o "$1/sleep.tmp" ./sleep/sleep.go
}

seed_build() {
  GOFLAGS='' go mod download && GOFLAGS='' go build -trimpath -o "$1/manager.tmp" ./cmd/main.go
}

fledged_build() {
  GOFLAGS='' go mod download &&
    GOFLAGS='' go build -trimpath -ldflags '-s -w' -o "$1/kubefledged-controller.tmp" ./cmd/controller
}

build_all() {
  local failed=()
  build_peer kubernetes-image-puller che-kubernetes-image-puller puller_build kubernetes-image-puller sleep ||
    failed+=(kubernetes-image-puller)
  build_peer kwarm-seed kwarm-seed seed_build manager || failed+=(kwarm-seed)
  build_peer kube-fledged kube-fledged fledged_build kubefledged-controller || failed+=(kube-fledged)
  [ ${#failed[@]} -eq 0 ] || { log "peers: build failed: ${failed[*]}"; return 1; }
}

image_puller() {
  local a commit dir ctx
  a="$(archive che-kubernetes-image-puller)"
  [ -n "$a" ] || return 0
  commit="$(archive_commit "$a")"
  dir="$(puller_dir "$commit")"
  [ -x "$dir/bin/kubernetes-image-puller" ] || die "peers: the puller is not built: run hack/peers.sh build"
  # the tag is the puller's own; the label says which build it is, so a new archive rebuilds
  if [ "$(registry_label "eclipse/kubernetes-image-puller" next kwarm.peer.commit)" = "$commit" ]; then
    log "peers: image $PULLER_IMAGE ($commit): present"
    return 0
  fi
  [ -x /bin/busybox ] || die "peers: /bin/busybox is missing: run hack/install-deps.sh (busybox-static)"
  ctx="$(mktemp -d)"
  cp "$dir/bin/kubernetes-image-puller" "$dir/bin/sleep" /bin/busybox "$ctx/"
  printf 'root:x:0:0:root:/:/bin/sh\nappuser:x:65532:65532::/:/bin/sh\n' >"$ctx/passwd"
  cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY passwd /etc/passwd
COPY busybox /bin/sh
COPY busybox /bin/cp
COPY sleep /bin/sleep
COPY kubernetes-image-puller /kubernetes-image-puller
LABEL kwarm.peer.commit=$commit
USER 65532
CMD ["/kubernetes-image-puller"]
EOF
  IMAGE_CONTEXT="$ctx" "$HACK_DIR/image.sh" "$ctx/Dockerfile" "$PULLER_IMAGE"
  rm -rf "$ctx"
}

# kube-fledged's BUSYBOX_IMAGE, labelled with the busybox it holds (a new busybox rebuilds it)
image_fledged_busybox() {
  local sum ctx
  [ -n "$(archive kube-fledged)" ] || return 0
  [ -x /bin/busybox ] || die "peers: /bin/busybox is missing: run hack/install-deps.sh (busybox-static)"
  sum="$(sha256sum /bin/busybox | cut -c1-12)"
  if [ "$(registry_label senthilrch/busybox 1.35.0 kwarm.busybox.sha256)" = "$sum" ]; then
    log "peers: image $FLEDGED_BUSYBOX_IMAGE (busybox $sum): present"
    return 0
  fi
  ctx="$(mktemp -d)"
  cp /bin/busybox "$ctx/"
  cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/sh
COPY busybox /bin/cp
COPY busybox /bin/echo
LABEL kwarm.busybox.sha256=$sum
EOF
  IMAGE_CONTEXT="$ctx" "$HACK_DIR/image.sh" "$ctx/Dockerfile" "$FLEDGED_BUSYBOX_IMAGE"
  rm -rf "$ctx"
}

# registry_label REPO TAG LABEL -> the label's value in the local registry's image (empty if none)
registry_label() {
  local manifest config
  manifest="$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/$1/manifests/$2" 2>/dev/null)" || return 0
  config="$(jq -r '.config.digest // empty' <<<"$manifest")"
  [ -n "$config" ] || return 0
  curl -fsS "http://$REGISTRY/v2/$1/blobs/$config" 2>/dev/null | jq -r --arg l "$3" '.config.Labels[$l] // empty'
}

main() {
  local what="${1:-all}" status=0
  case "$what" in
    build) build_all ;;
    images) image_puller; image_fledged_busybox ;;
    all) build_all || status=1; image_puller; image_fledged_busybox; return "$status" ;;
    *) die "usage: hack/peers.sh [build|images]" ;;
  esac
}

main "$@"
