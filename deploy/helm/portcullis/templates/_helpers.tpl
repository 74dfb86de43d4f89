{{/* The release's base name. */}}
{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{/* Selector labels of one component (control, gateway). */}}
{{- define "portcullis.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "portcullis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "portcullis.controlService" -}}
{{ include "portcullis.fullname" . }}-control
{{- end -}}

{{/* The control plane's URL, as sidecars and the gateway reach it. */}}
{{- define "portcullis.controlUrl" -}}
https://{{ include "portcullis.controlService" . }}.{{ .Release.Namespace }}.svc:8482
{{- end -}}

{{- define "portcullis.serviceAccount" -}}
{{- if .Values.control.serviceAccount.create -}}
{{ .Values.control.serviceAccount.name | default (printf "%s-control" (include "portcullis.fullname" .)) }}
{{- else -}}
{{ .Values.control.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* The generated tokens: kept from the Secret already in the cluster across upgrades;
made once per render (every template that includes this sees the same ones). */}}
{{- define "portcullis.tokens" -}}
{{- if not (hasKey .Values "__generatedTokens") -}}
{{- $name := printf "%s-tokens" (include "portcullis.fullname" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $tokens := dict "admin" (randAlphaNum 48) "sidecar" (randAlphaNum 48) -}}
{{- if and $existing $existing.data -}}
{{- $tokens = dict "admin" (index $existing.data "admin-token" | b64dec) "sidecar" (index $existing.data "sidecar-token" | b64dec) -}}
{{- end -}}
{{- $_ := set .Values "__generatedTokens" $tokens -}}
{{- end -}}
{{- toYaml (get .Values "__generatedTokens") -}}
{{- end -}}

{{/* The admin API's certificate when the chart makes it: a CA and a serving certificate
(base64), kept from the Secret already in the cluster across upgrades; made once per render. */}}
{{- define "portcullis.generatedTls" -}}
{{- if not (hasKey .Values "__generatedTls") -}}
{{- $service := include "portcullis.controlService" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-tls" (include "portcullis.fullname" .)) -}}
{{- $tls := dict -}}
{{- if and $existing $existing.data -}}
{{- $tls = dict "ca" (index $existing.data "ca.crt") "cert" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") -}}
{{- else -}}
{{- $ca := genCA "portcullis-ca" 3650 -}}
{{- $names := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) -}}
{{- $cert := genSignedCert $service nil $names 825 $ca -}}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "cert" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__generatedTls" $tls -}}
{{- end -}}
{{- toYaml (get .Values "__generatedTls") -}}
{{- end -}}

{{/* The control plane's portcullis.yaml. */}}
{{- define "portcullis.controlConfig" -}}
{{- $ns := .Release.Namespace -}}
{{- $config := dict
  "admin" (dict "address" "0.0.0.0:8482" "tokens_file" "/etc/portcullis/tokens/admin-tokens"
    "tls" (dict "cert_file" "/etc/portcullis/tls/tls.crt" "key_file" "/etc/portcullis/tls/tls.key"))
  "ops" (dict "address" "0.0.0.0:8481")
  "data_dir" "/var/lib/portcullis"
  "log" (dict "format" "json")
  "auth" (dict "issuer" .Values.auth.issuer "jwks_url" .Values.auth.jwksUrl "audiences" .Values.auth.audiences)
  "inject" (dict
    "webhook" .Values.webhook.enabled
    "image" (include "portcullis.image" .)
    "image_pull_policy" .Values.image.pullPolicy
    "control_plane_url" (include "portcullis.controlUrl" .)
    "token_secret" "portcullis-sidecar-token"
    "ca_config_map" "portcullis-ca"
    "config_map" "portcullis-sidecar"
    "native_mode" (toString .Values.nativeMode)
    "kubernetes_version" (printf "%s.%s" .Capabilities.KubeVersion.Major (.Capabilities.KubeVersion.Minor | trimSuffix "+"))
    "ops_port" .Values.sidecar.opsPort
    "excluded_namespaces" (list "kube-system" "kube-node-lease" $ns))
-}}
{{- if .Values.control.store.postgres.urlSecret.name -}}
{{- $_ := set $config "store" (dict "postgres_url_file" "/etc/portcullis/store/url") -}}
{{- end -}}
{{- if .Values.control.policiesConfigMap -}}
{{- $_ := set $config "policies" (dict "dir" "/etc/portcullis/policies") -}}
{{- end -}}
{{- $events := dict -}}
{{- with .Values.control.events.redis -}}{{- if .url -}}
{{- $_ := set $events "redis" (dict "url" .url "stream" .stream "group" .group) -}}
{{- end -}}{{- end -}}
{{- with .Values.control.events.sqs -}}{{- if .queueUrl -}}
{{- $queue := dict "queue_url" .queueUrl -}}
{{- if .region }}{{- $_ := set $queue "region" .region -}}{{- end -}}
{{- $_ := set $events "sqs" (list $queue) -}}
{{- end -}}{{- end -}}
{{- if $events -}}{{- $_ := set $config "events" $events -}}{{- end -}}
{{- toYaml (mergeOverwrite $config (deepCopy .Values.control.config)) -}}
{{- end -}}

{{/* The portcullis.yaml of sidecars and the gateway (they follow the control plane). */}}
{{- define "portcullis.proxyConfig" -}}
{{- $config := dict
  "auth" (dict "issuer" .root.Values.auth.issuer "jwks_url" .root.Values.auth.jwksUrl "audiences" .root.Values.auth.audiences)
  "log" (dict "format" "json")
-}}
{{- toYaml (mergeOverwrite $config (deepCopy .extra)) -}}
{{- end -}}
