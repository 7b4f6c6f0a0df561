#!/usr/bin/env bash
# Offline checks of everything kwarm ships (part of `make lint`):
#   - yamllint (.yamllint.yaml) of the YAML sources;
#   - every rendered manifest against Kubernetes' OpenAPI schemas (kubernetes-validate, strict: an
#     unknown field is an error) for KUBE_VERSION's minor: the Helm chart (default values, each
#     deploy/helm/ci/*.yaml, the optional features switched on), `kubectl kustomize` of deploy/,
#     the base, each overlay and the base with each component, and the OpenShift templates
#     processed with their defaults (hack/process-template.py).
# Custom resources (CRD_KINDS) have no schema there: they are skipped, and named in the output.
# The linters live in a venv that hack/install-deps.sh makes, helm and kubectl are the cached
# builds (make tools). Without them the check fails in CI (CI=true) and is skipped elsewhere.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

CHART="$ROOT_DIR/deploy/helm"
HELM="$(helm_bin)"
KUBECTL="$(bin_path kubectl "$KUBE_VERSION")"
CRD_KINDS=(ServiceMonitor PrometheusRule Certificate Issuer)
# the chart's optional objects whose APIs a cluster may lack (the templates check for them)
API_VERSIONS=(monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PrometheusRule
  cert-manager.io/v1/Certificate cert-manager.io/v1/Issuer)

missing_tool() { # WHAT HOW
  if [ "${CI:-}" = true ]; then
    die "lint: $1 is missing: $2"
  fi
  log "lint: skipped manifest checks: $1 is missing ($2)"
  exit 0
}

[ -x "$LINT_VENV/bin/kubernetes-validate" ] && [ -x "$LINT_VENV/bin/yamllint" ] ||
  missing_tool "kubernetes-validate/yamllint ($LINT_VENV)" "run hack/install-deps.sh"
[ -x "$HELM" ] || missing_tool "helm ($HELM)" "run make tools"
[ -x "$KUBECTL" ] || missing_tool "kubectl ($KUBECTL)" "run make tools"

cd "$ROOT_DIR"
"$LINT_VENV/bin/yamllint" --strict -c .yamllint.yaml .
log "lint: yamllint clean"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
n=0
render() { # NAME CMD... : CMD's stdout into $OUT/NN-NAME.yaml
  local name="$1"
  shift
  n=$((n + 1))
  "$@" >"$OUT/$(printf %02d "$n")-$name.yaml" || die "lint: rendering $name failed: $*"
}

helm_template() { "$HELM" template kwarm "$CHART" --namespace kwarm "$@"; }
render chart-defaults helm_template
for f in "$CHART"/ci/*.yaml; do
  render "chart-$(basename "$f" .yaml)" helm_template -f "$f"
done
api=()
for a in "${API_VERSIONS[@]}"; do api+=(--api-versions "$a"); done
render chart-monitoring helm_template "${api[@]}" --set metrics.service.enabled=true \
  --set metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true
render chart-gates helm_template "${api[@]}" --set rolloutGate.enabled=true,rbac.nodeGate=true \
  --set-string configMap.nodeGateTaint=kwarm.io/warming,configMap.inheritPullSecrets=true \
  --set-string configMap.namespaceSelector=kwarm.io/warm=true,configMap.maxImagesPerNamespace=10
render chart-cert-manager helm_template "${api[@]}" --set rolloutGate.enabled=true,rolloutGate.certManager.enabled=true
render chart-namespaced helm_template --set rbac.clusterWide=false,configMap.create=false,serviceAccount.create=false
# WATCH_NAMESPACES listing namespaces: a Role and RoleBinding in each; the NetworkPolicy with peers
render chart-watch-namespaces helm_template --set-string 'configMap.watchNamespaces=apps web' \
  --set rolloutGate.enabled=true,configMap.inheritPullSecrets=true
render chart-network-policy helm_template --set networkPolicy.enabled=true,rolloutGate.enabled=true \
  --set-json 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]' \
  --set-json 'networkPolicy.healthFrom=[{"podSelector":{"matchLabels":{"app":"probe"}}}]' \
  --set-json 'networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}}]'
render chart-other-namespace helm_template --set configMap.namespace=holders,hostNetwork=true

render kustomize-deploy "$KUBECTL" kustomize deploy
render kustomize-base "$KUBECTL" kustomize deploy/kustomize/base
for d in deploy/kustomize/overlays/*/; do
  render "kustomize-$(basename "$d")" "$KUBECTL" kustomize "$d"
done
# a component only builds inside a kustomization: the base with it
for c in deploy/kustomize/components/*/; do
  k="$OUT/with-$(basename "$c")"
  mkdir -p "$k"
  # (kustomize takes no absolute paths)
  printf 'resources: [%s]\ncomponents: [%s]\n' "$(realpath --relative-to="$k" deploy/kustomize/base)" \
    "$(realpath --relative-to="$k" "$c")" >"$k/kustomization.yaml"
  render "kustomize-base-with-$(basename "$c")" "$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone "$k"
done

for t in openshift/*.yaml; do
  render "openshift-$(basename "$t" .yaml)" python3 hack/process-template.py "$t"
done

skip=()
for k in "${CRD_KINDS[@]}"; do skip+=(--skip-kind "$k"); done
minor="$(echo "${KUBE_VERSION#v}" | cut -d. -f1,2)"
"$LINT_VENV/bin/python" hack/validate-manifests.py --kubernetes-version "$minor" "${skip[@]}" "$OUT"/*.yaml
log "lint: $n renderings valid for Kubernetes $minor"
