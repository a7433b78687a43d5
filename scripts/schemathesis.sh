#!/usr/bin/env bash
# Property-based API testing of the admin API from its own /openapi.json with schemathesis
# (PyPI): no 5xx, and every answer conforms to the documented status codes, content types and
# schemas. Starts a throwaway gateway on loopback with a fixture admin password.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/sdk-venv
[ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q schemathesis; }
# Release: Argon2id at its production cost is slow in a debug build.
cargo build --release --locked -q -p cortex-cli
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export CORTEX_DATA_DIR="$work/data" CORTEX_LISTEN="127.0.0.1:$port" CORTEX_CONFIG="" RUST_LOG=warn
export CORTEX_ADMIN_PASSWORD="Schema-Fixture-Passphrase-82b"
./target/release/cortex serve 2>"$work/log" &
pid=$!
for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:$port/readyz >/dev/null || { echo "cortex did not start:"; cat "$work/log"; exit 1; }
token="$(curl -s -X POST http://127.0.0.1:$port/admin/auth/login -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$CORTEX_ADMIN_PASSWORD\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
# Logout, password change and user edits would end or lock the session mid-run.
"$venv/bin/schemathesis" run http://127.0.0.1:$port/openapi.json -H "Authorization: Bearer $token" \
  --max-examples "${MAX_EXAMPLES:-50}" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
  --exclude-path /admin/auth/logout --exclude-path /admin/auth/password --exclude-path-regex '/admin/users/\{id\}'
