{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "kwarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespace of the DaemonSet (NAMESPACE): configMap.namespace, else the release namespace. */}}
{{- define "kwarm.targetNamespace" -}}
{{- .Values.configMap.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* DAEMONSET_NAME: configMap.daemonsetName, else deploymentName. */}}
{{- define "kwarm.daemonsetName" -}}
{{- .Values.configMap.daemonsetName | default .Values.deploymentName -}}
{{- end -}}

{{/*
The DAEMONSET_NAME the manager runs with, when the chart knows it: extraEnv's (the pod's env wins
over the ConfigMap), else the ConfigMap's when the chart renders it; empty with an existing
ConfigMap (configMap.create=false), whose content the chart cannot see.
*/}}
{{- define "kwarm.knownDaemonsetName" -}}
{{- $fromEnv := "" -}}
{{- range .Values.extraEnv -}}
{{- if and (eq (toString .name) "DAEMONSET_NAME") .value }}{{ $fromEnv = trim (toString .value) }}{{ end -}}
{{- end -}}
{{- if $fromEnv -}}
{{- $fromEnv -}}
{{- else if .Values.configMap.create -}}
{{- include "kwarm.daemonsetName" . -}}
{{- end -}}
{{- end -}}

{{/* Names of cluster-scoped objects: unique per release namespace and release. */}}
{{- define "kwarm.clusterName" -}}
{{- printf "kwarm-%s-%s" .Release.Namespace .Release.Name -}}
{{- end -}}

{{- define "kwarm.serviceAccountName" -}}
{{- required "serviceAccount.name is required" .Values.serviceAccount.name -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "kwarm.labels" -}}
helm.sh/chart: {{ include "kwarm.chart" . }}
app.kubernetes.io/part-of: kwarm
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "kwarm.selectorLabels" . }}
{{- end -}}

{{/*
Selector of the manager's pods. Not app.kubernetes.io/name=kwarm: that label with
app.kubernetes.io/instance=<DaemonSet name> selects the holder pods, and a release named like
the DaemonSet must not make the manager's pods look like holders.
*/}}
{{- define "kwarm.selectorLabels" -}}
app.kubernetes.io/name: kwarm-manager
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}

{{/* Whether image.repository names kubernetes-image-puller's image (any registry or mirror). */}}
{{- define "kwarm.pullerImage" -}}
{{- $last := .Values.image.repository | default "" | splitList "/" | last | default "" -}}
{{- if contains "kubernetes-image-puller" ($last | lower) }}true{{ end -}}
{{- end -}}

{{/* The image image.* names, as the puller chart writes it (for NOTES and the log). */}}
{{- define "kwarm.givenImage" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default "latest" | toString) -}}
{{- end -}}

{{/* The manager's image reference: image.*, or kwarmImage.* when that is empty or the puller's. */}}
{{- define "kwarm.image" -}}
{{- $i := .Values.image -}}
{{- if or (not $i.repository) (include "kwarm.pullerImage" .) -}}
{{- $i = .Values.kwarmImage -}}
{{- end -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository ($i.tag | default (printf "v%s" .Chart.AppVersion) | toString) -}}
{{- end -}}
{{- end -}}

{{/* A scalar as text; nil is empty (toString would print "<nil>"). */}}
{{/* A boolean value as the manager reads it (src/config.rs parse_bool, after trimming): "true"
for true/1/yes, "false" for false/0/no (any case, blanks around it ignored), else the value as
given (empty: unset; anything else the manager refuses at start). The chart's RBAC and checks use
it, so "True", " yes " or 0 mean to them what they mean to the manager. */}}
{{- define "kwarm.bool" -}}
{{- $v := lower (trim (include "kwarm.str" .)) -}}
{{- if has $v (list "true" "1" "yes") }}true{{ else if has $v (list "false" "0" "no") }}false{{ else }}{{ $v }}{{ end -}}
{{- end -}}

{{- define "kwarm.str" -}}
{{- if kindIs "invalid" . -}}
{{- else if kindIs "float64" . -}}
{{- /* YAML numbers arrive as float64: 1 must stay "1", not "1e+00" */ -}}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
A JSON variable given as a JSON string (kubernetes-image-puller style) or as YAML; unset or empty:
the default. Arguments: (list VALUE DEFAULT).
*/}}
{{- define "kwarm.json" -}}
{{- $value := index . 0 -}}
{{- $default := index . 1 -}}
{{- if kindIs "invalid" $value -}}
{{- $default -}}
{{- else if kindIs "string" $value -}}
{{- $value | default $default -}}
{{- else -}}
{{- toJson $value -}}
{{- end -}}
{{- end -}}

{{/* A list variable given as a string or as a YAML list, joined with the separator. */}}
{{- define "kwarm.list" -}}
{{- $value := index . 0 -}}
{{- $sep := index . 1 -}}
{{- if kindIs "slice" $value -}}
{{- join $sep $value -}}
{{- else -}}
{{- include "kwarm.str" $value -}}
{{- end -}}
{{- end -}}

