#!/usr/bin/env bash
# Audit-verify benchmark: fills a SQLite database with EVENTS chained audit events (default
# 1,000,000), unkeyed as a version before keyed chains wrote them; `cortex audit checkpoint`
# then re-keys them under the master key once (timed: the upgrade path) and signs a checkpoint.
# Then it times `cortex audit verify` (release build, HMAC-SHA256 chain) three times and prints
# the median against the 3 s target. As a same-machine baseline it also times
# `sha256sum` over the database file (the raw cost of hashing those bytes once) and prints the
# ratio, so a slow machine and a slow verifier can be told apart.
#
#   ./scripts/bench-audit.sh
#   EVENTS=200000 ROUNDS=5 ./scripts/bench-audit.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-1000000}"
ROUNDS="${ROUNDS:-3}"
TARGET_SECONDS="${TARGET_SECONDS:-3}"

cargo build --release -q -p cortex-cli --bin cortex
cargo build --release -q -p cortex-store --example audit_fill

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CORTEX_DATA_DIR="$work/data" CORTEX_CONFIG="" RUST_LOG=warn
export CORTEX_ADMIN_PASSWORD="Bench-Fixture-Passphrase-71c2"
cortex=./target/release/cortex

"$cortex" migrate >/dev/null
./target/release/examples/audit_fill "sqlite://$CORTEX_DATA_DIR/cortex.db?mode=rwc" "$EVENTS"
start=$(date +%s.%N)
"$cortex" audit checkpoint >/dev/null
printf 're-keying %d unkeyed events and signing a checkpoint: %.3f s\n' "$EVENTS" "$(echo "$(date +%s.%N) - $start" | bc -l)"
db_bytes=$(stat -c %s "$CORTEX_DATA_DIR/cortex.db")
echo "database: $((db_bytes / 1024 / 1024)) MiB"

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

verify_times=()
hash_times=()
for round in $(seq 1 "$ROUNDS"); do
  start=$(now)
  "$cortex" audit verify >"$work/verify.out"
  end=$(now)
  # EVENTS plus the re-keying's own audit event.
  grep -q "^ok: $((EVENTS + 1)) events verified" "$work/verify.out" || { cat "$work/verify.out"; exit 1; }
  verify=$(echo "$end - $start" | bc -l)
  start=$(now)
  sha256sum "$CORTEX_DATA_DIR/cortex.db" >/dev/null
  end=$(now)
  hashed=$(echo "$end - $start" | bc -l)
  printf 'round %d: audit verify %.3f s   sha256sum of the database %.3f s\n' "$round" "$verify" "$hashed"
  verify_times+=("$verify")
  hash_times+=("$hashed")
done

verify_median=$(median "${verify_times[@]}")
hash_median=$(median "${hash_times[@]}")
ratio=$(echo "$verify_median / $hash_median" | bc -l)
printf '\nmedian of %d: cortex audit verify over %d events: %.3f s (target < %s s)\n' \
  "$ROUNDS" "$EVENTS" "$verify_median" "$TARGET_SECONDS"
printf 'baseline sha256sum of the %d MiB database: %.3f s; verify/baseline ratio %.2f\n' \
  "$((db_bytes / 1024 / 1024))" "$hash_median" "$ratio"
if (( $(echo "$verify_median < $TARGET_SECONDS" | bc -l) )); then
  echo "PASS"
else
  echo "FAIL: over the ${TARGET_SECONDS} s target"
  exit 1
fi
