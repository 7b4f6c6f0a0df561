# Shared settings for the hack/ scripts. Source it; do not run it.
# shellcheck shell=bash
# Its variables are used by the scripts that source it:
# shellcheck disable=SC2034
set -euo pipefail
# errexit inside $(...) too: a failing step in a command substitution fails it, not only its last.
shopt -s inherit_errexit

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=hack/versions.sh
. "$HACK_DIR/versions.sh"

# Binaries built from the module proxy live outside the checkout so clean clones reuse them.
CACHE_DIR="${KWARM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kwarm}"
BIN_DIR="$CACHE_DIR/bin"
# The venv of the Python linters (kubernetes-validate, yamllint; hack/install-deps.sh makes it).
LINT_VENV="$CACHE_DIR/venv/lint-kv$KUBERNETES_VALIDATE_VERSION-yl$YAMLLINT_VERSION"
# Everything a running cluster owns (state, logs, certs, kubeconfig) lives here.
CLUSTER_DIR="${KWARM_CLUSTER_DIR:-/var/lib/kwarm-cluster}"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
LOG_DIR="$CLUSTER_DIR/logs"
REGISTRY="127.0.0.1:5000"

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -trimpath"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# bin NAME VERSION -> path of a cached binary
bin_path() { echo "$BIN_DIR/$1-$2"; }
# the cached helm (its name carries HELM_BUILD: how hack/build-bins.sh builds it)
helm_bin() { bin_path helm "$HELM_VERSION-b$HELM_BUILD"; }

# lines ARRAY CMD... : the output lines of CMD into ARRAY (empty output: no element). CMD's failure
# is the caller's failure. Use it instead of `mapfile -t ARRAY < <(CMD)`: bash drops the status of
# a process substitution, so a producer that dies under `set -e` silently yields "nothing".
lines() {
  local -n lines_out="$1"
  shift
  local lines_text
  lines_text="$("$@")" || return
  lines_out=()
  [ -z "$lines_text" ] || mapfile -t lines_out <<<"$lines_text"
}
