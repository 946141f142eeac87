{{/* Names, labels and shared pieces of the Portcullis chart. */}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* True (non-empty) in external-URL mode: only webhook configurations are rendered. */}}
{{- define "portcullis.external" -}}
{{- if .Values.webhook.url }}true{{ end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "portcullis.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existing" }}
{{- required "certificates.existingSecret is required when certificates.mode is existing" .Values.certificates.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "portcullis.fullname" .) }}
{{- end }}
{{- end }}

{{/* The DNS names the serving certificate must cover. */}}
{{- define "portcullis.dnsNames" -}}
{{- $svc := include "portcullis.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* The policies that are enabled, as a JSON map name -> policy. */}}
{{- define "portcullis.enabledPolicies" -}}
{{- $out := dict }}
{{- range $name, $p := .Values.policies }}
{{- if and $p (ne (toString (dig "enabled" true $p)) "false") }}
{{- $_ := set $out $name $p }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Self-signed serving certificate: a CA and a certificate it signed, generated
once per render (memoized in .Values, so the Secret and the webhook caBundle
agree) and reused from the existing Secret on upgrades.
Returns JSON {ca, crt, key}, each base64-encoded PEM.
*/}}
{{- define "portcullis.selfSignedTLS" -}}
{{- if not (hasKey .Values "__portcullisGeneratedTLS") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "portcullis.tlsSecretName" .) }}
{{- $data := dig "data" dict ($secret | default dict) }}
{{- $tls := dict }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $tls = dict "ca" (index $data "ca.crt") "crt" (index $data "tls.crt") "key" (index $data "tls.key") }}
{{- else }}
{{- $days := int .Values.certificates.selfSigned.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "portcullis.fullname" .)) $days }}
{{- $names := include "portcullis.dnsNames" . | fromJsonArray }}
{{- $cert := genSignedCert (index $names 2) nil $names $days $ca }}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "__portcullisGeneratedTLS" $tls }}
{{- end }}
{{- get .Values "__portcullisGeneratedTLS" | toJson }}
{{- end }}

{{/* webhook.caBundle as base64 of PEM, whichever of the two it was given as. */}}
{{- define "portcullis.givenCABundle" -}}
{{- $ca := .Values.webhook.caBundle | trim }}
{{- if hasPrefix "-----BEGIN" $ca }}
{{- $ca | b64enc }}
{{- else }}
{{- $ca }}
{{- end }}
{{- end }}

{{/* The clientConfig of one policy's webhook; call with (list $ $name $path). */}}
{{- define "portcullis.clientConfig" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $kind := index . 2 }}
{{- $v := $root.Values }}
{{- if $v.webhook.url }}
url: {{ printf "%s/%s/%s" (trimSuffix "/" $v.webhook.url) $kind $name | quote }}
{{- $_ := required "webhook.caBundle is required with webhook.url" $v.webhook.caBundle }}
caBundle: {{ include "portcullis.givenCABundle" $root }}
{{- else }}
service:
  name: {{ include "portcullis.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ printf "/%s/%s" $kind $name | quote }}
  port: {{ $v.service.port }}
{{- if eq $v.certificates.mode "self-signed" }}
caBundle: {{ (include "portcullis.selfSignedTLS" $root | fromJson).ca }}
{{- else if eq $v.certificates.mode "existing" }}
{{- $_ := required "webhook.caBundle is required when certificates.mode is existing" $v.webhook.caBundle }}
caBundle: {{ include "portcullis.givenCABundle" $root }}
{{- end }}
{{- end }}
{{- end }}

{{/* One webhook entry; call with (list $ $name $policy "validate"|"mutate"). */}}
{{- define "portcullis.webhook" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $p := index . 2 }}
{{- $kind := index . 3 }}
{{- $v := $root.Values }}
{{- $w := $p.webhook | default dict }}
{{- $excluded := concat (list "kube-system" $root.Release.Namespace) ($v.webhook.excludeNamespaces | default list) | uniq }}
{{- $nsSel := $w.namespaceSelector | default dict }}
- name: {{ printf "%s.%s" $name $v.webhook.nameSuffix | quote }}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: {{ $w.failurePolicy | default $p.failurePolicy | default "Fail" }}
  matchPolicy: {{ $w.matchPolicy | default "Equivalent" }}
  {{- $timeoutSeconds := $w.timeoutSeconds | default $v.webhook.timeoutSeconds | default (ternary 2 3 (eq $kind "mutate")) }}
  {{- $timeoutMs := $p.timeoutMs | default 1000 }}
  {{- if ge (int $timeoutMs) (mul (int $timeoutSeconds) 1000 | int) }}
  {{- fail (printf "policies.%s.timeoutMs (%d) must be below its webhook's timeoutSeconds (%d s): the API server gives up before the policy's deadline" $name (int $timeoutMs) (int $timeoutSeconds)) }}
  {{- end }}
  timeoutSeconds: {{ $timeoutSeconds }}
  {{- if eq $kind "mutate" }}
  reinvocationPolicy: {{ $w.reinvocationPolicy | default "IfNeeded" }}
  {{- end }}
  clientConfig:
    {{- include "portcullis.clientConfig" (list $root $name $kind) | trim | nindent 4 }}
  rules:
    {{- required (printf "policies.%s.webhook.rules is required" $name) $w.rules | toYaml | nindent 4 }}
  namespaceSelector:
    {{- with $nsSel.matchLabels }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values:
          {{- toYaml $excluded | nindent 10 }}
      {{- with $nsSel.matchExpressions }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  {{- with $w.objectSelector }}
  objectSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.matchConditions }}
  matchConditions:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Read-only RBAC rules for the kinds the enabled policies are granted
(`policies.<name>.context`): one rule per API group, listing the resources
(the plural of each kind, or the entry's `resource` where the plural is
irregular), verbs get/list/watch. Returns JSON: a list of rules, empty when
no policy looks anything up.
*/}}
{{- define "portcullis.lookupRules" -}}
{{- $byGroup := dict }}
{{- range $name, $p := (include "portcullis.enabledPolicies" . | fromJson) }}
{{- range $p.context }}
{{- $api := required (printf "policies.%s.context: an entry has no apiVersion" $name) .apiVersion }}
{{- $kind := required (printf "policies.%s.context: an entry has no kind" $name) .kind }}
{{- $group := "" }}
{{- if contains "/" $api }}
{{- $group = index (splitList "/" $api) 0 }}
{{- end }}
{{- $resource := .resource | default (include "portcullis.plural" $kind) }}
{{- $resources := get $byGroup $group | default list }}
{{- $_ := set $byGroup $group (append $resources $resource | uniq | sortAlpha) }}
{{- end }}
{{- end }}
{{- $rules := list }}
{{- range $group := keys $byGroup | sortAlpha }}
{{- $rules = append $rules (dict "apiGroups" (list $group) "resources" (get $byGroup $group) "verbs" (list "get" "list" "watch")) }}
{{- end }}
{{- toJson $rules }}
{{- end }}

