#!/usr/bin/env bash
# Crash test, repeated: the real `llmtrace serve` is fed spans over OTLP/HTTP
# by 4 clients recording every acknowledged span id, killed with SIGKILL
# mid-stream and restarted on the same data dir, ROUNDS times per run; after
# each restart every acknowledged span must be queryable, none twice
# (tests/it/crash.rs). RUNS runs (default 10), ROUNDS kills each (default 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-10}
ROUNDS=${ROUNDS:-5}
cargo test --quiet --test it crash --no-run
for run in $(seq "$RUNS"); do
    line=$(LLMTRACE_CRASH_ROUNDS=$ROUNDS cargo test --quiet --test it crash -- --nocapture 2>&1 \
        | grep -oE "crash test:.*|panicked.*|FAILED.*" || true)
    echo "run $run: ${line:-no result}"
    [[ "$line" == crash\ test:* ]] || exit 1
done
