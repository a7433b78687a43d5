#!/usr/bin/env bash
# Instructions per request on the /v1 path, counted by callgrind: repeatable for the same build
# whatever else the machine is doing, so two builds can be compared without wall-clock noise.
#
#   ./scripts/profile.sh                         # every mode below, 1,000 requests each
#   REQUESTS=500 RATE=100 ./scripts/profile.sh
#   CORTEX_BIN=/tmp/cortex-old MODES="plain stream" ./scripts/profile.sh   # another build
#
# Modes: plain and streamed chat completions, and the translating front doors against the same
# chat-only upstream: /v1/messages and /v1/responses, plain and streamed (each with its ratio
# to chat completions, the per-request price of translation).
#   KEEP=/tmp/cg ./scripts/profile.sh            # keep callgrind.out.* for callgrind_annotate
#   TRACES=0.1 MODES=plain ./scripts/profile.sh  # OpenTelemetry traces on, 10 % sampled, exported
#                                                # over OTLP/HTTP to a sink on loopback
#
# Cortex runs under valgrind with instrumentation off; it is switched on only while the load
# runs (open loop at RATE requests/s from `loadgen`), so start-up and migrations are not
# counted. The figure is every thread of the process — the usage writer and SQLite included —
# divided by the requests answered. Needs valgrind (Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-1000}"
MODES="${MODES:-plain plain_budget stream messages messages_stream responses responses_stream}"
RATE="${RATE:-100}"
PORT_BASE="${PORT_BASE:-9400}"
CORTEX_BIN="${CORTEX_BIN:-./target/release/cortex}"
UP_PORT=$((PORT_BASE + 1)) GW_PORT=$((PORT_BASE + 3))

command -v valgrind >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
# Another build's binary is measured as it is; the load tools are built if missing.
if [ "$CORTEX_BIN" = ./target/release/cortex ]; then
  cargo build --release -q -p cortex-cli -p cortex-testkit --bins
elif [ ! -x ./target/release/loadgen ] || [ ! -x ./target/release/fake-upstream ]; then
  cargo build --release -q -p cortex-testkit --bins
fi

work="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # url, tries: polls until it answers (any status)
  for _ in $(seq 1 "$2"); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "profile: $1 did not come up" >&2
  exit 1
}

./target/release/fake-upstream "127.0.0.1:$UP_PORT" --chunks 8 --chunk-delay-ms 1 >/dev/null &
PIDS+=($!)
if [ -n "${TRACES:-}" ]; then
  # An OTLP/HTTP sink that answers every export with an empty 200 (its own CPU is not counted).
  SINK_PORT=$((PORT_BASE + 5))
  python3 -c '
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
' "$SINK_PORT" &
  PIDS+=($!)
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_TRACES_SAMPLER=traceidratio
  # Exports every second (the SDK's default is 5 s): batches the size they have at this rate
  # in production, and the last one still inside the measured window (see the wait below).
  export OTEL_TRACES_SAMPLER_ARG="$TRACES" OTEL_BSP_SCHEDULE_DELAY=1000
fi
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
export CORTEX_ADMIN_PASSWORD="Profile-Fixture-Passphrase-93d1" RUST_LOG=warn
"$CORTEX_BIN" migrate >/dev/null
KEY="$("$CORTEX_BIN" keys create --name profile --requests-per-second 10000000 --burst 10000000 \
  --max-concurrent-streams 1000 2>/dev/null)"
# The same, under a budget (never reached): what the budget reservation adds (issue 29).
BUDGET_KEY="$("$CORTEX_BIN" keys create --name profile-budget --requests-per-second 10000000 --burst 10000000 \
  --max-concurrent-streams 1000 --budget-usd 1000000 2>/dev/null)"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out.%p" \
  "$CORTEX_BIN" serve 2>"$work/cortex.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$UP_PORT/" 50
wait_http "http://127.0.0.1:$GW_PORT/healthz" 300

