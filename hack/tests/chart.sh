# Tests of the Helm chart's values schema (deploy/helm/values.schema.json), sourced by run.sh:
# `helm template` must accept every values file we ship and the puller-style values users bring,
# and refuse, naming the value, what the manager would refuse at start. No cluster needed.
# shellcheck shell=bash

CHART_DIR="$HACK_DIR/../deploy/helm"
HELM="${HELM:-$(. "$HACK_DIR/versions.sh"; echo "${KWARM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kwarm}/bin/helm-$HELM_VERSION-b$HELM_BUILD")}"

# helm_template ARGS... : renders the chart; sets OUT and STATUS. Without helm (built by
# `make tools`) the test is skipped, except in CI.
helm_template() {
  if [ ! -x "$HELM" ]; then
    [ "${CI:-}" != true ] || { fail "no helm at $HELM: run make tools"; exit 1; }
    echo "    skipped: no helm at $HELM (make tools builds it)" >&2
    exit 0
  fi
  STATUS=0
  # shellcheck disable=SC2034 # read by run.sh's expect_output
  OUT="$("$HELM" template kwarm "$CHART_DIR" "$@" 2>&1 >/dev/null)" || STATUS=$?
}

# accepted ARGS... / refused WHERE ARGS... : WHERE is the schema's path of the refused value.
accepted() { helm_template "$@" && expect_status 0; }
refused() {
  local where="$1"
  shift
  helm_template "$@"
  [ "$STATUS" -ne 0 ] || fail "accepted: $*" && expect_output "at '$where'"
}

# A values file as kubernetes-image-puller users write theirs: deploy/helm/ci/puller-values.yaml.
puller_values() { echo "$CHART_DIR/ci/puller-values.yaml"; }

