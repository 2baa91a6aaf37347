{{/* vim: set filetype=mustache: */}}

{{- define "streamtomo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource (kept short: suffixes are added). */}}
{{- define "streamtomo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 35 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 35 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 35 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streamtomo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "streamtomo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamtomo.name" .ctx | quote }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "streamtomo.labels" -}}
helm.sh/chart: {{ include "streamtomo.chart" .ctx | quote }}
{{ include "streamtomo.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service | quote }}
app.kubernetes.io/part-of: streamtomo
{{- /* commonLabels never holds a key of the above (templates/validate.yaml):
a duplicate key would override the selectors the NetworkPolicies match on */}}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Label keys the chart sets itself (streamtomo.labels, and the ingesters'
streamtomo.io/role and streamtomo.io/stream): Services, NetworkPolicies and the
HSDS data-node lookup select pods by them, so commonLabels may not set them. */}}
{{- define "streamtomo.reservedLabelKeys" -}}
{{- list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/part-of" "app.kubernetes.io/managed-by" "app.kubernetes.io/version" "helm.sh/chart" | toJson -}}
{{- end -}}

{{/* The application image reference. */}}
{{- define "streamtomo.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{- define "streamtomo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamtomo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* In-cluster DNS name of a Service: (dict "ctx" $ "name" "reducer"). */}}
{{- define "streamtomo.svcHost" -}}
{{- printf "%s-%s.%s.svc" (include "streamtomo.fullname" .ctx) .name .ctx.Release.Namespace -}}
{{- end -}}

{{/* The names a Service is reached by in the cluster, comma separated (a server
that refuses other Host names, against DNS rebinding, is given them):
(dict "ctx" $ "name" "live"). */}}
{{- define "streamtomo.svcNames" -}}
{{- $n := printf "%s-%s" (include "streamtomo.fullname" .ctx) .name -}}
{{- $ns := .ctx.Release.Namespace -}}
{{- printf "%s,%s.%s,%s.%s.svc,%s.%s.svc.%s" $n $n $ns $n $ns $n $ns .ctx.Values.clusterDomain -}}
{{- end -}}

{{- define "streamtomo.controllerUrl" -}}
{{- printf "http://%s:%d" (include "streamtomo.svcHost" (dict "ctx" . "name" "controller")) (int .Values.controller.service.port) -}}
{{- end -}}

{{- define "streamtomo.reducerDomainUrl" -}}
{{- printf "http://%s:%d" (include "streamtomo.svcHost" (dict "ctx" . "name" "live")) (int .Values.reducer.service.port) -}}
{{- end -}}

{{- define "streamtomo.hsdsUrl" -}}
{{- printf "http://%s:%d" (include "streamtomo.svcHost" (dict "ctx" . "name" "hsds")) (int .Values.hsds.service.port) -}}
{{- end -}}

{{/* Public URL of an ingress: (dict "ingress" .Values.x.ingress). */}}
{{- define "streamtomo.ingressUrl" -}}
{{- printf "%s://%s" (ternary "https" "http" (include "streamtomo.ingressTls" .ingress | eq "true")) .ingress.host -}}
{{- end -}}

{{/* "true" when an ingress is reached over TLS: the Ingress's own certificate
(tlsSecretName) or TLS ended before it (tlsTerminatedUpstream). Call with the
ingress values. */}}
{{- define "streamtomo.ingressTls" -}}
{{- or (ne (.tlsSecretName | default "") "") (.tlsTerminatedUpstream | default false) -}}
{{- end -}}

{{/* Public (hateoas) endpoint of HSDS. */}}
{{- define "streamtomo.hsdsPublicUrl" -}}
{{- if .Values.hsds.endpoint -}}
{{- .Values.hsds.endpoint -}}
{{- else if .Values.hsds.ingress.enabled -}}
{{- include "streamtomo.ingressUrl" (dict "ingress" .Values.hsds.ingress) -}}
{{- else -}}
{{- include "streamtomo.hsdsUrl" . -}}
{{- end -}}
{{- end -}}

{{/* The one origin HSDS allows for CORS: the viewer's. */}}
{{- define "streamtomo.corsDomain" -}}
{{- if .Values.hsds.corsDomain -}}
{{- .Values.hsds.corsDomain -}}
{{- else if and .Values.viewer.enabled .Values.viewer.ingress.enabled -}}
{{- include "streamtomo.ingressUrl" (dict "ingress" .Values.viewer.ingress) -}}
{{- else -}}
{{- printf "http://localhost:%d" (int .Values.viewer.port) -}}
{{- end -}}
{{- end -}}

{{/* Endpoint the viewer page reads. */}}
{{- define "streamtomo.viewerEndpoint" -}}
{{- if .Values.viewer.endpoint -}}
{{- .Values.viewer.endpoint -}}
{{- else if and .Values.hsds.enabled .Values.hsds.ingress.enabled -}}
{{- include "streamtomo.hsdsPublicUrl" . -}}
{{- else if .Values.reducer.ingress.enabled -}}
{{- include "streamtomo.ingressUrl" (dict "ingress" .Values.reducer.ingress) -}}
{{- else -}}
{{- include "streamtomo.reducerDomainUrl" . -}}
{{- end -}}
{{- end -}}

{{- define "streamtomo.hsdsSecretName" -}}
{{- default (printf "%s-hsds-auth" (include "streamtomo.fullname" .)) .Values.hsds.auth.existingSecret -}}
{{- end -}}

{{/* dranspose ingester class for an ingester entry. */}}
{{- define "streamtomo.ingesterClass" -}}
{{- if .ingesterClass -}}
{{- .ingesterClass -}}
{{- else if eq .format "stins" -}}
ZmqPullSingleIngester
{{- else if eq .format "dectris-stream1" -}}
ZmqPullEigerLegacyIngester
{{- else if eq .format "pcap" -}}
TcpPcapIngester
{{- else -}}
{{- fail (printf "unknown ingester format %q (allowed: stins, dectris-stream1, pcap)" .format) -}}
{{- end -}}
{{- end -}}

{{/* REDIS_URL environment variable. The chart's Redis: without its password,
which the services read from a file of the Secret (STREAMTOMO_REDIS_PASSWORD_FILE,
streamtomo.redisMount) into their own process: it is in no container's environment. */}}
{{- define "streamtomo.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  value: {{ printf "redis://%s:%d/0" (include "streamtomo.svcHost" (dict "ctx" . "name" "redis")) (int .Values.redis.port) | quote }}
- name: STREAMTOMO_REDIS_PASSWORD_FILE
  value: {{ include "streamtomo.redisPasswordFile" . | quote }}
{{- else if .Values.externalRedis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret | quote }}
      key: {{ .Values.externalRedis.existingSecretKey | quote }}
{{- else }}
- name: REDIS_URL
  value: {{ .Values.externalRedis.url | quote }}
{{- end }}
{{- end -}}

{{- define "streamtomo.redisSecretName" -}}
{{- default (printf "%s-redis" (include "streamtomo.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* The chart's Redis password as a file (pods that use the chart's Redis mount it). */}}
{{- define "streamtomo.redisPasswordFile" -}}
/etc/streamtomo/redis/{{ include "streamtomo.redisSecretKey" . }}
{{- end -}}

{{- define "streamtomo.redisMount" -}}
{{- if .Values.redis.enabled -}}
{{ include "streamtomo.secretFileMount" (dict "name" "redis") }}
{{- end -}}
{{- end -}}

{{- define "streamtomo.redisVolume" -}}
{{- if .Values.redis.enabled -}}
{{ include "streamtomo.secretFileVolume" (dict "name" "redis" "secret" (include "streamtomo.redisSecretName" .) "key" (include "streamtomo.redisSecretKey" .)) }}
{{- end -}}
{{- end -}}

{{- define "streamtomo.redisSecretKey" -}}
{{- ternary .Values.redis.auth.existingSecretKey "redis-password" (ne .Values.redis.auth.existingSecret "") -}}
{{- end -}}

{{- define "streamtomo.controlSecretName" -}}
{{- default (printf "%s-control" (include "streamtomo.fullname" .)) .Values.control.existingSecret -}}
{{- end -}}

{{- define "streamtomo.controlSecretKey" -}}
{{- ternary .Values.control.existingSecretKey "token" (ne .Values.control.existingSecret "") -}}
{{- end -}}

{{/* URL of the reducer's control API (live parameter changes; token required). */}}
{{- define "streamtomo.controlUrl" -}}
{{- printf "http://%s:%d" (include "streamtomo.svcHost" (dict "ctx" . "name" "control")) (int .Values.reducer.controlPort) -}}
{{- end -}}

{{/* The control token as a file (0400) in the reducer and the viewer. */}}
{{- define "streamtomo.controlVolume" -}}
- name: control-token
  secret:
    secretName: {{ include "streamtomo.controlSecretName" . | quote }}
    defaultMode: 0400
    items:
      - key: {{ include "streamtomo.controlSecretKey" . | quote }}
        path: token
{{- end -}}

{{- define "streamtomo.controlMount" -}}
- name: control-token
  mountPath: /etc/streamtomo/control
  readOnly: true
{{- end -}}

{{/* One key of a Secret as a read-only file (0400) at /etc/streamtomo/<name>/<key>:
passwords reach the process as files, never in its environment (inherited by its
children, shown in /proc). dict: name, secret, key */}}
{{- define "streamtomo.secretFileVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret | quote }}
    defaultMode: 0400
    items:
      - key: {{ .key | quote }}
        path: {{ .key | quote }}
{{- end -}}

{{- define "streamtomo.secretFileMount" -}}
- name: {{ .name }}
  mountPath: /etc/streamtomo/{{ .name }}
  readOnly: true
{{- end -}}

{{/* Does the viewer read the chart's HSDS (and so need the viewer account)? */}}
{{/* "true" when URL is this release's Service NAME on PORT, by any of its in-cluster
names (streamtomo.svcNames), with or without a final slash: an endpoint written
http://R-streamtomo-hsds:5101 or with a "/" was no longer the chart's HSDS (no viewer
account, no egress policy). Call with (dict "ctx" $ "url" URL "name" "hsds" "port" P). */}}
{{- define "streamtomo.isService" -}}
{{- $u := urlParse .url -}}
{{- $name := regexReplaceAll ":[0-9]+$" $u.host "" -}}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" -}}
{{- $names := splitList "," (include "streamtomo.svcNames" (dict "ctx" .ctx "name" .name)) -}}
{{- if and (eq $u.scheme "http") (has $name $names) (eq $port (toString .port)) (has $u.path (list "" "/")) -}}
true
{{- end -}}
{{- end -}}

{{- define "streamtomo.viewerReadsHsds" -}}
{{- $endpoint := include "streamtomo.viewerEndpoint" . -}}
{{- $chartHsds := include "streamtomo.isService" (dict "ctx" . "url" $endpoint "name" "hsds" "port" .Values.hsds.service.port) -}}
{{- if and .Values.hsds.enabled (or (eq (trimSuffix "/" $endpoint) (trimSuffix "/" (include "streamtomo.hsdsPublicUrl" .))) $chartHsds) -}}
true
{{- end -}}
{{- end -}}

{{/* Pods of the pipeline itself: controller, ingesters, workers, reducer
(NetworkPolicy peers of the cluster-internal ports). */}}
{{- define "streamtomo.pipelinePeers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [controller, worker, reducer]
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
      streamtomo.io/role: ingester
{{- end -}}

{{/* Environment shared by every application container but the viewer (which
needs no Redis). */}}
{{- define "streamtomo.commonEnv" -}}
{{ include "streamtomo.redisEnv" . | trim }}
{{ include "streamtomo.baseEnv" . }}
{{- end -}}

{{- define "streamtomo.baseEnv" -}}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
- name: NUMBA_CACHE_DIR
  value: /tmp/numba-cache
{{- end -}}

{{/* numba's threads: the container's CPU limit (rounded up), not every CPU of the
node, whose pools would spin against each other's; with one thread the kernels take
their serial variants (streamtomo.pipeline.numba_runtime.parallel_pays). The
argument is the container's name. */}}
{{- define "streamtomo.numbaThreadsEnv" -}}
- name: NUMBA_NUM_THREADS
  valueFrom:
    resourceFieldRef:
      containerName: {{ . }}
      resource: limits.cpu
      divisor: "1"
{{- end -}}

{{/* Pod-template annotation that rolls the pods when the pipeline changes. */}}
{{- define "streamtomo.pipelineChecksum" -}}
checksum/pipeline: {{ include (print .Template.BasePath "/pipeline-configmap.yaml") . | sha256sum }}
{{- end -}}

{{- define "streamtomo.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit | quote }}
{{- end -}}

{{- define "streamtomo.pipelineVolume" -}}
- name: pipeline
  configMap:
    name: {{ include "streamtomo.fullname" . }}-pipeline
- name: scripts
  configMap:
    name: {{ include "streamtomo.fullname" . }}-scripts
    defaultMode: 0555
{{- end -}}

{{- define "streamtomo.pipelineMounts" -}}
- name: pipeline
  mountPath: /etc/streamtomo/pipeline
  readOnly: true
- name: scripts
  mountPath: /etc/streamtomo/scripts
  readOnly: true
{{- end -}}

{{/* Exec probe: the dranspose service is registered in Redis (its key has a
10 s TTL refreshed by the service). (dict "kind" "worker" "name" "$(WORKER_NAME)") */}}
{{- define "streamtomo.registeredProbe" -}}
exec:
  command:
    - python
    - /etc/streamtomo/scripts/registered.py
    - {{ .kind }}
    - {{ .name | quote }}
{{- end -}}

{{/* Standard pod scheduling block: pass the component's values. */}}
{{- define "streamtomo.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Ingress; call with (dict "ctx" $ "component" "viewer" "ingress" .Values.viewer.ingress "paths" (list (dict "path" "/" "type" "Prefix")) "port" "http"). */}}
{{- define "streamtomo.ingress" -}}
{{- $fullname := include "streamtomo.fullname" .ctx -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $fullname }}-{{ .component }}
  labels:
    {{- include "streamtomo.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  {{- with .ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .ingress.className }}
  ingressClassName: {{ . | quote }}
  {{- end }}
  {{- if .ingress.tlsSecretName }}
  tls:
    - hosts: [{{ .ingress.host | quote }}]
      secretName: {{ .ingress.tlsSecretName | quote }}
  {{- end }}
  rules:
    - host: {{ .ingress.host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .type }}
            backend:
              service:
                name: {{ $fullname }}-{{ $.component }}
                port:
                  name: {{ $.port }}
          {{- end }}
{{- end -}}

{{/* The enabled ingesters, each merged over ingesterDefaults, as JSON:
{"key": {...}}. Use: fromJson (include "streamtomo.ingesters" .) */}}
{{- define "streamtomo.ingesters" -}}
{{- $out := dict -}}
{{- range $key, $entry := .Values.ingesters -}}
{{- $enabled := ternary $entry.enabled true (hasKey $entry "enabled") -}}
{{- if $enabled -}}
{{- /* A key the entry sets replaces the default, so nodeSelector: {},
tolerations: [] or extraEnv: [] clear it (sprig's merge would fill an empty value
from the defaults); resources alone is merged key by key (an entry can raise one
limit). */ -}}
{{- $merged := deepCopy $.Values.ingesterDefaults -}}
{{- range $k, $v := $entry -}}
{{- if kindIs "invalid" $v -}}
{{- else if and (eq $k "resources") (kindIs "map" $v) (kindIs "map" $merged.resources) -}}
{{- $_ := set $merged $k (merge (deepCopy $v) (deepCopy $merged.resources)) -}}
{{- else -}}
{{- $_ := set $merged $k (deepCopy $v) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out $key $merged -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The pipeline parameters as JSON: values.pipeline plus the two the chart
owns (domain, controller_url). Use: fromJson (include "streamtomo.pipeline" .) */}}
{{- define "streamtomo.pipeline" -}}
{{- $own := dict "domain" .Values.reducer.domain "controller_url" (include "streamtomo.controllerUrl" .) -}}
{{- toJson (merge $own (deepCopy .Values.pipeline)) -}}
{{- end -}}

{{/* The passwords of the Secrets the chart generates (RELEASE-streamtomo-redis,
RELEASE-streamtomo-hsds-auth), as JSON {"redis": {...}, "hsds": {...}}: each the
value given, else the Secret's current one (lookup: kept across upgrades), else
random. With a salt for the checksum annotations (checksum-salt), kept in the
Secret the same way; where there is none yet and every password of the Secret is
given in the values, derived from them with a slow KDF (derivePassword: scrypt),
so that renders without lookup (helm template, GitOps) agree; else random. Made
once per render and kept in the root context, which every template of the chart
shares: the Secret and the checksums of the pods that read it must see the same
random values (each randAlphaNum call differs). */}}
{{- define "streamtomo.generatedSecrets" -}}
{{- if not (hasKey . "streamtomoGeneratedSecrets") -}}
{{- $out := dict -}}
{{- if and .Values.redis.enabled (not .Values.redis.auth.existingSecret) -}}
{{- $old := (lookup "v1" "Secret" .Release.Namespace (include "streamtomo.redisSecretName" .)).data | default dict -}}
{{- $password := .Values.redis.auth.password -}}
{{- if and (not $password) (hasKey $old "redis-password") -}}
{{- $password = index $old "redis-password" | b64dec -}}
{{- end -}}
{{- if not $password -}}
{{- $password = randAlphaNum 32 -}}
{{- end -}}
{{- $salt := index $old "checksum-salt" | default "" | b64dec -}}
{{- if and (not $salt) .Values.redis.auth.password -}}
{{- $salt = derivePassword 1 "maximum" .Values.redis.auth.password (include "streamtomo.fullname" .) "checksum-salt/redis" -}}
{{- end -}}
{{- if not $salt -}}
{{- $salt = randAlphaNum 32 -}}
{{- end -}}
{{- $_ := set $out "redis" (dict "redis-password" $password "checksum-salt" $salt) -}}
{{- end -}}
{{- if and .Values.hsds.enabled (not .Values.hsds.auth.existingSecret) -}}
{{- $a := .Values.hsds.auth -}}
{{- $old := (lookup "v1" "Secret" .Release.Namespace (include "streamtomo.hsdsSecretName" .)).data | default dict -}}
{{- $pw := dict -}}
{{- range $key, $given := dict "admin-password" $a.adminPassword "writer-password" $a.writerPassword "viewer-password" $a.viewerPassword -}}
{{- if $given -}}
{{- $_ := set $pw $key $given -}}
{{- else if hasKey $old $key -}}
{{- $_ := set $pw $key (index $old $key | b64dec) -}}
{{- else -}}
{{- $_ := set $pw $key (randAlphaNum 24) -}}
{{- end -}}
{{- end -}}
{{- $salt := index $old "checksum-salt" | default "" | b64dec -}}
{{- if and (not $salt) $a.adminPassword $a.writerPassword $a.viewerPassword -}}
{{- $salt = derivePassword 1 "maximum" (printf "%s:%s:%s" $a.adminPassword $a.writerPassword $a.viewerPassword) (include "streamtomo.fullname" .) "checksum-salt/hsds" -}}
{{- end -}}
{{- if not $salt -}}
{{- $salt = randAlphaNum 32 -}}
{{- end -}}
{{- $_ := set $pw "checksum-salt" $salt -}}
{{- $_ := set $out "hsds" $pw -}}
{{- end -}}
{{- $_ := set . "streamtomoGeneratedSecrets" $out -}}
{{- end -}}
{{- toJson .streamtomoGeneratedSecrets -}}
{{- end -}}

{{/* HSDS's password file: one user:password line per account. */}}
{{- define "streamtomo.hsdsPasswdTxt" -}}
{{- $a := .Values.hsds.auth -}}
{{- $pw := (fromJson (include "streamtomo.generatedSecrets" .)).hsds -}}
{{ $a.adminUser }}:{{ index $pw "admin-password" }}
{{ $a.writerUser }}:{{ index $pw "writer-password" }}
{{ $a.viewerUser }}:{{ index $pw "viewer-password" }}
{{- end -}}

{{/* Pod-template annotations that roll the pods reading a password at start
when it changes (Redis or HSDS would otherwise keep the old one while restarted
clients read the new one, or the reverse). From the chart-generated Secret's data,
salted with its checksum-salt: annotations are readable by whoever may read pods,
and an unsalted hash of a chosen password could be guessed offline. Nothing for an
existingSecret: the chart cannot see it (helm template has no cluster, and a
Secret changed outside Helm triggers no upgrade); its name and key are in the pod
spec already, and a password changed in it needs `kubectl rollout restart` of the
same Deployments. */}}

{{/* Redis's password: for Redis and the pipeline's pods (controller, ingesters,
workers, reducer), which read it at start. */}}
{{- define "streamtomo.redisChecksum" -}}
{{- if and .Values.redis.enabled (not .Values.redis.auth.existingSecret) -}}
{{- $g := (fromJson (include "streamtomo.generatedSecrets" .)).redis -}}
checksum/redis-secret: {{ printf "%s:%s" (index $g "checksum-salt") (index $g "redis-password") | sha256sum }}
{{- end -}}
{{- end -}}

{{/* An HSDS password as an annotation: (dict "ctx" $ "name" "checksum/hsds-writer"
"key" "writer-password"), or "key" "passwd.txt" for HSDS itself (every account). */}}
{{- define "streamtomo.hsdsChecksum" -}}
{{- $ctx := .ctx -}}
{{- if and $ctx.Values.hsds.enabled (not $ctx.Values.hsds.auth.existingSecret) -}}
{{- $g := (fromJson (include "streamtomo.generatedSecrets" $ctx)).hsds -}}
{{- $data := ternary (include "streamtomo.hsdsPasswdTxt" $ctx) (index $g .key | default "") (eq .key "passwd.txt") -}}
{{ .name }}: {{ printf "%s:%s:%s" (index $g "checksum-salt") .key $data | sha256sum }}
{{- end -}}
{{- end -}}

{{- /* A kept volume's claim (recordings, results): the existing claim named, or the chart's. */}}
{{- define "streamtomo.claimVolume" -}}
- name: {{ .name }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-%s" (include "streamtomo.fullname" .ctx) .name) (index .ctx.Values .name).existingClaim | quote }}
{{- end }}
