{{/* Names, labels, image, security contexts and the rendered steward.yaml. */}}

{{- define "steward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release name, plus the chart name unless the release name already contains it.
Truncated so that "<fullname>-controller" still fits a 63-character label value. */}}
{{- define "steward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "steward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (list $ "node"). */}}
{{- define "steward.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "steward.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's resources: (list $ "node"). */}}
{{- define "steward.labels" -}}
{{- $ := index . 0 -}}
helm.sh/chart: {{ include "steward.chart" $ }}
{{ include "steward.selectorLabels" . }}
app.kubernetes.io/part-of: steward
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
{{- with $.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "steward.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of one component: (list $ "node"). */}}
{{- define "steward.serviceAccountName" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- $values := index $.Values $component }}
{{- if $.Values.serviceAccount.create }}
{{- printf "%s-%s" (include "steward.fullname" $) $component }}
{{- else }}
{{- required (printf "%s.serviceAccountName is required when serviceAccount.create is false" $component) $values.serviceAccountName }}
{{- end }}
{{- end }}

{{/* Pod security context: (list $ runAsRoot). Only the node agent passes true. */}}
{{- define "steward.podSecurityContext" -}}
{{- $ := index . 0 }}
{{- $root := index . 1 }}
{{- $ids := $.Values.securityContext }}
{{- if $root -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
{{- else -}}
runAsNonRoot: true
{{- if not (kindIs "invalid" $ids.runAsUser) }}
runAsUser: {{ $ids.runAsUser }}
{{- end }}
{{- if not (kindIs "invalid" $ids.runAsGroup) }}
runAsGroup: {{ $ids.runAsGroup }}
{{- end }}
{{- if not (kindIs "invalid" $ids.fsGroup) }}
fsGroup: {{ $ids.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: (list $ runAsRoot). Root here still has no capability. */}}
{{- define "steward.containerSecurityContext" -}}
{{- $root := index . 1 -}}
runAsNonRoot: {{ not $root }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Where the config file is mounted; every component reads it through STEWARD_CONFIG. */}}
{{- define "steward.configPath" -}}/etc/steward/steward.yaml{{- end }}
{{- define "steward.statePath" -}}/var/lib/steward{{- end }}
{{- define "steward.authTokenDir" -}}/etc/steward-notifier-auth{{- end }}
{{- define "steward.signingSecretDir" -}}/etc/steward-slack-signing{{- end }}
{{- define "steward.authTokenPath" -}}{{ include "steward.authTokenDir" . }}/token{{- end }}

{{/* The Secret holding the notifier's bearer token: the user's, or the one the chart makes. */}}
{{- define "steward.notifierAuthSecret" -}}
{{- default (printf "%s-notifier-auth" (include "steward.fullname" .)) .Values.notifier.auth.existingSecret }}
{{- end }}
{{- define "steward.notifierAuthKey" -}}
{{- if .Values.notifier.auth.existingSecret }}{{ .Values.notifier.auth.key }}{{ else }}token{{ end }}
{{- end }}

{{/* true when the notifier keeps its outbox in SQLite (one replica, a local volume). */}}
{{- define "steward.notifierOnSqlite" -}}
{{- if hasPrefix "sqlite" (include "steward.config" . | fromYaml | dig "state" "url" "") }}true{{ end }}
{{- end }}
{{- define "steward.podResourcesPath" -}}/var/lib/kubelet/pod-resources{{- end }}

{{/* Keys of config the chart owns: [config path, value, the values key that sets it].
The RBAC, ports and mounts the chart renders depend on them, so config may not disagree. */}}
{{- define "steward.ownedConfig" -}}
{{- $h := .Values.hygiene }}
{{- $owned := list
  (list "node.listen" (printf "0.0.0.0:%v" .Values.node.port) "node.port")
  (list "controller.listen" (printf "0.0.0.0:%v" .Values.controller.port) "controller.port")
  (list "notifier.listen" (printf "0.0.0.0:%v" .Values.notifier.port) "notifier.port")
  (list "controller.apply" .Values.controller.apply "controller.apply")
  (list "hygiene.idle_gpus.enabled" $h.idleGpus.enabled "hygiene.idleGpus.enabled")
  (list "hygiene.idle_gpus.apply" $h.idleGpus.apply "hygiene.idleGpus.apply")
  (list "hygiene.idle_gpus.pod_action" $h.idleGpus.podAction "hygiene.idleGpus.podAction")
  (list "hygiene.stale_images.enabled" $h.staleImages.enabled "hygiene.staleImages.enabled")
  (list "hygiene.stale_images.apply" $h.staleImages.apply "hygiene.staleImages.apply")
  (list "hygiene.orphaned_buckets.enabled" $h.orphanedBuckets.enabled "hygiene.orphanedBuckets.enabled")
  (list "hygiene.orphaned_buckets.apply" $h.orphanedBuckets.apply "hygiene.orphanedBuckets.apply")
  (list "hygiene.orphaned_buckets.secret_namespaces" ($h.secrets.namespaces | default list) "hygiene.secrets.namespaces")
  (list "node.pod_resources_socket" (printf "%s/kubelet.sock" (include "steward.podResourcesPath" .)) "node.podResources.hostPath")
}}
{{- if .Values.notifier.enabled }}
{{- $owned = append $owned (list "notifier.auth_token_file" (include "steward.authTokenPath" .) "notifier.auth") }}
{{- if .Values.notifier.slackActions.enabled }}
{{- $owned = append $owned (list "slack.signing_secret_file" (printf "%s/signing-secret" (include "steward.signingSecretDir" .)) "notifier.slackActions") }}
{{- end }}
{{- end }}
{{- toJson $owned }}
{{- end }}

{{/* Keys of config the chart defaults when config leaves them unset. */}}
{{- define "steward.defaultConfig" -}}
{{- toJson (list
  (list "state.url" (printf "sqlite:///%s/state.db" (include "steward.statePath" .)))
  (list "finops.out_dir" (printf "%s/finops-reports" (include "steward.statePath" .)))
  (list "controller.lease_name" (printf "%s-controller" (include "steward.fullname" .)))
  (list "hygiene.kill_switch_configmap" (printf "%s-hygiene" (include "steward.fullname" .)))
) }}
{{- end }}

{{/* steward.yaml as a YAML map: values.config, then the defaults where unset, then the
owned keys (failing where config sets one to something else). */}}
{{- define "steward.config" -}}
{{- $config := deepCopy (default (dict) .Values.config) }}
{{- range $entry := include "steward.ownedConfig" . | fromJsonArray }}
{{- $path := splitList "." (index $entry 0) }}
{{- $want := index $entry 1 }}
{{- $cur := $config }}
{{- $found := true }}
{{- range $key := $path }}
{{- if and $found (kindIs "map" $cur) (hasKey $cur $key) }}
{{- $cur = index $cur $key }}
{{- else }}
{{- $found = false }}
{{- end }}
{{- end }}
{{- if and $found (ne (toString $cur) (toString $want)) }}
{{- fail (printf "config.%s is set by the chart from %s (%v); set that value instead of config.%s (got %v)" (index $entry 0) (index $entry 2) $want (index $entry 0) $cur) }}
{{- end }}
{{- include "steward.setPath" (list $config $path $want true) }}
{{- end }}
{{- range $entry := include "steward.defaultConfig" . | fromJsonArray }}
{{- include "steward.setPath" (list $config (splitList "." (index $entry 0)) (index $entry 1) false) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Set a dotted path in a map, creating sections: (list map pathList value overwrite). */}}
{{- define "steward.setPath" -}}
{{- $node := index . 0 }}
{{- $path := index . 1 }}
{{- range $key := initial $path }}
{{- if not (kindIs "map" (index $node $key)) }}
{{- $_ := set $node $key (dict) }}
{{- end }}
{{- $node = index $node $key }}
{{- end }}
{{- if or (index . 3) (not (hasKey $node (last $path))) }}
{{- $_ := set $node (last $path) (index . 2) }}
{{- end }}
{{- end }}

{{/* One value of the rendered config by dotted path (for RBAC resource names). */}}
{{- define "steward.configValue" -}}
{{- $cur := include "steward.config" (index . 0) | fromYaml }}
{{- range $key := splitList "." (index . 1) }}
{{- $cur = index $cur $key }}
{{- end }}
{{- $cur }}
{{- end }}

{{- define "steward.anyHygiene" -}}
{{- $h := .Values.hygiene }}
{{- if or $h.idleGpus.enabled $h.staleImages.enabled $h.orphanedBuckets.enabled }}true{{ end }}
{{- end }}

{{/* A hygiene job may write only when the controller and the job are both in apply mode. */}}
{{- define "steward.jobApplies" -}}
{{- $ := index . 0 }}
{{- $job := index . 1 }}
{{- if and $.Values.controller.apply $job.enabled $job.apply }}true{{ end }}
{{- end }}

{{/* The persistent state volume of a component: (list $ "controller"). */}}
{{- define "steward.stateVolume" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- $p := (index $.Values $component).persistence -}}
- name: state
{{- if $p.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-%s-state" (include "steward.fullname" $) $component) $p.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: 1Gi
{{- end }}
{{- end }}

{{/* Environment every component shares. */}}
{{- define "steward.commonEnv" -}}
- name: STEWARD_CONFIG
  value: {{ include "steward.configPath" . }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}

{{- define "steward.slackEnv" -}}
{{- $ := index . 0 }}
{{- if $.Values.slack.existingSecret -}}
- name: SLACK_BOT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.slack.existingSecret }}
      key: {{ $.Values.slack.key }}
      optional: {{ index . 1 }}
{{- end }}
{{- end }}
