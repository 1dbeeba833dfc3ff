{{/* Names: <release>-fedward unless the release is already called fedward. */}}
{{- define "fedward.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedward.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fedward.labels" -}}
{{ include "fedward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "coordinator") */}}
{{- define "fedward.componentLabels" -}}
{{ include "fedward.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fedward.componentSelector" -}}
{{ include "fedward.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "image" .Values.x.image "ctx" $).
     global.imageRegistry wins (air-gapped mirrors); a digest wins over a tag. */}}
{{- define "fedward.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry -}}
{{- $ref := .image.repository -}}
{{- if $registry -}}{{- $ref = printf "%s/%s" $registry $ref -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{- define "fedward.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod and container hardening shared by every workload of the chart. */}}
{{- define "fedward.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fedward.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The broker the coordinator and gateways connect to. */}}
{{- define "fedward.brokerHost" -}}
{{- if eq .Values.broker.mode "bundled" -}}
{{- printf "%s-broker.%s.svc" (include "fedward.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "externalBroker.host is required with broker.mode=external" .Values.externalBroker.host -}}
{{- end -}}
{{- end -}}

{{- define "fedward.brokerPort" -}}
{{- if eq .Values.broker.mode "bundled" -}}{{ .Values.broker.port }}{{- else -}}{{ .Values.externalBroker.port }}{{- end -}}
{{- end -}}

{{/* Secret with the coordinator's MQTT client certificate (ca.crt, tls.crt, tls.key). */}}
{{- define "fedward.coordinatorMqttSecret" -}}
{{- if and (eq .Values.broker.mode "bundled") (eq .Values.broker.tls.mode "generate") -}}
{{- printf "%s-coordinator-mqtt" (include "fedward.fullname" .) -}}
{{- else -}}
{{- required "coordinator.mqttCredentials.existingSecret is required unless the chart generates the broker's TLS (broker.mode=bundled, broker.tls.mode=generate)" .Values.coordinator.mqttCredentials.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "fedward.operatorTokenSecret" -}}
{{- .Values.coordinator.operatorToken.existingSecret | default (printf "%s-operator-token" (include "fedward.fullname" .)) -}}
{{- end -}}

{{- define "fedward.postgresSecret" -}}
{{- .Values.postgresql.auth.existingSecret | default (printf "%s-postgresql" (include "fedward.fullname" .)) -}}
{{- end -}}

{{/* Database environment of the coordinator and the migration job.
     Bundled PostgreSQL: the password reaches libpq as PGPASSWORD (from the
     Secret), never inside a URL in the manifest. */}}
{{- define "fedward.databaseEnv" -}}
{{- if eq .Values.database.mode "bundled" }}
- name: FEDWARD_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s@%s-postgresql.%s.svc:5432/%s" .Values.postgresql.auth.username (include "fedward.fullname" .) .Release.Namespace .Values.postgresql.auth.database | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fedward.postgresSecret" . }}
      key: {{ .Values.postgresql.auth.passwordKey }}
{{- else if eq .Values.database.mode "external" }}
- name: FEDWARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalDatabase.existingSecret is required with database.mode=external" .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.urlKey }}
{{- else }}
- name: FEDWARD_DATABASE_URL
  value: "sqlite:////var/lib/fedward/coordinator.db"
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress rules shared by several components. */}}
{{- define "fedward.np.dns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dnsNamespace }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
{{- define "fedward.np.toBroker" -}}
{{- if eq .Values.broker.mode "bundled" }}
- to:
    - podSelector:
        matchLabels:
          {{- include "fedward.componentSelector" (dict "ctx" . "component" "broker") | nindent 10 }}
  ports:
    - protocol: TCP
      port: 8883
{{- else }}
- to:
    {{- range .Values.externalBroker.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .Values.externalBroker.port }}
{{- end }}
{{- end -}}
