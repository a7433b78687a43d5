#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (seconds per target, default 60).
#   ./scripts/fuzz.sh            # 60 s each
#   ./scripts/fuzz.sh 10         # 10 s each
# cargo-fuzz needs a nightly toolchain (`rustup toolchain install nightly` where available);
# targets: api_key, v1_body, sse_scanner, config, headers, h1_answer, gguf_header, guard_scanner.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in api_key v1_body sse_scanner config headers h1_answer gguf_header guard_scanner; do
  echo "== $target ($seconds s)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 3
done
