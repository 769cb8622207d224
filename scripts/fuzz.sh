#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each, starting
# from the seeds in fuzz/seeds/<target>/ plus whatever corpus earlier runs left
# in fuzz/corpus/<target>/ (not committed). A crash stops that target and
# leaves its input in fuzz/artifacts/<target>/; turn it into a regression
# test before fixing it.
#
#   scripts/fuzz.sh                      # 600 s per target
#   SECONDS_PER_TARGET=60 TARGETS="otlp_json" scripts/fuzz.sh
#
# cargo-fuzz wants a nightly toolchain for its -Z flags; RUSTC_BOOTSTRAP=1
# lets the stable one accept them. No sanitizer: the crate has no unsafe code
# of its own, and debug assertions (overflow checks) stay on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-600}
TARGETS=${TARGETS:-"otlp_json otlp_protobuf price_lookup price_book wal_segment sql_guard"}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${TMPDIR:-/tmp}/llmtrace-fuzz-target}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
cargo fuzz build -O -a -s none
status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t"
    echo "== $t (${SECONDS_PER_TARGET}s)"
    if cargo fuzz run -O -a -s none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 2>"$t.fuzz.log"; then
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov: " "$t.fuzz.log" | tail -3
    elif compgen -G "artifacts/$t/*" >/dev/null; then
        echo "CRASH in $t: inputs in fuzz/artifacts/$t, trace in fuzz/$t.fuzz.log"; status=1
    else
        echo "FAILED to run $t: see fuzz/$t.fuzz.log"; status=1
    fi
done
exit $status