test_chart_schema_accepts_shipped_values() {
  accepted || return
  local f
  for f in "$CHART_DIR"/ci/*.yaml; do
    accepted -f "$f" || return
  done
}

test_chart_schema_accepts_puller_values() {
  local values
  values="$(puller_values)"
  accepted -f "$values" &&
    accepted -f "$values" --set-string configMap.cachingIntervalHours=6,configMap.cachingCpuRequest=0.1 &&
    accepted -f "$values" --set configMap.cachingIntervalHours=24,configMap.cachingCpuRequest=0.1 &&
    accepted -f "$values" --set priorityClassName= &&
    accepted --set configMap.create=false,configMap.name=k8s-image-puller
}

test_chart_schema_accepts_what_the_manager_accepts() {
  local yaml="$WORK/yaml-values.yaml"
  cat >"$yaml" <<'EOF'
configMap:
  nodeSelector: {kubernetes.io/hostname: "127.0.0.1"}
  tolerations: [{key: dedicated, operator: Exists}]
  daemonsetAnnotations: {team: platform}
  imagePullSecrets: [regcred, other]
  watchNamespaces: [apps, web]
EOF
  accepted -f "$yaml" &&
    # booleans the way the manager and the chart's kwarm.bool read them
    accepted --set configMap.inheritPullSecrets=True,configMap.watchDeployments=0 &&
    accepted --set-string configMap.watchDeployments=yes,configMap.inheritPullSecrets=FALSE &&
    accepted --set configMap.cachingMemoryRequest=1e3,configMap.cachingMemoryLimit=1Gi &&
    accepted --set configMap.cachingCpuRequest=100m,configMap.cachingCpuLimit=1 &&
    accepted --set configMap.maxConcurrentNodes=25% && accepted --set configMap.maxConcurrentNodes=3 &&
    accepted --set configMap.cachingInterval=1h30m,configMap.pullTimeout=90s,configMap.imageRetention=0 &&
    accepted --set configMap.digestCheckInterval=0 && accepted --set-string configMap.digestCheckInterval=6h &&
    accepted --set-string 'configMap.watchNamespaces=apps web' && accepted --set 'configMap.watchNamespaces=*' &&
    accepted --set 'configMap.imagePullSecrets=a;b' &&
    accepted --set configMap.maxRetries=0,configMap.maxImages=1000,configMap.maxImagesPerNamespace=5,configMap.logFormat=JSON &&
    accepted --set-string configMap.nodeGateTaint=kwarm.io/warming=true:NoSchedule &&
    accepted --set rolloutGate.enabled=True,rolloutGate.mode=opt-in,rolloutGate.url=https://127.0.0.1:9443/mutate &&
    accepted --set rolloutGate.enabled=true,rolloutGate.certManager.enabled=true &&
    accepted --set metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.scrapeTimeout=10s &&
    accepted --set metrics.prometheusRule.enabled=true,metrics.prometheusRule.notWarmFor=1h,metrics.prometheusRule.syncStaleSeconds=600 &&
    accepted --set metrics.dashboard.enabled=true,metrics.dashboard.namespace=monitoring,metrics.dashboard.labels.grafana_dashboard=kwarm
}

test_chart_schema_refuses_what_the_manager_refuses() {
  refused /configMap/cachingCpuRequest --set configMap.cachingCpuRequest=abc &&
    refused /configMap/cachingMemoryLimit --set configMap.cachingMemoryLimit=-1 &&
    refused /configMap/cachingIntervalHours --set configMap.cachingIntervalHours=0 &&
    refused /configMap/cachingIntervalHours --set-string configMap.cachingIntervalHours=1.5 &&
    refused /configMap/cachingInterval --set configMap.cachingInterval=30 &&
    refused /configMap/pullTimeout --set configMap.pullTimeout=10minutes-ish &&
    refused /configMap/maxConcurrentNodes --set configMap.maxConcurrentNodes=101% &&
    refused /configMap/maxConcurrentNodes --set configMap.maxConcurrentNodes=0 &&
    refused /configMap/watchDeployments --set configMap.watchDeployments=maybe &&
    refused /configMap/inheritPullSecrets --set configMap.inheritPullSecrets=2 &&
    refused /configMap/imagePullPolicy --set configMap.imagePullPolicy=always &&
    refused /configMap/logFormat --set configMap.logFormat=xml &&
    refused /configMap/maxRetries --set configMap.maxRetries=31 &&
    refused /configMap/maxImages --set-string configMap.maxImages=0 &&
    refused /configMap/maxImagesPerNamespace --set configMap.maxImagesPerNamespace=0 &&
    refused /configMap/nodeGateTaint --set configMap.nodeGateTaint=kwarm.io/warming:Sometimes &&
    refused /configMap/watchNamespaces --set 'configMap.watchNamespaces=*\,apps' &&
    refused /configMap/namespace --set configMap.namespace=Apps &&
    refused /configMap/nodeSelector --set configMap.nodeSelector=disk=ssd &&
    refused /configMap/tolerations/0 --set 'configMap.tolerations[0].efect=NoSchedule' &&
    refused /configMap/daemonsetAnnotations/kwarm.io~1status --set 'configMap.daemonsetAnnotations.kwarm\.io/status=x' &&
    refused /deploymentName --set deploymentName=Kwarm
}

test_chart_schema_refuses_chart_values_it_would_misread() {
  # "false" as a string is true to a template's `if`
  refused /serviceAccount/create --set-string serviceAccount.create=false &&
    refused /metrics/port --set metrics.port=0 &&
    refused /rolloutGate/mode --set rolloutGate.mode=some &&
    refused /rolloutGate/url --set rolloutGate.url=http://127.0.0.1:9443/mutate &&
    refused /image/pullPolicy --set image.pullPolicy=always &&
    refused /metrics/serviceMonitor/interval --set metrics.serviceMonitor.interval=30 &&
    refused /rolloutGate/certManager/duration --set rolloutGate.certManager.duration=1y &&
    refused /metrics/prometheusRule/notWarmFor --set metrics.prometheusRule.notWarmFor=30 &&
    refused /metrics/prometheusRule/syncStaleSeconds --set metrics.prometheusRule.syncStaleSeconds=10 &&
    refused /metrics/prometheusRule/selector --set-string 'metrics.prometheusRule.selector=job="x"}' &&
    refused /metrics/dashboard/namespace --set metrics.dashboard.namespace=Monitoring
}

# The rule and the dashboard only when asked for (the rule also needs the Prometheus Operator's
# API); the rule selects the release's series, or those of metrics.prometheusRule.selector.
test_chart_renders_rule_and_dashboard_when_asked() {
  helm_template || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n mon --set metrics.prometheusRule.enabled=true)" || fail "render failed" || return
  ! grep -qx "kind: PrometheusRule" <<<"$OUT" || fail "a PrometheusRule without its API" || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n mon --api-versions monitoring.coreos.com/v1/PrometheusRule \
    --set metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true)" || fail "render failed" || return
  expect_output "kind: PrometheusRule" && expect_output 'kwarm_images{state="quarantined", namespace="mon", job="kwarm-metrics"}' &&
    expect_output "alert: KwarmManagerAbsent" && expect_output 'grafana_dashboard: "1"' &&
    expect_output '"uid": "kwarm"' || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n mon --api-versions monitoring.coreos.com/v1/PrometheusRule \
    --set metrics.prometheusRule.enabled=true --set-string 'metrics.prometheusRule.selector=cluster="eu"')" || fail "render failed" || return
  expect_output 'absent(kwarm_build_info{cluster="eu"})'
}

# `helm test`'s objects are hooks; the pod asks /readyz through the test's Service (the node's
# loopback with hostNetwork) and reads the DaemonSet NAMESPACE/DAEMONSET_NAME name.
test_chart_test_hook_checks_readyz_and_the_daemonset() {
  helm_template --set configMap.namespace=holders,configMap.daemonsetName=warm || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n rel --show-only templates/tests/readiness.yaml \
    --set configMap.namespace=holders,configMap.daemonsetName=warm)" || fail "render failed" || return
  expect_output "helm.sh/hook: test" &&
    expect_output 'value: "http://kwarm-test.rel.svc:8081/readyz"' &&
    expect_output 'value: "/apis/apps/v1/namespaces/holders/daemonsets/warm"' &&
    expect_output "resourceNames: [warm]" &&
    { grep -qx "kind: Service" <<<"$OUT" || fail "no Service for /readyz"; }
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n rel --show-only templates/tests/readiness.yaml \
    -f "$CHART_DIR/ci/local-cluster-values.yaml")" || fail "render failed" || return
  expect_output 'value: "http://127.0.0.1:18091/readyz"' &&
    { ! grep -qx "kind: Service" <<<"$OUT" || fail "a Service with hostNetwork"; }
}

# validate ARGS... : hack/validate-manifests.py in the linters' venv; sets OUT and STATUS. Without
# the venv (hack/install-deps.sh makes it) the test is skipped, except in CI.
validate() {
  local venv
  venv="$(. "$HACK_DIR/lib.sh" && echo "$LINT_VENV")"
  if [ ! -x "$venv/bin/python" ]; then
    [ "${CI:-}" != true ] || { fail "no linters' venv at $venv: run hack/install-deps.sh"; exit 1; }
    echo "    skipped: no linters' venv at $venv (hack/install-deps.sh makes it)" >&2
    exit 0
  fi
  STATUS=0
  OUT="$("$venv/bin/python" "$HACK_DIR/validate-manifests.py" --kubernetes-version 1.34 "$@" 2>&1)" || STATUS=$?
}

test_manifest_validator_refuses_what_the_api_server_would() {
  cat >"$WORK/bad.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: typo}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec:
      containers: [{name: a, image: a, imagePullPolicy: IfNotPresent, resources: {limit: {cpu: 1}}}]
---
apiVersion: v1
kind: Service
metadata: {name: port-as-text}
spec:
  ports: [{port: "eighty"}]
YAML
  validate "$WORK/bad.yaml"
  [ "$STATUS" -ne 0 ] || fail "accepted invalid objects" "output: $OUT"
  expect_output "Deployment/typo" && expect_output "'limit' was unexpected" &&
    expect_output "Service/port-as-text" && expect_output "manifests: 2 objects checked"
}

test_manifest_validator_skips_named_custom_resources_only() {
  cat >"$WORK/crs.yaml" <<'YAML'
apiVersion: v1
kind: List
items:
  - {apiVersion: monitoring.coreos.com/v1, kind: PrometheusRule, metadata: {name: r}, spec: {}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: ok}, data: {a: b}}
YAML
  validate --skip-kind PrometheusRule "$WORK/crs.yaml" && expect_status 0 &&
    expect_output "skipped 1 PrometheusRule" && expect_output "1 objects checked" || return
  validate "$WORK/crs.yaml"
  [ "$STATUS" -ne 0 ] || fail "an object without a schema passed unnamed" "output: $OUT"
  expect_output "Couldn't find schema for kind PrometheusRule"
}

# rbac ARGS... : OUT is the rendered RBAC, one line per rule and resource:
#   KIND NAMESPACE GROUP/RESOURCE VERB,VERB... [names=NAME,NAME...]
rbac() {
  helm_template "$@" || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n kwarm "$@" | python3 -c '
import sys, yaml
for o in yaml.safe_load_all(sys.stdin):
    if o and o.get("kind") in ("Role", "ClusterRole"):
        for r in o.get("rules", []):
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    names = r.get("resourceNames")
                    print(o["kind"], o["metadata"].get("namespace", "-"), (g or "core") + "/" + res, ",".join(r["verbs"]),
                          *(["names=" + ",".join(names)] if names else []))
')" || fail "render failed: $*"
}
has_rule() { grep -qxF -- "$1" <<<"$OUT" || fail "no rule: $1" "rules:" "$OUT"; }
no_rule() { ! grep -qE -- "$1" <<<"$OUT" || fail "unexpected rule /$1/" "rules:" "$OUT"; }

# WATCH_NAMESPACES listing namespaces: Deployments are read there (a Role each), not cluster-wide.
test_chart_rbac_reads_deployments_only_in_the_listed_namespaces() {
  local values="$WORK/listed.yaml"
  printf 'configMap:\n  watchNamespaces: "web, api web"\n  excludeNamespaces: [api]\n' >"$values"
  rbac -f "$values" || return
  has_rule "Role web apps/deployments list,watch" && has_rule "Role web events.k8s.io/events create,patch" &&
    no_rule "Role (api|kwarm) apps/deployments list" && no_rule "^ClusterRole" || return
  # every namespace: the ClusterRole
  rbac --set-string 'configMap.watchNamespaces=*' || return
  has_rule "ClusterRole - apps/deployments list,watch" && no_rule "Role web" || return
  # the gates' rights stay cluster-wide; the webhook reads Deployments where they are watched
  rbac -f "$values" --set rolloutGate.enabled=true --set-string configMap.inheritPullSecrets=true || return
  has_rule "Role web apps/deployments get,list,watch" && has_rule "Role web core/secrets get" &&
    has_rule "ClusterRole - core/pods get,list,watch,patch" && has_rule "ClusterRole - core/nodes list,watch" &&
    no_rule "ClusterRole - (apps/deployments|core/secrets)"
}

# A boolean means to the chart's RBAC what it means to the manager (src/config.rs parse_bool).
test_chart_rbac_reads_booleans_as_the_manager_does() {
  rbac --set-string 'configMap.inheritPullSecrets= True ' || return
  has_rule "Role kwarm core/secrets get,list,create,patch,delete" && has_rule "ClusterRole - core/secrets get" || return
  rbac --set configMap.inheritPullSecrets=1 || return
  has_rule "ClusterRole - core/secrets get" || return
  rbac --set-string configMap.inheritPullSecrets=no || return
  no_rule "secrets" || return
  rbac --set configMap.watchDeployments=0 || return
  no_rule "deployments (list|.*watch)" && no_rule "^ClusterRole" || return
  rbac --set-string configMap.watchDeployments=YES || return
  has_rule "ClusterRole - apps/deployments list,watch"
}

# NAMESPACE_SELECTOR: list/watch on namespaces, only when set (and only cluster-wide).
test_chart_rbac_watches_namespaces_only_with_a_namespace_selector() {
  rbac || return
  no_rule "namespaces " || return
  rbac --set-string configMap.namespaceSelector=kwarm.io/warm=true || return
  has_rule "ClusterRole - core/namespaces list,watch" || return
  helm_template --set-string configMap.namespaceSelector=kwarm.io/warm=true --set rbac.clusterWide=false
  expect_status 1 && expect_output "configMap.namespaceSelector needs rbac.clusterWide=true"
}

# The manager's own objects by name where the chart knows the names: its DaemonSet (list and watch
# select it by name; the apply that creates it is authorized with it), its Lease and Deployment.
test_chart_rbac_names_the_managers_own_objects() {
  rbac || return
  has_rule "Role kwarm apps/daemonsets get,list,watch,create,patch names=kwarm" &&
    has_rule "Role kwarm apps/daemonsets/status patch names=kwarm" &&
    has_rule "Role kwarm coordination.k8s.io/leases create" &&
    has_rule "Role kwarm coordination.k8s.io/leases get,update names=kwarm-kwarm" &&
    has_rule "Role kwarm apps/deployments get names=kwarm" || return
  # extraEnv wins over the ConfigMap, as in the pod
  rbac --set 'extraEnv[0].name=DAEMONSET_NAME,extraEnv[0].value=holders' || return
  has_rule "Role kwarm apps/daemonsets get,list,watch,create,patch names=holders" &&
    has_rule "Role kwarm coordination.k8s.io/leases get,update names=holders-kwarm" || return
  # an existing ConfigMap names a DaemonSet the chart cannot see: not restricted
  rbac --set configMap.create=false || return
  has_rule "Role kwarm apps/daemonsets get,list,watch,create,patch" &&
    has_rule "Role kwarm coordination.k8s.io/leases get,create,update" || return
  # no leader election, no Lease
  rbac --set leaderElection.enabled=false || return
  no_rule "leases"
}

# networkPolicy.enabled: ingress to the manager's ports only, from the peers given for each.
test_chart_network_policy_admits_the_given_peers_on_the_managers_ports() {
  helm_template || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n kwarm)" || fail "render failed" || return
  ! grep -qx "kind: NetworkPolicy" <<<"$OUT" || fail "a NetworkPolicy by default" || return
  OUT="$("$HELM" template kwarm "$CHART_DIR" -n kwarm --set networkPolicy.enabled=true,rolloutGate.enabled=true \
    --set-json 'networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/24"}}]' \
    --set-json 'networkPolicy.healthFrom=[{"podSelector":{"matchLabels":{"app":"probe"}}}]' \
    --show-only templates/networkpolicy.yaml | python3 -c '
import json, sys, yaml
p = yaml.safe_load(sys.stdin)
print(json.dumps(p["spec"]["podSelector"]["matchLabels"], sort_keys=True))
for rule in p["spec"]["ingress"]:
    print(rule["ports"][0]["port"], json.dumps(rule.get("from"), sort_keys=True))
')" || fail "render failed" || return
  expect_output '{"app.kubernetes.io/component": "manager", "app.kubernetes.io/instance": "kwarm", "app.kubernetes.io/name": "kwarm-manager"}' &&
    expect_output 'metrics null' && expect_output 'webhook [{"ipBlock": {"cidr": "10.0.0.0/24"}}]' &&
    expect_output 'health [{"podSelector": {"matchLabels": {"app": "probe"}}}, {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "test"' || return
  refused /networkPolicy/metricsFrom/0 --set networkPolicy.enabled=true --set-json 'networkPolicy.metricsFrom=[{"podselector":{}}]'
}
