{{/* Chart name, overridable. */}}
{{- define "dsel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-dsel, or the release name when it already says dsel. */}}
{{- define "dsel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pod; never change them on upgrade (selectors are immutable). */}}
{{- define "dsel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dsel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "dsel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dsel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: dsel
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "dsel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dsel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "dsel.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* [{name: a}, {name: b}] -> "a,b" (LocalObjectReferences as a comma-separated setting). */}}
{{- define "dsel.joinNames" -}}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
{{- join "," $names }}
{{- end }}

{{/*
What the operator does in a namespace it serves; the same rules become a ClusterRole
(all namespaces) or one Role per watched namespace. Verbs are exactly what the operator and
kopf use: no wildcards, no secrets (credentials reach pods through secretKeyRef/envFrom, which
the kubelet resolves, not the operator).
*/}}
{{- define "dsel.namespacedRules" -}}
# The DataSelections themselves: watched, patched by kopf (finalizers, progress annotations).
- apiGroups: ["dsel.dev"]
  resources: ["dataselections"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Phase, conditions, progress and the selection summary.
- apiGroups: ["dsel.dev"]
  resources: ["dataselections/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on child Jobs/ConfigMaps need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
- apiGroups: ["dsel.dev"]
  resources: ["dataselections/finalizers"]
  verbs: ["update"]
# One Job per stage (an Indexed Job for extraction), owned by the DataSelection.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete", "patch"]
# Each Job's arguments document.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "list", "watch", "delete", "patch"]
# Events for phase changes and failures (kopf posts core/v1 Events; events.k8s.io for clients
# that use the newer API).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Worker pods: their status explains a failed shard, their logs the error message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}

{{/* kopf's cluster-scoped reads: which CRDs exist (and when they change). */}}
{{- define "dsel.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