{{/* Whether the DaemonSet lives in the release namespace (then the Deployment can own it). */}}
{{- define "kwarm.sameNamespace" -}}
{{- if eq (include "kwarm.targetNamespace" .) .Release.Namespace -}}true{{- end -}}
{{- end -}}

{{/* WATCH_NAMESPACES: configMap.watchNamespaces; "*" is the release namespace without cluster-wide RBAC. */}}
{{- define "kwarm.watchNamespaces" -}}
{{- $list := include "kwarm.list" (list .Values.configMap.watchNamespaces ",") | trim -}}
{{- if and (not .Values.rbac.clusterWide) (or (eq $list "*") (eq $list "")) -}}
{{- .Release.Namespace -}}
{{- else -}}
{{- $list -}}
{{- end -}}
{{- end -}}

{{/*
ROLLOUT_GATE from rolloutGate.enabled and rolloutGate.mode: "true" (all), "opt-in", or empty when
the rollout gate is off.
*/}}
{{- define "kwarm.rolloutGate" -}}
{{- $g := .Values.rolloutGate | default dict -}}
{{- $enabled := include "kwarm.str" $g.enabled | lower -}}
{{- $mode := include "kwarm.str" $g.mode | lower | default "all" -}}
{{- if not (has $enabled (list "true" "false" "")) -}}
{{- fail (printf "rolloutGate.enabled must be true or false, not %q (rolloutGate.mode chooses all or opt-in)" $enabled) -}}
{{- end -}}
{{- if not (has $mode (list "all" "opt-in")) -}}
{{- fail (printf "rolloutGate.mode must be all or opt-in, not %q" $mode) -}}
{{- end -}}
{{- if eq $enabled "true" -}}
{{- ternary "opt-in" "true" (eq $mode "opt-in") -}}
{{- end -}}
{{- end -}}

{{/* Whether the rollout gate's serving certificate comes from cert-manager. */}}
{{- define "kwarm.webhookCertManager" -}}
{{- $enabled := dig "certManager" "enabled" false (.Values.rolloutGate | default dict) -}}
{{- if and (include "kwarm.rolloutGate" .) (eq (include "kwarm.str" $enabled) "true") -}}true{{- end -}}
{{- end -}}

{{/* WEBHOOK_SERVICE: the webhook's Service, in the release namespace. */}}
{{- define "kwarm.webhookService" -}}
{{- printf "%s-webhook" .Values.deploymentName -}}
{{- end -}}

{{/* WEBHOOK_SECRET: the Secret the manager keeps its webhook certificate in (without cert-manager). */}}
{{- define "kwarm.webhookSecret" -}}
{{- printf "%s-webhook-tls" .Values.deploymentName -}}
{{- end -}}

{{/* The Secret cert-manager writes the webhook certificate to (with rolloutGate.certManager). */}}
{{- define "kwarm.webhookCertSecret" -}}
{{- printf "%s-webhook-cert" .Values.deploymentName -}}
{{- end -}}

{{/* WEBHOOK_CONFIGURATION: the cluster-scoped MutatingWebhookConfiguration the manager keeps. */}}
{{- define "kwarm.webhookConfiguration" -}}
{{- printf "kwarm-rollout-gate-%s-%s" .Release.Namespace .Release.Name -}}
{{- end -}}

{{/* Where the cert-manager certificate is mounted (WEBHOOK_CERT_DIR). */}}
{{- define "kwarm.webhookCertDir" -}}
/etc/kwarm/webhook
{{- end -}}

{{/*
The rollout gate's variables, as JSON (an empty object when the gate is off): in the ConfigMap the
chart creates, else in the environment of the manager and of the ungate hook.
*/}}
{{- define "kwarm.rolloutGateVars" -}}
{{- $mode := include "kwarm.rolloutGate" . -}}
{{- $vars := dict -}}
{{- if $mode -}}
{{- $g := .Values.rolloutGate -}}
{{- $_ := set $vars "ROLLOUT_GATE" $mode -}}
{{- $_ = set $vars "ROLLOUT_GATE_TIMEOUT" (include "kwarm.str" $g.timeout) -}}
{{- $_ = set $vars "WEBHOOK_BIND_ADDRESS" (printf ":%v" (include "kwarm.str" $g.port)) -}}
{{- $_ = set $vars "WEBHOOK_URL" (include "kwarm.str" $g.url) -}}
{{- $_ = set $vars "WEBHOOK_SERVICE" (include "kwarm.webhookService" .) -}}
{{- $_ = set $vars "WEBHOOK_CONFIGURATION" (include "kwarm.webhookConfiguration" .) -}}
{{- if include "kwarm.webhookCertManager" . -}}
{{- $_ = set $vars "WEBHOOK_CERT_DIR" (include "kwarm.webhookCertDir" .) -}}
{{- else -}}
{{- $_ = set $vars "WEBHOOK_SECRET" (include "kwarm.webhookSecret" .) -}}
{{- end -}}
{{- end -}}
{{- toJson $vars -}}
{{- end -}}
