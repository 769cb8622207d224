#!/usr/bin/env bash
# Runs the llmtrace end-to-end tests (real Python OpenTelemetry SDK + instrumentation,
# local mock OpenAI server, DuckDB reading the Parquet output).
#
#   LLMTRACE_BIN  the llmtrace binary to test (default: target/debug/llmtrace); build it first
#   E2E_VENV      the virtualenv to create/reuse (default: ${TMPDIR:-/tmp}/llmtrace-e2e-venv)
#
# Extra arguments are passed to pytest (e.g. -k grpc, -x).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${E2E_VENV:-${TMPDIR:-/tmp}/llmtrace-e2e-venv}"
req="$here/requirements.txt"
python="${PYTHON:-python3}"

export LLMTRACE_BIN="${LLMTRACE_BIN:-$repo/target/debug/llmtrace}"

# Hash of the requirements and the interpreter: the venv is reused while it is unchanged.
want="$( { cat "$req"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.llmtrace-e2e-requirements.sha256"

if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "e2e: preparing virtualenv $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
        # Debian/Ubuntu ship venv (ensurepip) separately.
        rm -rf "$venv"
        if command -v apt-get >/dev/null 2>&1; then
            echo "e2e: python venv module missing; installing python3-venv" >&2
            sudo_=""
            [[ "$(id -u)" -eq 0 ]] || sudo_="sudo"
            $sudo_ apt-get update -qq
            pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq python3-venv \
                || DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "python${pyver}-venv"
        fi
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

cd "$repo"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider -v -rfExX tests/e2e "$@"
