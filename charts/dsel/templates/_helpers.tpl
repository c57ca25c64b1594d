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
# Exactly what the operator calls (tests/controller/test_rbac.py compares both ways).
# The DataSelections: read and watched by kopf; patched only to drop the finalizer of older
# releases from a resource being deleted.
- apiGroups: ["dsel.dev"]
  resources: ["dataselections"]
  verbs: ["get", "list", "watch", "patch"]
# Phase, conditions, progress and the selection summary.
- apiGroups: ["dsel.dev"]
  resources: ["dataselections/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion on child Jobs/ConfigMaps need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
- apiGroups: ["dsel.dev"]
  resources: ["dataselections/finalizers"]
  verbs: ["update"]
# One Job per stage (an Indexed Job for extraction), owned by the DataSelection; suspended when
# its pods never start. Garbage collection deletes them with their DataSelection.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "list", "watch", "patch"]
# Each selection's arguments document.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get"]
# Events for phase changes and failures; the Job controller's FailedCreate Events on its Jobs.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# Worker pods: why they wait or failed; their logs when a failed one left no message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The credentials Secret a DataSelection names, to read its selection.json as its pods do.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Kueue's Workloads of queued Jobs: why a queue does not admit them.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
{{- end }}

{{/* kopf's cluster-scoped reads: which CRDs exist (and when they change). */}}
{{- define "dsel.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
