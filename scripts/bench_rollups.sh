#!/usr/bin/env bash
# Rollups benchmark: SPANS (default 5M) loadgen spans laid over DAYS (default 30)
# of timeline, then "p99 latency by model" over the whole range and over the
# last day, answered from rollups (hdr_merge) and from the raw spans.
# Reuses DATA if given. Prints a markdown table (scripts/bench_rollups.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SPANS=${SPANS:-5000000}
DAYS=${DAYS:-30}
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/llmtrace}
venv=${E2E_VENV:-${TMPDIR:-/tmp}/llmtrace-e2e-venv}
[[ -x "$venv/bin/python" ]] || { echo "needs the e2e venv with duckdb: run tests/e2e/run.sh once" >&2; exit 2; }
data=${DATA:-}
if [[ -z "$data" ]]; then
    data=$(mktemp -d)/data
    start=$(date -u -d "-$DAYS days" +%Y-%m-%dT%H:%M:%SZ)
    rate=$(python3 -c "print($SPANS / ($DAYS * 86400))")
    scripts/make_store.sh "$bin" "$data" "$SPANS" --start "$start" --timeline-rate "$rate"
fi
"$venv/bin/python" scripts/bench_rollups.py "$bin" "$data" "${RUNS:-3}"
