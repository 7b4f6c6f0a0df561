#!/usr/bin/env bash
# Build an image from a Dockerfile with buildah (no Docker engine here) and push it to the local
# registry over plain HTTP.
# Usage: hack/image.sh DOCKERFILE IMAGE_REF
#   IMAGE_CONTEXT    build context (default: the repository root)
#   BUILD_ARGS       extra arguments for `buildah bud` (word-split)
#   IMAGE_PLATFORMS  comma-separated OS/ARCH to build for (default linux/amd64, this host's). One
#                    platform: a plain image. Several: one image per platform (the Dockerfile
#                    sees TARGETARCH), pushed as one OCI image index under IMAGE_REF
#                    (buildah manifest create/add/push --all); a node pulls its own entry.
# Builds are reproducible: --timestamp 0 pins the image's and the files' times, so the same inputs
# give the same digest (a rebuild of unchanged sources changes nothing on the nodes).
# buildah keeps its own vfs storage under the cache so it never touches (or collides with) any
# system-wide containers/storage, and vfs needs no overlay mounts to clean up.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 2 ] || die "usage: hack/image.sh DOCKERFILE IMAGE_REF"
DOCKERFILE="$1"
REF="$2"
CONTEXT="${IMAGE_CONTEXT:-$ROOT_DIR}"
[ -f "$DOCKERFILE" ] || die "no such Dockerfile: $DOCKERFILE"
command -v buildah >/dev/null || die "buildah is missing: run hack/install-deps.sh"

BUILDAH_ROOT="$CACHE_DIR/buildah/storage"
BUILDAH_RUNROOT="$CACHE_DIR/buildah/run"
buildah_() {
  # chroot isolation: RUN steps (if any) need no runc/user namespaces inside this VM
  BUILDAH_ISOLATION=chroot buildah --storage-driver vfs --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" "$@"
}

# build PLATFORM TAG: the image for one platform, tagged TAG in the local store
build() {
  buildah_ bud --quiet --pull=false --layers=false --timestamp 0 --platform "$1" -f "$DOCKERFILE" -t "$2" \
    "${EXTRA[@]}" "$CONTEXT" >/dev/null
}

main() {
  local t0=$SECONDS platforms
  EXTRA=()
  # shellcheck disable=SC2206 # BUILD_ARGS is meant to be word-split
  [ -n "${BUILD_ARGS:-}" ] && EXTRA=($BUILD_ARGS)
  IFS=, read -r -a platforms <<<"${IMAGE_PLATFORMS:-linux/amd64}"
  [ ${#platforms[@]} -gt 0 ] || die "IMAGE_PLATFORMS is empty"
  mkdir -p "$BUILDAH_ROOT" "$BUILDAH_RUNROOT"
  curl -sS -o /dev/null "http://${REF%%/*}/v2/" 2>/dev/null || log "warning: registry ${REF%%/*} does not answer; the push will fail"
  local digest_file
  digest_file="$(mktemp)"
  local creds=()
  # IMAGE_PUSH_CREDS=user:password for a registry that requires a login
  [ -n "${IMAGE_PUSH_CREDS:-}" ] && creds=(--creds "$IMAGE_PUSH_CREDS")
  local push=(--quiet --tls-verify=false "${creds[@]}" --digestfile "$digest_file")
  if [ ${#platforms[@]} -eq 1 ]; then
    log "image: building $REF (${platforms[0]}) from ${DOCKERFILE#"$ROOT_DIR"/}"
    build "${platforms[0]}" "$REF"
    log "image: pushing $REF"
    buildah_ push "${push[@]}" "$REF" "docker://$REF"
    # the registry holds the image now: drop the local copy so the vfs store does not grow per build
    buildah_ rmi -f "$REF" >/dev/null 2>&1 || true
  else
    # a list left by an earlier run would keep its old entries: start from an empty one
    buildah_ manifest rm "$REF" >/dev/null 2>&1 || true
    buildah_ manifest create "$REF" >/dev/null
    local platform images=()
    for platform in "${platforms[@]}"; do
      log "image: building $REF ($platform) from ${DOCKERFILE#"$ROOT_DIR"/}"
      build "$platform" "$REF-${platform//\//-}"
      buildah_ manifest add "$REF" "$REF-${platform//\//-}" >/dev/null
      images+=("$REF-${platform//\//-}")
    done
    log "image: pushing $REF (an image index: ${platforms[*]})"
    buildah_ manifest push --all --format oci "${push[@]}" "$REF" "docker://$REF"
    buildah_ manifest rm "$REF" >/dev/null 2>&1 || true
    buildah_ rmi -f "${images[@]}" >/dev/null 2>&1 || true
  fi
  log "image: $REF@$(cat "$digest_file") ($((SECONDS - t0))s)"
  rm -f "$digest_file"
}

main
