{{/* Labels every object of the chart carries. */}}
{{- define "llmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: llmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The operator pods' selector; also the webhook, sync and metrics Services'. */}}
{{- define "llmesh.selector" -}}
app.kubernetes.io/name: llmesh-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* An image reference: repository and tag (default: the chart's appVersion). */}}
{{- define "llmesh.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Whether the Prometheus Operator's API can take `kind` (or the check is skipped). */}}
{{- define "llmesh.monitoringApi" -}}
{{- if or .root.Values.monitoring.skipApiCheck (.root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind)) -}}
true
{{- end -}}
{{- end -}}

{{/* Namespaces the webhook never sees. */}}
{{- define "llmesh.excludedNamespaces" -}}
{{- toJson (concat (list "kube-system" "kube-public" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq) -}}
{{- end -}}
