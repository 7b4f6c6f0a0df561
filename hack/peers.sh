#!/usr/bin/env bash
# The peers kwarm replaces, built from their source archives for compatibility tests and benchmarks
# (never copied into kwarm). Binaries are cached by commit under the cache; images go to the local
# registry under the names the peers' own files use (the real node's containerd serves quay.io from
# it, see MIRRORED_REGISTRIES in hack/cluster-up.sh).
# Usage: hack/peers.sh [build|images]      (default: both)
#   KWARM_PEERS_DIR   the archives (default: ../shared/peers beside the checkout)
# Without the archives it says so and exits 0: the tests that need them report themselves skipped.
#
# kubernetes-image-puller (che): its binary and its sleep, built as its Makefile does
# (go build -mod=vendor); one image for the manager and for KIP_IMAGE, as its chart uses it, pushed
# as 127.0.0.1:5000/eclipse/kubernetes-image-puller:next. What differs from its Dockerfile: FROM
# scratch with a static busybox as /bin/sh (its init contract is `/bin/sh -c "cp /bin/sleep ..."`)
# instead of ubi9-minimal (no registry reachable here), and no CA bundle (in-cluster it uses the
# service account's CA). Its /etc/passwd user appuser (65532) and its file layout are kept.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

PEERS_DIR="${KWARM_PEERS_DIR:-$ROOT_DIR/../shared/peers}"
PULLER_IMAGE="$REGISTRY/eclipse/kubernetes-image-puller:next"

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

puller_dir() { echo "$CACHE_DIR/peers/kubernetes-image-puller-$1"; }

build_puller() {
  local a commit dir
  a="$(archive che-kubernetes-image-puller)"
  [ -n "$a" ] || { log "peers: no che-kubernetes-image-puller-*.tar.gz in $PEERS_DIR: skipping the puller"; return 0; }
  commit="$(archive_commit "$a")"
  dir="$(puller_dir "$commit")"
  if [ -x "$dir/bin/kubernetes-image-puller" ] && [ -x "$dir/bin/sleep" ]; then
    log "peers: kubernetes-image-puller $commit: cached"
    return 0
  fi
  log "peers: kubernetes-image-puller $commit: building (cold: ~4 min)"
  rm -rf "$dir/src"
  mkdir -p "$dir/src" "$dir/bin"
  tar -xzf "$a" -C "$dir/src"
  (
    cd "$dir/src"
    GOFLAGS='' go build -mod=vendor -trimpath -o "$dir/bin/kubernetes-image-puller.tmp" ./cmd/main.go
    GOFLAGS='' go build -mod=vendor -trimpath -a -ldflags '-w -s' -o "$dir/bin/sleep.tmp" ./sleep/sleep.go
  )
  mv "$dir/bin/sleep.tmp" "$dir/bin/sleep"
  mv "$dir/bin/kubernetes-image-puller.tmp" "$dir/bin/kubernetes-image-puller"
  log "peers: kubernetes-image-puller $commit: built"
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
  local what="${1:-all}"
  case "$what" in
    build) build_puller ;;
    images) image_puller ;;
    all) build_puller; image_puller ;;
    *) die "usage: hack/peers.sh [build|images]" ;;
  esac
}

main "$@"
