#!/usr/bin/env bash
# Soak run: three `cortex serve` instances sharing PostgreSQL and Redis on loopback, driven for
# DURATION seconds with a steady open-loop mix (plain chat, streamed chat, model lists, and an
# admin create/revoke cycle every 5 s whose revocation is checked on a third instance). Prints
# a line every 10 s and a summary: errors (there should be none) and each instance's resident
# memory after warm-up against its peak (flat within 10 % passes). Exit status 0 on PASS.
#
#   ./scripts/soak.sh                       # 10 minutes at 150 requests/s
#   DURATION=120 WARMUP=30 RPS=100 ./scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

DURATION="${DURATION:-600}"
WARMUP="${WARMUP:-120}"
RPS="${RPS:-150}"
BASE_PORT="${BASE_PORT:-19200}"
DB="cortex_soak"

ensure_postgres
ensure_redis
log "building release binaries"
cargo build --release --locked -q -p cortex-cli -p cortex-testkit --bins

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" >/dev/null

./target/release/fake-upstream "127.0.0.1:$BASE_PORT" >"$work/upstream.out" &
pids+=($!)
cat >"$work/cortex.toml" <<TOML
[[providers]]
name = "fake"
base_url = "http://127.0.0.1:$BASE_PORT/v1"

[[models]]
name = "llama"
provider = "fake"
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
TOML

export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" REDIS_URL="redis://127.0.0.1:6379"
export CORTEX_CONFIG="$work/cortex.toml" CORTEX_MASTER_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export CORTEX_ADMIN_PASSWORD="Soak-Fixture-Passphrase-3e8a" RUST_LOG=warn
# The soak measures stability, not refusals: the default limits would refuse one key's load
# (limits still run, on Redis, for every request).
export RATE_LIMIT_RPS=100000 RATE_LIMIT_BURST=100000 MAX_CONCURRENT_STREAMS_PER_ID=10000

instances=() gateway_pids=()
for i in 1 2 3; do
  port=$((BASE_PORT + i))
  CORTEX_DATA_DIR="$work/node$i" CORTEX_LISTEN="127.0.0.1:$port" \
    ./target/release/cortex serve 2>"$work/node$i.log" &
  pid=$!
  pids+=("$pid") gateway_pids+=("$pid") instances+=("http://127.0.0.1:$port")
  # One at a time: the first migrates and creates the first admin.
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/node$i.log"; exit 1; }
done

token="$(curl -sf "${instances[0]}/admin/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$CORTEX_ADMIN_PASSWORD\"}" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')"
key="$(curl -sf "${instances[0]}/admin/keys" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"name":"soak","scopes":["chat"]}' | sed -E 's/.*"key":"([^"]+)".*/\1/')"

log "soak: ${DURATION}s at ${RPS} requests/s over 3 instances (warm-up ${WARMUP}s), $(nproc) cores"
set +e
./target/release/soak --instances "$(IFS=,; echo "${instances[*]}")" \
  --pids "$(IFS=,; echo "${gateway_pids[*]}")" --key "$key" --admin-token "$token" \
  --duration-sec "$DURATION" --warmup-sec "$WARMUP" --rps "$RPS"
status=$?
set -e

log "audit chain after the soak"
CORTEX_DATA_DIR="$work/verifier" ./target/release/cortex audit verify || status=1
for i in 1 2 3; do
  n="$(grep -c '"level":"ERROR"' "$work/node$i.log" || true)"
  echo "instance $i logged ${n:-0} error lines"
  [ "${n:-0}" = 0 ] || { status=1; grep '"level":"ERROR"' "$work/node$i.log" | head -5; }
done
exit "$status"
