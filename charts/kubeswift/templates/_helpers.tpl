{{- define "kubeswift.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubeswift.labels" -}}
app.kubernetes.io/name: kubeswift-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubeswift.selectorLabels" -}}
app.kubernetes.io/name: kubeswift-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubeswift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubeswift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubeswift.progressSecret" -}}
{{- default (printf "%s-progress-key" (include "kubeswift.fullname" .)) .Values.progressKey.existingSecret -}}
{{- end -}}

{{/* The rules the operator needs in every watched namespace. No Secret reads: the
     progress-token Secrets are only written (server-side apply). */}}
{{- define "kubeswift.rules" -}}
- apiGroups: ["kubeswift.io"]
  resources: ["swifttrainjobs", "swiftdeployments", "swiftsamplejobs"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["kubeswift.io"]
  resources: ["swifttrainjobs/status", "swiftdeployments/status", "swiftsamplejobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["scheduling.volcano.sh", "scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch"]
{{- end -}}
