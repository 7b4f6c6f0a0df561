#!/usr/bin/env bash
# Build the small test images the e2e suite pulls and push them to the local registry.
# They are FROM-scratch images holding only data (no program: pods run them with the sleep binary
# copied in by an init container). Content is pseudo-random from a fixed seed and image.sh builds
# with --timestamp 0, so every machine builds byte-identical images with the same digests.
# Idempotent: a tag the registry already has is skipped.
#
# The images (REF  DATA SIZE  DATA LAYERS (plus one for /label)  what for):
#   127.0.0.1:5000/test/small:v1    4 KiB   1  a tiny image
#   127.0.0.1:5000/test/small:v2    4 KiB   1  same repository, different content (tag changes)
#   127.0.0.1:5000/test/small:v3    4 KiB   1  a third tag of the same repository
#   127.0.0.1:5000/test/other:v1    4 KiB   1  a second repository
#   127.0.0.1:5000/test/medium:v1   1 MiB   1  a pull that takes measurable time
#   127.0.0.1:5000/test/large:v1    8 MiB   1  a bigger pull (disk accounting, slow pulls)
#   127.0.0.1:5000/test/layers:v1   768 KiB 3  several layers (3 x 256 KiB)
#   127.0.0.1:5000/test/big:gated   64 MiB  2  rollout gate: a pull big enough to see (2 x 32 MiB)
#   127.0.0.1:5000/test/big:ungated 64 MiB  2  the same change with the gate off, for comparison
#   127.0.0.1:5001/private/secret:v1  4 KiB 1  in the registry that requires a login (pull secrets)
#   127.0.0.1:5001/private/secret:v2  4 KiB 1  another private image (a tenant without the login names it)
#   127.0.0.1:5000/che-incubator/che-code:next              4 KiB 1  the images kubernetes-image-puller's
#   127.0.0.1:5000/devfile/base-developer-image:ubi9-latest 4 KiB 1  own values and templates name; the
#     real node's containerd serves quay.io/... from here (hack/cluster-up.sh MIRRORED_REGISTRIES)
# Every image has /label (its own reference) and /data/* (the random files).
#   127.0.0.1:5000/test/helm-test:v1  the chart's `helm test` pod (tests.image in
#     deploy/helm/ci/local-cluster-values.yaml): this host's busybox-static (sh) and curl with its
#     shared libraries, in place of docker.io/curlimages/curl, which an offline cluster cannot pull.
#     Built from the host's packages, so its digest is this machine's.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

# repository:tag  then the layer sizes in bytes (one file, one COPY, one layer each)
IMAGES=(
  "test/small:v1 4096"
  "test/small:v2 4096"
  "test/small:v3 4096"
  "test/other:v1 4096"
  "test/medium:v1 1048576"
  "test/large:v1 8388608"
  "test/layers:v1 262144 262144 262144"
  "test/big:gated 33554432 33554432"
  "test/big:ungated 33554432 33554432"
  "che-incubator/che-code:next 4096"
  "devfile/base-developer-image:ubi9-latest 4096"
)

# SEED SIZE -> deterministic pseudo-random bytes on stdout (AES-CTR keystream of a fixed key)
random_bytes() {
  # (process substitution: openssl dying of SIGPIPE when head has enough is expected, not an error)
  head -c "$2" < <(openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:kwarm-test-$1" </dev/zero 2>/dev/null)
}

build_one() { # REPO:TAG SIZE...   (REGISTRY_HOST and IMAGE_PUSH_CREDS pick another registry)
  local name="$1"; shift
  local ref="${REGISTRY_HOST:-$REGISTRY}/$name" dir i=0
  if [ -z "${REGISTRY_HOST:-}" ] && registry_has "$ref"; then
    log "test image $ref: present"
    return
  fi
  dir="$(mktemp -d)"
  echo "$ref" >"$dir/label"
  {
    echo "FROM scratch"
    echo "COPY label /label"
    for size in "$@"; do
      random_bytes "$name-$i" "$size" >"$dir/blob$i"
      echo "COPY blob$i /data/blob$i"
      i=$((i + 1))
    done
  } >"$dir/Dockerfile"
  IMAGE_CONTEXT="$dir" "$HACK_DIR/image.sh" "$dir/Dockerfile" "$ref"
  rm -rf "$dir"
}

main() {
  registry_healthy_ || die "the registry at $REGISTRY does not answer: run make cluster-up first"
  local spec
  for spec in "${IMAGES[@]}"; do
    # shellcheck disable=SC2086 # spec is "name size..." on purpose
    build_one $spec
  done
  build_helm_test_image
  # v1: a tenant's private image; v2: another one of that registry, which a second tenant without
  # the login names (it must never be warmed with the first tenant's credentials)
  local private
  for private in private/secret:v1 private/secret:v2; do
    if private_has "$private"; then
      log "test image $PRIVATE_REGISTRY/$private: present"
    else
      REGISTRY_HOST="$PRIVATE_REGISTRY" IMAGE_PUSH_CREDS="$PRIVATE_REGISTRY_USER:$PRIVATE_REGISTRY_PASSWORD" \
        build_one "$private" 4096
    fi
  done
}

# The `helm test` image: /bin/sh (busybox, with the applets the test script uses) and curl.
build_helm_test_image() {
  local ref="$REGISTRY/test/helm-test:v1" dir curl lib
  if registry_has "$ref"; then
    log "test image $ref: present"
    return
  fi
  curl="$(command -v curl)" || die "curl is missing: run hack/install-deps.sh"
  [ -x /bin/busybox ] || die "/bin/busybox is missing: run hack/install-deps.sh (busybox-static)"
  dir="$(mktemp -d)"
  mkdir -p "$dir/root/bin" "$dir/root/usr/bin"
  cp /bin/busybox "$dir/root/bin/busybox"
  for applet in sh cat sleep echo; do ln -s busybox "$dir/root/bin/$applet"; done
  cp "$curl" "$dir/root/usr/bin/curl"
  # the dynamic loader and every library curl links (ldd: "name => path (addr)" or "path (addr)")
  for lib in $(ldd "$curl" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    cp --parents -L "$lib" "$dir/root/"
  done
  printf 'FROM scratch\nCOPY root/ /\n' >"$dir/Dockerfile"
  IMAGE_CONTEXT="$dir" "$HACK_DIR/image.sh" "$dir/Dockerfile" "$ref"
  rm -rf "$dir"
}

private_has() { # REPO:TAG in the private registry (with the login)
  curl -fsS -o /dev/null -I -u "$PRIVATE_REGISTRY_USER:$PRIVATE_REGISTRY_PASSWORD" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$PRIVATE_REGISTRY/v2/${1%:*}/manifests/${1##*:}" 2>/dev/null
}

registry_healthy_() { curl -fsS --max-time 3 -o /dev/null "http://$REGISTRY/v2/"; }

main "$@"
