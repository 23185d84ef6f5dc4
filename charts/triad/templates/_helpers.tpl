{{/* Chart name. */}}
{{- define "triad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; "triad" when the release is called triad. */}}
{{- define "triad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "triad.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "triad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "triad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triad.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The controller Deployments: one running every role, or one per role (roles.split).
Returns YAML: a list of {component, roles, replicas, resources}.
*/}}
{{- define "triad.components" -}}
{{- if .Values.roles.split -}}
{{- range $role := list "scheduler" "pools" "supervisor" }}
{{- $cfg := index $.Values.roles $role }}
- component: {{ $role }}
  roles: [{{ $role }}]
  replicas: {{ $cfg.replicas }}
  resources: {{ toJson (default $.Values.resources $cfg.resources) }}
{{- end }}
{{- else }}
- component: controller
  roles: [scheduler, pools, supervisor]
  replicas: {{ .Values.roles.replicas }}
  resources: {{ toJson .Values.resources }}
{{- end -}}
{{- end -}}
