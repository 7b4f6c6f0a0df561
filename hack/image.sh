#!/usr/bin/env bash
# Build an image from a Dockerfile with buildah (no Docker engine here) and push it to the local
# registry over plain HTTP.
# Usage: hack/image.sh DOCKERFILE IMAGE_REF
#   IMAGE_CONTEXT   build context (default: the repository root)
#   BUILD_ARGS      extra arguments for `buildah bud` (word-split)
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

main() {
  local t0=$SECONDS extra=()
  # shellcheck disable=SC2206 # BUILD_ARGS is meant to be word-split
  [ -n "${BUILD_ARGS:-}" ] && extra=($BUILD_ARGS)
  mkdir -p "$BUILDAH_ROOT" "$BUILDAH_RUNROOT"
  curl -sS -o /dev/null "http://${REF%%/*}/v2/" 2>/dev/null || log "warning: registry ${REF%%/*} does not answer; the push will fail"
  log "image: building $REF from ${DOCKERFILE#"$ROOT_DIR"/}"
  buildah_ bud --quiet --pull=false --layers=false --timestamp 0 -f "$DOCKERFILE" -t "$REF" "${extra[@]}" "$CONTEXT" >/dev/null
  log "image: pushing $REF"
  local digest_file
  digest_file="$(mktemp)"
  local creds=()
  # IMAGE_PUSH_CREDS=user:password for a registry that requires a login
  [ -n "${IMAGE_PUSH_CREDS:-}" ] && creds=(--creds "$IMAGE_PUSH_CREDS")
  buildah_ push --quiet --tls-verify=false "${creds[@]}" --digestfile "$digest_file" "$REF" "docker://$REF"
  log "image: $REF@$(cat "$digest_file") ($((SECONDS - t0))s)"
  rm -f "$digest_file"
  # the registry holds the image now: drop the local copy so the vfs store does not grow per build
  buildah_ rmi -f "$REF" >/dev/null 2>&1 || true
}

main
