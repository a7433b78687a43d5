#!/usr/bin/env bash
# The usage export streams with bounded memory: a SQLite database with ROWS usage records
# (default 1,000,000), `GET /admin/usage/export` of all of them through a real `cortex serve`,
# and the server's resident memory before and during the download (sampled from /proc every
# 50 ms, and its VmHWM peak). Loopback only; nothing is left running.
#
#   ./scripts/bench-usage-export.sh
#   ROWS=200000 ./scripts/bench-usage-export.sh
#   CORTEX_BIN=/path/to/cortex ./scripts/bench-usage-export.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS="${ROWS:-1000000}"
PORT="${PORT:-9460}"
CORTEX_BIN="${CORTEX_BIN:-./target/release/cortex}"
PASSWORD="Export-Bench-Passphrase-71c4"

if [ "$CORTEX_BIN" = ./target/release/cortex ]; then
  cargo build --release -q -p cortex-cli
fi

work="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export CORTEX_DATA_DIR="$work/data" CORTEX_LISTEN="127.0.0.1:$PORT" CORTEX_CONFIG=""
export CORTEX_ADMIN_PASSWORD="$PASSWORD" RUST_LOG=warn
"$CORTEX_BIN" migrate >/dev/null 2>&1

echo "filling $ROWS usage records"
python3 - "$CORTEX_DATA_DIR/cortex.db" "$ROWS" <<'PY'
import sqlite3, sys
db, rows = sys.argv[1], int(sys.argv[2])
con = sqlite3.connect(db)
# One minute apart, ending now-ish: 1M rows span about two years.
con.execute(
    """
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
    INSERT INTO usage_records (request_id, key_id, user_id, model, provider, endpoint,
        prompt_tokens, completion_tokens, cost_usd, latency_ms, status, client_ip, created_at,
        attempts, org_id, team_id, ttft_ms)
    SELECT 'req_' || printf('%032x', i), 'key-bench', 'user-bench', 'llama-3-70b', 'fake',
        'chat', i % 500, i % 900, (i % 1000) * 0.000001, 20 + i % 300,
        CASE WHEN i % 50 = 0 THEN 502 ELSE 200 END, '127.0.0.1', 1700000000000 + i * 60000, 1,
        'default', NULL, CASE WHEN i % 2 = 0 THEN 10 + i % 50 END
    FROM n
    """,
    (rows,),
)
con.commit()
con.close()
PY

"$CORTEX_BIN" serve 2>"$work/cortex.log" &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.2; done

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status"; }

TOKEN="$(curl -s "http://127.0.0.1:$PORT/admin/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$PASSWORD\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')"
before_rss="$(rss_kib)"
before_hwm="$(hwm_kib)"

# Samples the server's RSS while the download runs.
(
  peak=0
  while kill -0 "$GW_PID" 2>/dev/null && [ ! -f "$work/done" ]; do
    now="$(rss_kib)"
    [ "$now" -gt "$peak" ] && peak="$now" && echo "$peak" >"$work/peak"
    sleep 0.05
  done
) &
PIDS+=($!)

read -r seconds bytes status < <(curl -s -o "$work/usage.csv" -w '%{time_total} %{size_download} %{http_code}\n' \
  -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/admin/usage/export")
touch "$work/done"
sleep 0.2
lines="$(wc -l <"$work/usage.csv")"
sampled_peak="$(cat "$work/peak" 2>/dev/null || echo 0)"
after_hwm="$(hwm_kib)"

awk -v rows="$ROWS" -v lines="$lines" -v status="$status" -v s="$seconds" -v b="$bytes" \
  -v rss0="$before_rss" -v hwm0="$before_hwm" -v peak="$sampled_peak" -v hwm1="$after_hwm" 'BEGIN {
  printf "export: HTTP %s, %d lines (%d records + header), %.1f MB in %.1f s (%.0f rows/s)\n",
    status, lines, lines - 1, b / 1e6, s, rows / s
  printf "server RSS before: %.1f MiB (peak so far %.1f MiB)\n", rss0 / 1024, hwm0 / 1024
  printf "server RSS during the download: peak %.1f MiB sampled, VmHWM %.1f MiB (+%.1f MiB over before)\n",
    peak / 1024, hwm1 / 1024, (hwm1 - rss0) / 1024
  printf "the file itself: %.1f MiB\n", b / 1048576
}'
if [ "$status" != 200 ] || [ "$lines" -ne $((ROWS + 1)) ]; then
  echo "bench-usage-export: expected HTTP 200 and $((ROWS + 1)) lines" >&2
  exit 1
fi