{{/* The resource name of a kind: lowercase plural, as the API server forms it for regular kinds. */}}
{{- define "portcullis.plural" -}}
{{- $k := lower . }}
{{- if or (hasSuffix "s" $k) (hasSuffix "x" $k) (hasSuffix "ch" $k) (hasSuffix "sh" $k) }}
{{- printf "%ses" $k }}
{{- else if and (hasSuffix "y" $k) (not (regexMatch "[aeiou]y$" $k)) }}
{{- printf "%sies" (trimSuffix "y" $k) }}
{{- else }}
{{- printf "%ss" $k }}
{{- end }}
{{- end }}

{{/*
Mebibytes in a Kubernetes memory quantity (Ki, Mi, Gi, Ti, k, M, G, or bytes).
*/}}
{{- define "portcullis.mebibytes" -}}
{{- $q := toString . }}
{{- if hasSuffix "Ti" $q }}{{ mul (trimSuffix "Ti" $q | int64) 1048576 }}
{{- else if hasSuffix "Gi" $q }}{{ mul (trimSuffix "Gi" $q | int64) 1024 }}
{{- else if hasSuffix "Mi" $q }}{{ trimSuffix "Mi" $q | int64 }}
{{- else if hasSuffix "Ki" $q }}{{ div (trimSuffix "Ki" $q | int64) 1024 }}
{{- else if hasSuffix "G" $q }}{{ div (mul (trimSuffix "G" $q | int64) 1000000000) 1048576 }}
{{- else if hasSuffix "M" $q }}{{ div (mul (trimSuffix "M" $q | int64) 1000000) 1048576 }}
{{- else if hasSuffix "k" $q }}{{ div (mul (trimSuffix "k" $q | int64) 1000) 1048576 }}
{{- else if regexMatch "^[0-9]+$" $q }}{{ div ($q | int64) 1048576 }}
{{- else }}{{ fail (printf "resources.limits.memory %q: give it in Ki, Mi, Gi, Ti, k, M, G or bytes" $q) }}
{{- end }}
{{- end }}

{{/*
The guest-memory budget in MiB: server.memoryBudgetMiB, else the container's
memory limit less the server's own overhead and its request buffers; empty
when neither is set (the server then does not check).
*/}}
{{- define "portcullis.memoryBudgetMiB" -}}
{{- $s := .Values.server }}
{{- if $s.memoryBudgetMiB }}
{{- $s.memoryBudgetMiB | int64 }}
{{- else if and .Values.resources .Values.resources.limits .Values.resources.limits.memory }}
{{- $limit := include "portcullis.mebibytes" .Values.resources.limits.memory | int64 }}
{{- $budget := sub $limit (add $s.memoryOverheadMiB $s.maxBufferedMiB) }}
{{- if le (int64 $budget) 0 }}
{{- fail (printf "resources.limits.memory (%d MiB) leaves nothing for policies after server.memoryOverheadMiB + server.maxBufferedMiB" $limit) }}
{{- end }}
{{- $budget }}
{{- end }}
{{- end }}
