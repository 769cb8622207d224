#!/usr/bin/env bash
# Query benchmark: SPANS (default 10M) loadgen spans in a store, then typical
# report queries timed in llmtrace and in DuckDB on the same files
# (scripts/bench_query.py). Reuses DATA if given.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SPANS=${SPANS:-10000000}
# BIN=path skips the build and uses that binary.
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/llmtrace}
venv=${E2E_VENV:-${TMPDIR:-/tmp}/llmtrace-e2e-venv}
[[ -x "$venv/bin/python" ]] || { echo "needs the e2e venv with duckdb: run tests/e2e/run.sh once" >&2; exit 2; }
data=${DATA:-}
if [[ -z "$data" ]]; then
    data=$(mktemp -d)/data
    LLMTRACE_LOG=info "$bin" serve --data-dir "$data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        --api-addr 127.0.0.1:0 2>"$data.log" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$data.log" 2>/dev/null && break; sleep 0.1; done
    grpc=$(sed -nE 's/.*grpc=([^ ]+).*/\1/p' "$data.log" | head -1)
    "$bin" loadgen --endpoint "http://$grpc" --rate 0 --spans "$SPANS" --duration 2h --seed 1 --quiet
    kill -TERM "$pid"; wait "$pid"
    echo "data in $data"
fi
"$venv/bin/python" scripts/bench_query.py "$bin" "$data" "${RUNS:-3}"
