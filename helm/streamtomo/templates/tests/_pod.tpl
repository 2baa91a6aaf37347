{{/* A `helm test` pod running one of files/scripts/check_*.py in the app
image. Call with (dict "ctx" $ "name" "controller" "script" "check_controller.py" "env" (list ...)). */}}
{{- define "streamtomo.testPod" -}}
{{- $ctx := .ctx -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "streamtomo.fullname" $ctx }}-test-{{ .name }}
  labels:
    {{- include "streamtomo.labels" (dict "ctx" $ctx "component" (printf "test-%s" .name)) | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: check
      image: {{ include "streamtomo.image" $ctx | quote }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      command: ["python", "/etc/streamtomo/scripts/{{ .script }}"]
      env:
        - name: TIMEOUT_S
          value: {{ $ctx.Values.tests.timeoutSeconds | quote }}
        - name: HOME
          value: /tmp
        {{- toYaml .env | nindent 8 }}
      resources:
        requests: {cpu: 50m, memory: 64Mi}
        limits: {cpu: 500m, memory: 256Mi}
      securityContext:
        {{- toYaml $ctx.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: scripts
          mountPath: /etc/streamtomo/scripts
          readOnly: true
        {{- with .secretFile }}
        {{- include "streamtomo.secretFileMount" . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    - name: scripts
      configMap:
        name: {{ include "streamtomo.fullname" $ctx }}-scripts
        defaultMode: 0555
    {{- with .secretFile }}
    {{- include "streamtomo.secretFileVolume" . | nindent 4 }}
    {{- end }}
{{- end -}}
