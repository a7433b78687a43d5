#!/usr/bin/env bash
# Data-plane benchmark: the same fixed load against the fake upstream directly and through
# Cortex (key auth, rate limiting and usage logging on), in one run. Prints added latency
# (p50, p99) and Cortex's CPU time per request, read from /proc (the kernel's accounting).
#
#   ./scripts/bench.sh            # 3 rounds of 10 s each, 32 connections
#   ROUNDS=5 DURATION=20 CONNECTIONS=64 ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
UP_PORT="${UP_PORT:-19101}"
GW_PORT="${GW_PORT:-19102}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p cortex-cli -p cortex-testkit --bins

work="$(mktemp -d)"
cleanup() { kill "${UP_PID:-}" "${GW_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

./target/release/fake-upstream "127.0.0.1:$UP_PORT" >"$work/upstream.out" &
UP_PID=$!
cat >"$work/cortex.toml" <<TOML
[[providers]]
name = "fake"
base_url = "http://127.0.0.1:$UP_PORT/v1"

[[models]]
name = "llama"
provider = "fake"
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0
TOML
export CORTEX_DATA_DIR="$work/data" CORTEX_CONFIG="$work/cortex.toml" CORTEX_LISTEN="127.0.0.1:$GW_PORT"
export CORTEX_ADMIN_PASSWORD="Bench-Fixture-Passphrase-71c2" RUST_LOG=warn
# Limits stay on (their cost is measured) but high enough not to refuse the load.
export RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000
./target/release/cortex migrate >/dev/null
KEY="$(./target/release/cortex keys create --name bench 2>/dev/null)"
./target/release/cortex serve 2>"$work/cortex.log" &
GW_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null && break; sleep 0.1; done

cat >"$work/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"llama","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck="$(getconf CLK_TCK)"

# wrk's latency lines: "50%  123.00us"; normalise to microseconds.
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v }'; }
pct() { to_us "$(grep -E "^ +$2%" "$1" | awk '{print $2}')"; }
reqs() { grep -E '^ +[0-9]+ requests in' "$1" | awk '{print $1}'; }

median() { sort -n | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

: >"$work/results"
for round in $(seq 1 "$ROUNDS"); do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/chat.lua" "http://127.0.0.1:$UP_PORT/v1/chat/completions" >"$work/direct.txt"
  before="$(cpu_ticks "$GW_PID")"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/chat.lua" "http://127.0.0.1:$GW_PORT/v1/chat/completions" >"$work/cortex.txt"
  after="$(cpu_ticks "$GW_PID")"
  n="$(reqs "$work/cortex.txt")"
  non2xx="$(grep -E 'Non-2xx' "$work/cortex.txt" | awk '{print $NF}' || true)"
  cpu_us="$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$n" 'BEGIN{ printf "%.2f", t / hz * 1000000 / n }')"
  echo "$round $(reqs "$work/direct.txt") $n $(pct "$work/direct.txt" 50) $(pct "$work/direct.txt" 99) $(pct "$work/cortex.txt" 50) $(pct "$work/cortex.txt" 99) $cpu_us ${non2xx:-0}" >>"$work/results"
done

echo
echo "Cortex data-plane benchmark: ${ROUNDS} rounds x ${DURATION}s, ${CONNECTIONS} connections, $(nproc) cores"
printf '%-6s %12s %12s %10s %10s %10s %10s %12s %8s\n' round direct_req cortex_req d_p50_us d_p99_us c_p50_us c_p99_us cpu_us/req non2xx
while read -r r dn cn dp50 dp99 cp50 cp99 cpu bad; do
  printf '%-6s %12s %12s %10s %10s %10s %10s %12s %8s\n' "$r" "$dn" "$cn" "$dp50" "$dp99" "$cp50" "$cp99" "$cpu" "$bad"
done <"$work/results"
added_p50="$(awk '{print $6 - $4}' "$work/results" | median)"
added_p99="$(awk '{print $7 - $5}' "$work/results" | median)"
cpu_med="$(awk '{print $8}' "$work/results" | median)"
ratio="$(awk '{print $3 / $2}' "$work/results" | median)"
echo
echo "median added latency: p50 ${added_p50} us, p99 ${added_p99} us"
echo "median Cortex CPU per request: ${cpu_med} us (target < 25 us)"
echo "median throughput ratio cortex/direct: ${ratio}"

echo
echo "Limiter cost (in process, and Redis on loopback):"
cargo run --release -q -p cortex-limits --example limiter_bench
