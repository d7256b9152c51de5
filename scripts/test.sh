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

step "0/8 system packages the tests need (Debian): python3-venv, postgresql"
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

step "1/8 Python venv with the conformance oracles (conformance/requirements.txt)"
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

step "2/8 cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "3/8 cargo test --workspace (captures Realtime client events for step 5)"
mkdir -p "$CONF_DIR"
export VOXBRIDGE_CONFORMANCE_DIR="$CONF_DIR"
# start from a clean capture so a stale file cannot satisfy step 5
rm -f "$CONF_DIR/realtime_client_events.jsonl"
cargo test --workspace

step "4/8 Twilio signatures + TwiML vs the official twilio package"
cargo run -q -p voxbridge-twilio --example conformance_vectors > "$CONF_DIR/twilio_vectors.json"
"$PY" conformance/check_twilio.py "$CONF_DIR/twilio_vectors.json"
cargo build -q -p voxbridge-twilio --example capture_create_call
"$PY" conformance/check_create_call.py target/debug/examples/capture_create_call

step "5/8 OpenAI Realtime client events vs the openai SDK models (strict)"
"$PY" conformance/check_realtime_events.py --self-test
EVENTS="$CONF_DIR/realtime_client_events.jsonl"
if [[ ! -f "$EVENTS" ]]; then
    echo "FAIL: $EVENTS was not written by the end-to-end tests of step 3" >&2
    exit 1
fi
"$PY" conformance/check_realtime_events.py "$EVENTS"

step "6/8 cargo clippy -D warnings, cargo fmt --check"
cargo clippy --workspace --all-targets -- -D warnings
cargo fmt --all --check

step "7/8 cargo bench --workspace --no-run"
cargo bench --workspace --no-run

step "8/8 load generator smoke: 50 calls for 10 s, no lost, duplicated, reordered or late frame"
# A correctness check, not a speed check: release build, in-process.
cargo build -q --release -p voxbridge --bin voxbridge
target/release/voxbridge loadtest --smoke --json "$CONF_DIR/loadtest_smoke.json"

step "all checks passed"
