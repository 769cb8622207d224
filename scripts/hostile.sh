#!/usr/bin/env bash
# The hostile-input set (issue 22) against a real `llmtrace serve`: prints
# held/FAILED per item and `N passed, N failed`. BIN=path skips the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
    export BIN=${CARGO_TARGET_DIR:-target}/release/llmtrace
fi
exec python3 scripts/hostile.py
