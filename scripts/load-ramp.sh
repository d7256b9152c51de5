#!/usr/bin/env bash
# The pinned load ramp of docs/BENCHMARKS.md: `voxbridge serve` on core 0, the load
# generator (emulated callers + model simulator) on core 1.
#
#   scripts/load-ramp.sh [STEPS] [HOLD_S]      e.g. scripts/load-ramp.sh 500,750 20
#
# Uses target/release/voxbridge (build it first: cargo build --release -p voxbridge).
# Writes the JSON report to $OUT (default /tmp/vb-load.json); extra loadtest flags can be
# given in $LOADTEST_ARGS. A benchmark, not a test: it never fails on speed.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-100,250,500,750,1000}
hold=${2:-20}
bin=${BIN:-target/release/voxbridge}
port=${PORT:-8080}
model_port=${MODEL_PORT:-9100}
out=${OUT:-/tmp/vb-load.json}
db=$(mktemp -d)/load.db

OPENAI_REALTIME_URL=ws://127.0.0.1:$model_port/v1/realtime OPENAI_API_KEY=sk-load \
TWILIO_AUTH_TOKEN=loadtoken PUBLIC_URL=http://127.0.0.1:$port PORT=$port \
DATABASE_URL=sqlite://$db RUST_LOG=warn MAX_CALLS=5000 \
CAMPAIGN_WORKER=false AGENTS_DIR=/nonexistent \
  taskset -c 0 "$bin" serve &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
# shellcheck disable=SC2086
taskset -c 1 "$bin" loadtest --target "http://127.0.0.1:$port" \
  --model-port "$model_port" --auth-token loadtoken --server-pid "$server" \
  --ramp "$steps" --hold-s "$hold" --ramp-up-s 5 --no-stop --json "$out" ${LOADTEST_ARGS:-}
