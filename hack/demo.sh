#!/usr/bin/env bash
# `make demo`: kwarm's main job, end to end, on this machine.
#   1. OS packages and the cluster binaries (built from source once, then cached)
#   2. the local cluster (make cluster-up; left alone when it is up)
#   3. kwarm's images and a few sample images, pushed to the local registry (127.0.0.1:5000)
#   4. kwarm installed with its Helm chart, three sample images to keep warm
#   5. waits until every node holds them, then shows `kwarm status` and containerd's image list
# Idempotent: run it again at any time (it upgrades the release in place).
#   DEMO_NAMESPACE   namespace of the release (default kwarm-demo)
#   DEMO_IMAGES      IMAGES for the demo (default: small, other and medium test images)
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

NS="${DEMO_NAMESPACE:-kwarm-demo}"
RELEASE=kwarm
DS=kwarm
DEMO_IMAGES="${DEMO_IMAGES:-small=$REGISTRY/test/small:v1;other=$REGISTRY/test/other:v1;medium=$REGISTRY/test/medium:v1}"
STEP=0

step() {
  STEP=$((STEP + 1))
  printf '\n\033[1m== %d. %s\033[0m\n' "$STEP" "$*"
}

main() {
  local t0=$SECONDS
  cd "$ROOT_DIR"

  step "Tools: OS packages and cluster binaries (first run on a fresh machine: up to ~30 min)"
  "$HACK_DIR/install-deps.sh"
  "$HACK_DIR/build-bins.sh" all
  # shellcheck source=hack/cluster/common.sh
  . "$HACK_DIR/cluster/common.sh"
  use_cached_tools # kubectl and helm on PATH, KUBECONFIG set

  step "Local cluster: API server, a real kubelet with containerd, a registry on 127.0.0.1:5000"
  make --no-print-directory cluster-up

  step "Images: kwarm's manager and sleep holder, and the sample images, into the local registry"
  make --no-print-directory images
  "$HACK_DIR/test-images.sh"

  step "Install: helm upgrade --install $RELEASE deploy/helm -n $NS"
  # The exact manager image just pushed (by digest), so a rebuilt kwarm:dev is rolled out.
  local digest args=()
  digest="$(image_digest kwarm/kwarm dev || true)"
  [ -n "$digest" ] && args+=(--set "kwarmImage.digest=$digest")
  (
    set -x
    helm upgrade --install "$RELEASE" deploy/helm --namespace "$NS" --create-namespace \
      -f deploy/helm/ci/local-cluster-values.yaml \
      --set-string "configMap.images=$DEMO_IMAGES" \
      --set-string "configMap.watchNamespaces=$NS" \
      "${args[@]}" --wait --timeout 3m
  )

  step "Waiting until every node holds the images (DaemonSet $NS/$DS)"
  wait_daemonset
  kubectl -n "$NS" rollout status "daemonset/$DS" --timeout=180s
  # kwarm's own condition: every image held on every node (a Ready DaemonSet is not enough: a
  # quarantined image is left out of it)
  kubectl -n "$NS" wait --for=condition=Warm "daemonset/$DS" --timeout=60s

  step "kwarm status: images x nodes"
  "$ROOT_DIR/_output/bin/kwarm" status --kubeconfig "$KUBECONFIG_PATH" -n "$NS" --daemonset "$DS" \
    --wait --timeout 60s

  step "Proof from the node: containerd's images (ctr -n k8s.io images ls | grep test/)"
  ctr -a "$CLUSTER_DIR/containerd/containerd.sock" -n k8s.io images ls | awk 'NR == 1 || /test\//'

  cat <<EOF

Done in $((SECONDS - t0))s. kwarm keeps those images on every node; nodes that join get them too.
Try next:
  export KUBECONFIG=$KUBECONFIG_PATH PATH=$CACHE_DIR/path:\$PATH
  kubectl -n $NS get deployment,daemonset,pods -o wide
  kubectl -n $NS logs deployment/$RELEASE
  # warm the images of a Deployment too: label it kwarm.io/enabled=true (namespace $NS here)
  kubectl -n $NS create deployment web --image=$REGISTRY/test/layers:v1 --replicas=0
  kubectl -n $NS label deployment web kwarm.io/enabled=true
  # change the list: helm upgrade with another configMap.images, then watch the DaemonSet follow
  helm -n $NS uninstall $RELEASE   # removes the manager and, with it, the DaemonSet
  make cluster-down                # stops the local cluster
EOF
}

# REPO TAG -> the registry's digest of that tag (empty when unknown)
image_digest() {
  curl -fsSI --max-time 5 \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.index.v1+json' \
    "http://$REGISTRY/v2/$1/manifests/$2" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}'
}

# The manager creates the DaemonSet once it is up; wait for it to exist (rollout status cannot).
wait_daemonset() {
  local i
  for i in $(seq 1 60); do
    kubectl -n "$NS" get "daemonset/$DS" >/dev/null 2>&1 && return 0
    [ "$i" -eq 1 ] && echo "waiting for the manager to create the DaemonSet..."
    sleep 2
  done
  kubectl -n "$NS" logs "deployment/$RELEASE" --tail=30 >&2 || true
  die "no DaemonSet $NS/$DS after 120 s: the manager's log is above"
}

main "$@"
