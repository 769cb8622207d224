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
    scripts/make_store.sh "$bin" "$data" "$SPANS"
fi
"$venv/bin/python" scripts/bench_query.py "$bin" "$data" "${RUNS:-3}"
