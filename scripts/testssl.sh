#!/usr/bin/env bash
# Checks Cortex's native TLS with testssl.sh (Debian package): protocols, cipher categories,
# ciphers per protocol and the usual vulnerabilities. Starts a throwaway gateway on a free
# loopback port with a throwaway self-signed certificate (made here, never committed).
#
#   ./scripts/testssl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh
command -v testssl >/dev/null || ensure_apt testssl.sh
cargo build --release --locked -q -p cortex-cli

work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export CORTEX_DATA_DIR="$work/data" CORTEX_LISTEN="127.0.0.1:$port" CORTEX_CONFIG="" RUST_LOG=warn
export CORTEX_TLS_CERT="$work/cert.pem" CORTEX_TLS_KEY="$work/key.pem"
export CORTEX_ADMIN_PASSWORD="Testssl-Fixture-Passphrase-5c1"
./target/release/cortex serve 2>"$work/log" &
pid=$!
for _ in $(seq 1 600); do curl -skf "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
curl -skf "https://127.0.0.1:$port/healthz" >/dev/null || { echo "cortex did not start:"; cat "$work/log"; exit 1; }

# -p protocols, -s cipher categories, -E ciphers per protocol, -U vulnerabilities, -S server
# defaults (certificate details are about the throwaway certificate and are not the point).
testssl --quiet --color 0 --warnings off -p -s -E -U "127.0.0.1:$port"