PLAIN_BODY='{"model":"llama","messages":[{"role":"user","content":"hello"}]}'
STREAM_BODY='{"model":"llama","messages":[{"role":"user","content":"hello"}],"stream":true,"stream_options":{"include_usage":true}}'
MESSAGES_BODY='{"model":"llama","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}'
RESPONSES_BODY='{"model":"llama","input":"hello"}'
request_of() { # mode: "path body"
  case "$1" in
    plain | plain_budget) echo "/v1/chat/completions $PLAIN_BODY" ;;
    stream) echo "/v1/chat/completions $STREAM_BODY" ;;
    messages) echo "/v1/messages $MESSAGES_BODY" ;;
    messages_stream) echo "/v1/messages ${MESSAGES_BODY%\}},\"stream\":true}" ;;
    responses) echo "/v1/responses $RESPONSES_BODY" ;;
    responses_stream) echo "/v1/responses ${RESPONSES_BODY%\}},\"stream\":true}" ;;
    *) echo "profile: unknown mode $1" >&2; exit 1 ;;
  esac
}
key_of() { # mode
  if [ "$1" = plain_budget ]; then echo "$BUDGET_KEY"; else echo "$KEY"; fi
}
duration="$(awk -v n="$REQUESTS" -v r="$RATE" 'BEGIN{printf "%.3f", n / r}')"

total_ir() { # sums the "summary:" / "totals:" lines of every dump so far
  awk '/^(summary|totals):/ {s += $2} END {print s + 0}' "$work"/callgrind.out.* 2>/dev/null || echo 0
}

echo "build: $("$CORTEX_BIN" --version)  load: $REQUESTS requests at $RATE/s per mode${TRACES:+  traces: ${TRACES} sampled}"
declare -A PER_REQUEST
for mode in $MODES; do
  read -r path body <<<"$(request_of "$mode")"
  # A few unmeasured requests first, so pools, caches and lazily built state are warm.
  ./target/release/loadgen open --url "http://127.0.0.1:$GW_PORT$path" --key "$(key_of "$mode")" \
    --body "$body" --rate 50 --duration 1 >/dev/null 2>&1 || true
  sleep 0.5
  callgrind_control --zero "$GW_PID" >/dev/null 2>&1
  callgrind_control --instr=on "$GW_PID" >/dev/null 2>&1
  ./target/release/loadgen open --url "http://127.0.0.1:$GW_PORT$path" --key "$(key_of "$mode")" \
    --body "$body" --rate "$RATE" --duration "$duration" --warmup 0 >"$work/load.txt" 2>&1 || true
  # The usage writer lingers up to 100 ms before it writes: include its work (and, with
  # traces, the export of the last spans, at most a second later).
  if [ -n "${TRACES:-}" ]; then sleep 2; else sleep 0.5; fi
  callgrind_control --instr=off "$GW_PID" >/dev/null 2>&1
  rm -f "$work"/callgrind.out.*
  callgrind_control --dump="$mode" "$GW_PID" >/dev/null 2>&1
  sleep 0.5
  grep -h "last error" "$work/load.txt" >&2 || true
  answered="$(grep -oE '(^| )requests=[0-9]+' "$work/load.txt" | tail -1 | cut -d= -f2)"
  failed="$(grep -oE '(^| )failed=[0-9]+' "$work/load.txt" | tail -1 | cut -d= -f2)"
  ir="$(total_ir)"
  if [ -z "$answered" ] || [ "$answered" = 0 ]; then
    echo "profile: $mode: no request answered" >&2
    cat "$work/load.txt" >&2
    exit 1
  fi
  PER_REQUEST[$mode]="$(awk -v ir="$ir" -v n="$answered" 'BEGIN{printf "%.1f", ir / n / 1000}')"
  # The translating doors are set against chat completions, streamed or not, of this run.
  base=plain; [[ "$mode" == *stream ]] && base=stream
  versus=""
  if [ "$mode" != "$base" ] && [ -n "${PER_REQUEST[$base]:-}" ]; then
    versus="$(awk -v a="${PER_REQUEST[$mode]}" -v b="${PER_REQUEST[$base]}" 'BEGIN{printf "  %.2f× %s", a / b, "'"$base"'"}')"
  fi
  awk -v k="${PER_REQUEST[$mode]}" -v n="$answered" -v f="${failed:-?}" -v m="$mode" -v vs="$versus" \
    'BEGIN{printf "%-16s %8.1f k instructions per request  (%d requests, %s failed)%s\n", m, k, n, f, vs}'
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    for f in "$work"/callgrind.out.*; do cp "$f" "$KEEP/$(basename "$f").$mode"; done
  fi
done
