{{/*
Names, labels and the small decisions several templates share.
*/}}

{{- define "multinic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 42 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: 42 characters at most, so that "<fullname>-controller-metrics"
is still a valid Service name (63).
*/}}
{{- define "multinic.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "multinic.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "multinic.labels" -}}
helm.sh/chart: {{ include "multinic.chart" . }}
app.kubernetes.io/name: {{ include "multinic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multinic
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "controller"). */}}
{{- define "multinic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multinic.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: (dict "root" $ "component" "agent"). */}}
{{- define "multinic.componentLabels" -}}
{{ include "multinic.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "multinic.controller.fullname" -}}
{{- printf "%s-controller" (include "multinic.fullname" .) }}
{{- end }}

{{- define "multinic.agent.fullname" -}}
{{- printf "%s-agent" (include "multinic.fullname" .) }}
{{- end }}

{{- define "multinic.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "multinic.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agents' ServiceAccount. Never "default": the issuer certifies a node for
any token of this account, so it must be the agents' alone.
*/}}
{{- define "multinic.agent.serviceAccountName" -}}
{{- $name := default (include "multinic.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- if not .Values.agent.serviceAccount.create }}
{{- $name = required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name }}
{{- end }}
{{- if eq $name "default" }}
{{- fail "agent.serviceAccount.name must not be \"default\": the issuer gives a node certificate to any pod with a token of this ServiceAccount" }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The in-cluster DNS name of the controller's gRPC Service. */}}
{{- define "multinic.controller.host" -}}
{{- printf "%s.%s.svc" (include "multinic.controller.fullname" .) .Release.Namespace }}
{{- end }}

{{/* DNS names of the controller's server certificate. */}}
{{- define "multinic.controller.dnsNames" -}}
{{- $svc := include "multinic.controller.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) (printf "%s.%s" $svc $ns) $svc }}
{{- toJson (concat $names .Values.tls.extraDNSNames) }}
{{- end }}

{{/* An image reference: (dict "image" .Values.controller.image "root" $). */}}
{{- define "multinic.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Names of the TLS objects. */}}
{{- define "multinic.caBundleName" -}}
{{- printf "%s-ca-bundle" (include "multinic.fullname" .) }}
{{- end }}

{{/* The Secret with the CA that signs node certificates (tls.crt, tls.key). */}}
{{- define "multinic.issuerCASecret" -}}
{{- if eq .Values.tls.mode "existingSecrets" }}
{{- required "tls.existingSecrets.issuerCA is required with tls.mode=existingSecrets" .Values.tls.existingSecrets.issuerCA }}
{{- else }}
{{- printf "%s-issuer-ca" (include "multinic.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret with the controller's server certificate (tls.crt, tls.key). */}}
{{- define "multinic.controllerTLSSecret" -}}
{{- if eq .Values.tls.mode "existingSecrets" }}
{{- required "tls.existingSecrets.controllerTLS is required with tls.mode=existingSecrets" .Values.tls.existingSecrets.controllerTLS }}
{{- else }}
{{- printf "%s-controller-tls" (include "multinic.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Whether the controller's --client-ca comes from the chart's ConfigMap
("true") or from the node-signing CA Secret's tls.crt ("").
*/}}
{{- define "multinic.clientCAFromConfigMap" -}}
{{- if or (eq .Values.tls.mode "helm") .Values.tls.clientCABundle }}true{{ end }}
{{- end }}

{{/* The database Secret's name, and whether the chart makes it. */}}
{{- define "multinic.databaseSecret" -}}
{{- default (printf "%s-database" (include "multinic.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{/*
How the controller reaches the database: "url" (DATABASE_URL from a Secret)
or "parts" (DB_HOST ... and DB_PASSWORD from a Secret). Fails on an
incomplete configuration.
*/}}
{{- define "multinic.databaseMode" -}}
{{- $db := .Values.database }}
{{- if and $db.url $db.existingSecret }}
{{- fail "database: set either url or existingSecret (with existingSecretUrlKey), not both" }}
{{- else if or $db.url (and $db.existingSecret $db.existingSecretUrlKey) }}
{{- "url" }}
{{- else if $db.host }}
{{- if not (or $db.password $db.existingSecret) }}
{{- fail "database: set database.password or database.existingSecret (the Secret holding the password)" }}
{{- end }}
{{- "parts" }}
{{- else }}
{{- fail "database: set database.host (with user, name and password or existingSecret), database.url, or database.existingSecret with existingSecretUrlKey" }}
{{- end }}
{{- end }}

{{/* The apply mode whose privileges the agent gets: applyMode, or for auto
what the agent will choose (netplan: netlink; wicked, networkmanager, or a
backend only the node can tell: host). */}}
{{- define "multinic.agent.privileges" -}}
{{- $a := .Values.agent }}
{{- if ne $a.applyMode "auto" }}{{ $a.applyMode }}
{{- else if eq $a.backend "netplan" }}netlink
{{- else }}host
{{- end }}
{{- end }}

{{/* Capabilities the agent adds for its apply mode. */}}
{{- define "multinic.agent.capabilities" -}}
{{- toJson (index .Values.agent.capabilities (include "multinic.agent.privileges" .)) }}
{{- end }}

{{/* Host folders the agent mounts under /host, by backend, each with its
hostPath type: with backend auto the chart cannot tell which folders a node
has, so every one is DirectoryOrCreate (the unused backends' are created
empty); a named backend's folders must exist (Directory), except
NetworkManager's /etc/sysconfig/network-scripts (the predecessor's ifcfg
files, read to take them over), which RHEL 10 and SUSE 16 no longer have. */}}
{{- define "multinic.agent.hostDirs" -}}
{{- $backend := .Values.agent.backend }}
{{- $must := eq $backend "auto" | ternary "DirectoryOrCreate" "Directory" }}
{{- $dirs := list }}
{{- if has $backend (list "auto" "netplan") }}
{{- $dirs = append $dirs (dict "path" "/etc/netplan" "type" $must) }}
{{- end }}
{{- if has $backend (list "auto" "wicked") }}
{{- $dirs = append $dirs (dict "path" "/etc/sysconfig/network" "type" $must) }}
{{- $dirs = append $dirs (dict "path" "/etc/udev/rules.d" "type" $must) }}
{{- end }}
{{- if has $backend (list "auto" "networkmanager") }}
{{- $dirs = append $dirs (dict "path" "/etc/NetworkManager/system-connections" "type" $must) }}
{{- $dirs = append $dirs (dict "path" "/etc/systemd/network" "type" $must) }}
{{- $dirs = append $dirs (dict "path" "/etc/sysconfig/network-scripts" "type" "DirectoryOrCreate") }}
{{- end }}
{{- toJson $dirs }}
{{- end }}

{{/*
PromQL label matchers of the controller's and the agents' series, as the
chart's ServiceMonitor and PodMonitor label them (the Prometheus Operator
names a ServiceMonitor's job after the Service, a PodMonitor's
"<namespace>/<name>"), unless metrics.prometheusRule sets its own.
*/}}
{{- define "multinic.rules.controllerSelector" -}}
{{- with .Values.metrics.prometheusRule.controllerSelector }}{{ . }}{{ else -}}
job="{{ include "multinic.controller.fullname" . }}-metrics", namespace="{{ .Release.Namespace }}"
{{- end }}
{{- end }}

{{- define "multinic.rules.agentSelector" -}}
{{- with .Values.metrics.prometheusRule.agentSelector }}{{ . }}{{ else -}}
job="{{ .Release.Namespace }}/{{ include "multinic.agent.fullname" . }}", namespace="{{ .Release.Namespace }}"
{{- end }}
{{- end }}

{{/*
The part every alert shares: for, labels, and the runbook link.
(dict "root" $ "name" "MultinicDatabaseUnreachable" "alert" .Values...databaseUnreachable)
*/}}
{{- define "multinic.rules.common" -}}
for: {{ .alert.for }}
labels:
  severity: {{ .alert.severity | quote }}
  {{- with .root.Values.metrics.prometheusRule.alertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "multinic.rules.runbook" -}}
runbook_url: {{ printf "%s#%s" .root.Values.metrics.prometheusRule.runbookUrl (lower .name) | quote }}
{{- end }}
