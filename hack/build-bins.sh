#!/usr/bin/env bash
# Build the cluster's binaries from the Go module proxy into a cache keyed by version.
# Nothing is downloaded as a prebuilt binary: every program here is compiled with `go build`.
# Usage: hack/build-bins.sh [kube|etcd|kwok|helm|all]
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

# kube components: k8s.io/kubernetes pins its staging modules at v0.0.0 and relies on replace lines,
# so `go install ...@vX` is refused. A throwaway module repeats those replaces at the matching v0.Y.Z.
build_kube() {
  local v="$KUBE_VERSION" missing=()
  for c in "${KUBE_CMDS[@]}"; do [ -x "$(bin_path "$c" "$v")" ] || missing+=("$c"); done
  [ ${#missing[@]} -eq 0 ] && { log "kubernetes $v: cached"; return; }
  log "kubernetes $v: building ${missing[*]} (cold: 15-30 min on 2 cores)"
  local src="$CACHE_DIR/src/kubernetes-$v" staging="v0.${v#v1.}"
  mkdir -p "$src" "$BIN_DIR"
  local upstream_mod
  upstream_mod="$(cd "$src" && GOFLAGS='' go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$upstream_mod" ] || die "could not download k8s.io/kubernetes@$v go.mod from the module proxy"
  {
    echo "module kwarm.local/kubebuild"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$upstream_mod" | head -1
    grep '^godebug' "$upstream_mod" || true
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    # every k8s.io module upstream requires at v0.0.0 is one of its staging repositories
    grep -oE 'k8s\.io/[a-z0-9./-]+ v0\.0\.0$' "$upstream_mod" | awk -v s="$staging" '{print "replace " $1 " => " $1 " " s}' | sort -u
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools
GO
  local date ld pkgs=()
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$v" | cut -d. -f2)"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=0000000000000000000000000000000000000000"
  done
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  # go get pins the exact versions; when it cannot resolve the graph, tidy does
  (cd "$src" && { go get "${pkgs[@]/%/@$v}" >/dev/null 2>&1 || go mod tidy; })
  local out="$src/out"; mkdir -p "$out"
  (cd "$src" && go build -mod=mod -ldflags "-s -w$ld" -o "$out/" "${pkgs[@]}")
  for c in "${missing[@]}"; do mv "$out/$c" "$(bin_path "$c" "$v")"; done
  log "kubernetes $v: built"
}

build_etcd() {
  local v="$ETCD_VERSION" dst; dst="$(bin_path etcd "$v")"
  [ -x "$dst" ] && { log "etcd $v: cached"; return; }
  log "etcd $v: building"
  local src="$CACHE_DIR/src/etcd-$v"; mkdir -p "$src" "$BIN_DIR"
  local upstream_mod
  upstream_mod="$(cd "$src" && GOFLAGS='' go mod download -json "go.etcd.io/etcd/server/v3@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  {
    echo "module kwarm.local/etcdbuild"; echo; echo "go 1.24"; echo
    echo "require go.etcd.io/etcd/server/v3 $v"
    # upstream points its sibling modules at ../ paths; use the released versions instead
    grep -oE '^\s*go\.etcd\.io/etcd/[a-z0-9/]+/v3 =>' "$upstream_mod" | awk -v s="$v" '{print "replace " $1 " => " $1 " " s}' | sort -u
  } >"$src/go.mod"
  (cd "$src" && go get "go.etcd.io/etcd/server/v3@$v" >/dev/null && go build -mod=mod -ldflags "-s -w" -o "$dst" go.etcd.io/etcd/server/v3)
  log "etcd $v: built"
}

build_simple() { # name module-path version [ldflags [destination]]
  local name="$1" pkg="$2" v="$3" dst; dst="${5:-$(bin_path "$name" "$v")}"
  [ -x "$dst" ] && { log "$name $v: cached"; return; }
  log "$name $v: building"
  local gobin="$CACHE_DIR/src/gobin-$name-$v"; mkdir -p "$gobin" "$BIN_DIR"
  GOBIN="$gobin" go install -ldflags "-s -w ${4:-}" "$pkg@$v"
  mv "$gobin/$name" "$dst"
  log "$name $v: built"
}

build_kwok() { build_simple kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"; }
# helm with the ldflags of Helm's own Makefile: its version, and the Kubernetes version it assumes
# without a cluster (`helm template`, `helm lint`; .Capabilities.KubeVersion, a chart's kubeVersion
# check) taken from the k8s.io/client-go it is built with, as that Makefile does. Without them helm
# assumes v1.20.0 and refuses a chart with kubeVersion >=1.22.0-0. The cached binary's name
# carries HELM_BUILD (hack/versions.sh), so a cache from before this rebuilds.
build_helm() {
  local v="$HELM_VERSION" dst; dst="$(helm_bin)"
  [ -x "$dst" ] && { log "helm $v: cached"; return; }
  local mod client_go major minor
  mod="$(GOFLAGS='' go mod download -json "helm.sh/helm/v3@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$mod" ] || die "could not download helm.sh/helm/v3@$v go.mod from the module proxy"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$mod")"
  [[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || die "helm $v: no k8s.io/client-go v0.N.x in its go.mod ($client_go)"
  major=1 minor="${BASH_REMATCH[1]}"
  local ld="-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.metadata="
  local p
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  log "helm $v: assumes Kubernetes v$major.$minor offline (client-go $client_go)"
  build_simple helm helm.sh/helm/v3/cmd/helm "$v" "$ld" "$dst"
}

case "${1:-all}" in
  kube) build_kube ;; etcd) build_etcd ;; kwok) build_kwok ;; helm) build_helm ;;
  all) build_etcd; build_kwok; build_helm; build_kube ;;
  *) die "unknown target $1 (kube|etcd|kwok|helm|all)" ;;
esac
