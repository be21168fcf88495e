{{/*
Names, labels and small shared snippets of the Lectern chart.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "lectern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified name: "<release>-<chart>", or the release name alone when it already
contains the chart name; truncated to 63 characters (DNS label) minus room for suffixes.
*/}}
{{- define "lectern.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "lectern.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "lectern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lectern.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Standard labels of every resource; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "lectern.labels" -}}
helm.sh/chart: {{ include "lectern.chart" .ctx }}
{{ include "lectern.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: lectern
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). Call with (dict "ctx" $ "image" .Values.image.operator). */}}
{{- define "lectern.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces (a list); the release namespace when none are given. */}}
{{- define "lectern.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* The namespace the intake creates VideoTranscodes in: intake.namespace, else the first watched one. */}}
{{- define "lectern.intake.namespace" -}}
{{- default (include "lectern.watchNamespaces" . | fromJsonArray | first) .Values.intake.namespace -}}
{{- end -}}

{{/* Image pull secret names (a list of strings; values may be names or {name: …}). */}}
{{- define "lectern.imagePullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- if kindIs "string" . -}}
{{- $names = append $names . -}}
{{- else -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* ServiceAccount names. */}}
{{- define "lectern.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "lectern.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- define "lectern.intake.serviceAccountName" -}}
{{- default (printf "%s-intake" (include "lectern.fullname" .)) .Values.intake.serviceAccount.name -}}
{{- end -}}

{{/* kopf peering: on when the operator runs more than one replica. */}}
{{- define "lectern.peering.enabled" -}}
{{- if gt (int .Values.operator.replicas) 1 -}}true{{- end -}}
{{- end -}}
{{- define "lectern.peering.name" -}}
{{- default (include "lectern.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{/* Secrets: name and key of the MongoDB URI, the Redis URL, the Cloudinary URL. */}}
{{- define "lectern.mongo.secretName" -}}
{{- if .Values.mongo.existingSecret -}}
{{- .Values.mongo.existingSecret -}}
{{- else if .Values.mongo.url -}}
{{- printf "%s-mongo" (include "lectern.fullname" .) -}}
{{- else -}}
{{- fail "mongo: set mongo.existingSecret (a Secret with the MongoDB URI) or, for development, mongo.url" -}}
{{- end -}}
{{- end -}}
{{- define "lectern.mongo.secretKey" -}}
{{- if .Values.mongo.existingSecret -}}{{ .Values.mongo.existingSecretKey }}{{- else -}}MONGO_URL{{- end -}}
{{- end -}}

{{- define "lectern.redis.secretName" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecret -}}
{{- else if .Values.redis.url -}}
{{- printf "%s-redis" (include "lectern.fullname" .) -}}
{{- else -}}
{{- fail "redis: set redis.existingSecret (a Secret with the Redis URL) or redis.url" -}}
{{- end -}}
{{- end -}}
{{- define "lectern.redis.secretKey" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecretKey }}{{- else -}}REDIS_URL{{- end -}}
{{- end -}}

{{/* The Cloudinary cloud reported URLs must belong to: cloudinary.cloudName, else the cloud of the development url. */}}
{{- define "lectern.cloudinary.cloudName" -}}
{{- if .Values.cloudinary.cloudName -}}
{{- .Values.cloudinary.cloudName -}}
{{- else if .Values.cloudinary.url -}}
{{- (urlParse .Values.cloudinary.url).host -}}
{{- end -}}
{{- end -}}

{{- define "lectern.cloudinary.secretName" -}}
{{- if .Values.cloudinary.existingSecret -}}
{{- .Values.cloudinary.existingSecret -}}
{{- else if .Values.cloudinary.url -}}
{{- printf "%s-cloudinary" (include "lectern.fullname" .) -}}
{{- else -}}
{{- fail "cloudinary: set cloudinary.existingSecret (a Secret in every watched namespace) or, for development, cloudinary.url" -}}
{{- end -}}
{{- end -}}

{{/* The intake's health and metrics ports: its own when set, else the shared healthPort / metrics.port. */}}
{{- define "lectern.intake.healthPort" -}}
{{- default .Values.healthPort .Values.intake.healthPort | int -}}
{{- end -}}
{{- define "lectern.intake.metricsPort" -}}
{{- default .Values.metrics.port .Values.intake.metricsPort | int -}}
{{- end -}}

{{/* Checks that cannot be expressed in values.schema.json. */}}
{{- define "lectern.validate" -}}
{{- if eq (int .Values.healthPort) (int .Values.metrics.port) -}}
{{- fail "healthPort and metrics.port must differ" -}}
{{- end -}}
{{- if eq (include "lectern.intake.healthPort" .) (include "lectern.intake.metricsPort" .) -}}
{{- fail "the intake's health and metrics ports must differ" -}}
{{- end -}}
{{- $_ := include "lectern.mongo.secretName" . -}}
{{- $_ := include "lectern.redis.secretName" . -}}
{{- $_ := include "lectern.cloudinary.secretName" . -}}
{{- end -}}

{{/* Env of the operator container besides the ConfigMap: its identity among kopf peers. */}}
{{- define "lectern.podEnv" -}}
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* Pod-level fields shared by the operator and intake Deployments; call with (dict "ctx" $ "component" .Values.operator). */}}
{{- define "lectern.podScheduling" -}}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- $pull := include "lectern.imagePullSecretNames" .ctx | fromJsonArray }}
{{- if $pull }}
imagePullSecrets:
{{- range $pull }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The API server the transcode pods may reach, as JSON {cidrs, ports}: networkPolicy.apiServer.cidrs,
     else the endpoints of the `kubernetes` Service looked up at install (EndpointSlice default/kubernetes;
     `helm template` has none: then no rule, and NOTES says so). */}}
{{- define "lectern.networkPolicy.apiServer" -}}
{{- $cfg := .Values.networkPolicy.apiServer -}}
{{- $cidrs := list -}}
{{- $ports := list -}}
{{- range $cfg.ports }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- if $cfg.cidrs -}}
{{- $cidrs = $cfg.cidrs -}}
{{- else -}}
{{- $slice := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes" -}}
{{- range (($slice).endpoints | default list) -}}
{{- range .addresses -}}
{{- $cidrs = append $cidrs (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) -}}
{{- end -}}
{{- end -}}
{{- range (($slice).ports | default list) -}}
{{- if not (has (int .port) $ports) }}{{ $ports = append $ports (int .port) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- dict "cidrs" (uniq $cidrs) "ports" $ports | toJson -}}
{{- end -}}
