#!/usr/bin/env bash
# The one test command: Rust build + tests, conformance checks against vendor SDKs
# (official `twilio` and `openai` Python packages), lints, and bench compilation.
# Run from anywhere; needs cargo (with clippy + rustfmt) and python3 with venv support.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CONF_DIR="$ROOT/target/conformance"

step() {
    printf '\n==== %s ====\n' "$*"
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

step "0/10 system packages the tests need (Debian): python3-venv, postgresql"
# Disk: a clean run peaks near 4.2 GiB under target/ (Cargo.toml's profiles); say
# what is free up front, so a full disk reads as such and not as a compiler crash.
df -h . | sed 's/^/disk: /'
avail_kib="$(df -Pk . | awk 'NR == 2 { print $4 }')"
if [[ "${avail_kib:-0}" -lt $((6 * 1024 * 1024)) ]]; then
    echo "warning: less than 6 GiB free on the build disk; the build may fail with ENOSPC" >&2
fi
# A one-shot build never reuses incremental caches, which about double target/debug.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
missing=()
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
else
    probe="$(mktemp -d)"
    python3 -m venv "$probe/venv" >/dev/null 2>&1 || missing+=(python3-venv)
    rm -rf "$probe"
fi
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    echo "nothing to install"
fi

step "1/10 Python venv with the conformance oracles (conformance/requirements.txt)"
if [[ ! -x "$PY" ]] || ! "$PY" -m pip --version >/dev/null 2>&1; then
    # missing, or left half-made by a python3 without ensurepip: (re)create it
    python3 -m venv --clear "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -r conformance/requirements.txt
"$PY" -c 'import twilio, openai, pydantic; print("twilio", twilio.__version__, "| openai", openai.__version__, "| pydantic", pydantic.VERSION)'

step "PostgreSQL for the store and end-to-end tests (scripts/pg.sh)"
if [[ -z "${VOXBRIDGE_TEST_PG_URL:-}" ]]; then
    eval "$(bash scripts/pg.sh start)"
fi
echo "VOXBRIDGE_TEST_PG_URL=$VOXBRIDGE_TEST_PG_URL"
# the official twilio package signs webhooks for one end-to-end test
export VOXBRIDGE_PYTHON="$PY"

step "2/10 cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "3/10 cargo test --workspace (captures Realtime client events for step 5, Calls API bodies for step 7)"
mkdir -p "$CONF_DIR"
export VOXBRIDGE_CONFORMANCE_DIR="$CONF_DIR"
# start from a clean capture so a stale file cannot satisfy step 5 or 7
rm -f "$CONF_DIR/realtime_client_events.jsonl" "$CONF_DIR/accept_bodies.jsonl"
cargo test --workspace

step "4/10 Twilio signatures + TwiML vs the official twilio package"
cargo run -q -p voxbridge-twilio --example conformance_vectors > "$CONF_DIR/twilio_vectors.json"
"$PY" conformance/check_twilio.py "$CONF_DIR/twilio_vectors.json"
cargo build -q -p voxbridge-twilio --example capture_create_call
"$PY" conformance/check_create_call.py target/debug/examples/capture_create_call

step "5/10 OpenAI Realtime client events vs the openai SDK models (strict)"
"$PY" conformance/check_realtime_events.py --self-test
EVENTS="$CONF_DIR/realtime_client_events.jsonl"
if [[ ! -f "$EVENTS" ]]; then
    echo "FAIL: $EVENTS was not written by the end-to-end tests of step 3" >&2
    exit 1
fi
"$PY" conformance/check_realtime_events.py "$EVENTS"

step "6/10 OpenAI webhooks: standardwebhooks-signed vectors vs our verifier"
# signs and judges the vectors with the official standardwebhooks + openai packages, checks that the
# checked-in copy is current, then runs our verifier over the fresh file
"$PY" conformance/check_webhooks.py "$CONF_DIR/webhook_vectors.json" \
    --compare crates/realtime/tests/data/webhook_vectors.json
VOXBRIDGE_WEBHOOK_VECTORS="$CONF_DIR/webhook_vectors.json" \
    cargo test -q -p voxbridge-realtime --test webhook_vectors

step "7/10 SIP accept / refer / reject bodies vs the openai SDK's CallAcceptParams (strict)"
"$PY" conformance/check_accept.py --self-test
BODIES="$CONF_DIR/accept_bodies.jsonl"
if [[ ! -f "$BODIES" ]]; then
    echo "FAIL: $BODIES was not written by the tests of step 3" >&2
    exit 1
fi
"$PY" conformance/check_accept.py "$BODIES"

step "8/10 cargo clippy -D warnings, cargo fmt --check"
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check

step "9/10 cargo bench --workspace --no-run"
cargo bench --workspace --no-run

step "10/10 load generator smoke: 50 calls for 10 s, no lost, duplicated, reordered or late frame"
# A correctness check, not a speed check: release build, in-process.
cargo build -q --release -p voxbridge --bin voxbridge
target/release/voxbridge loadtest --smoke --json "$CONF_DIR/loadtest_smoke.json"

du -sh target 2>/dev/null | sed 's/^/target dir: /' || true
step "all checks passed"
