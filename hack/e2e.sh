#!/usr/bin/env bash
# shellcheck disable=SC2317 # false positive: functions run through phase() and trap
# End-to-end tests on the real local cluster.
#   - starts the cluster when it is not up, and then stops it at the end (also on failure or ^C);
#     a cluster that was already up is left running
#   - pushes the test images (hack/test-images.sh), the kwarm images (make images) and the peers'
#     (hack/peers.sh: kubernetes-image-puller built from its source archive, when present)
#   - runs `cargo test -p kwarm-e2e -- --test-threads=1 ARGS...` and exits with its status
# Usage: hack/e2e.sh [extra cargo test args, e.g. a test name filter]
#   KEEP_CLUSTER=1   do not stop a cluster this script started
#   KWOK_NODES=N     fake nodes for a cluster this script starts (the tests add their own)
# When it stops a cluster after failed tests, the cluster's logs are kept in _output/e2e-logs.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=hack/cluster/common.sh
. "$HACK_DIR/cluster/common.sh"

STARTED_CLUSTER=0
TEST_STATUS=0
ARTIFACTS="$ROOT_DIR/_output/e2e-logs"

phase() { # NAME CMD... : run and report how long it took
  local name="$1" t0=$SECONDS; shift
  log "e2e: $name"
  "$@"
  log "e2e: $name done ($((SECONDS - t0))s)"
}

teardown() {
  local status=$?
  [ "$STARTED_CLUSTER" -eq 1 ] || return 0
  if [ "$status" -ne 0 ] || [ "$TEST_STATUS" -ne 0 ]; then
    # cluster-down removes CLUSTER_DIR with its logs: keep them for a look at what went wrong
    rm -rf "$ARTIFACTS"; mkdir -p "$ARTIFACTS"
    cp -r "$LOG_DIR"/. "$ARTIFACTS"/ 2>/dev/null || true
    log "e2e: cluster logs kept in $ARTIFACTS"
    if [ "${CI:-}" = true ]; then
      for f in "$ARTIFACTS"/*.log; do
        [ -f "$f" ] || continue
        printf '\n----- last lines of %s -----\n' "$(basename "$f")"
        tail -n 15 "$f"
      done
    fi
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    log "e2e: KEEP_CLUSTER=1: leaving the cluster up (make cluster-down stops it)"
  else
    phase "stopping the cluster it started" "$HACK_DIR/cluster-down.sh" || true
  fi
}

push_kwarm_images() {
  if [ -f "$ROOT_DIR/docker/kwarm.Dockerfile" ]; then
    make -C "$ROOT_DIR" --no-print-directory images
  else
    log "warning: docker/kwarm.Dockerfile does not exist yet: not building the kwarm image"
  fi
}

run_tests() {
  # a non-zero status is the result, not an error of this script
  cargo test --manifest-path "$ROOT_DIR/Cargo.toml" -p kwarm-e2e -- --test-threads=1 "$@" || TEST_STATUS=$?
}

main() {
  local t0=$SECONDS
  use_cached_tools
  trap teardown EXIT
  if ! is_running kube-apiserver; then
    STARTED_CLUSTER=1
    phase "starting the cluster" "$HACK_DIR/cluster-up.sh"
  else
    phase "checking the running cluster" "$HACK_DIR/cluster-up.sh"
  fi
  phase "test images" "$HACK_DIR/test-images.sh"
  phase "kwarm images" push_kwarm_images
  # the peers' binaries and images (kubernetes-image-puller), for the compatibility tests; without
  # their sources those tests report themselves skipped
  phase "peer images" "$HACK_DIR/peers.sh"
  phase "cargo test -p kwarm-e2e" run_tests "$@"
  log "e2e: tests $([ "$TEST_STATUS" -eq 0 ] && echo passed || echo "FAILED (status $TEST_STATUS)") in $((SECONDS - t0))s"
  exit "$TEST_STATUS"
}

main "$@"
