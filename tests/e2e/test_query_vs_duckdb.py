"""End to end: ``llmtrace query`` (DataFusion over the Parquet store) and DuckDB reading the
same Parquet files give the same answers.

``llmtrace serve`` gets 20 000 spans of seeded traffic from ``llmtrace loadgen`` over gRPC,
is stopped with SIGTERM (which flushes everything), and then each question below is asked
twice: once with ``llmtrace query --data-dir DIR --format json`` and once with DuckDB over
``read_parquet('DIR/spans/**/*.parquet', hive_partitioning=true, union_by_name=true)``
(``llm_calls`` = ``spans WHERE is_llm``). Answers are compared as sets of rows keyed by
their GROUP BY columns; on a mismatch both answers are printed.

Percentiles: llmtrace's ``approx_percentile_cont`` is a t-digest approximation, DuckDB's
``quantile_cont`` is exact, so they must agree within 5 % relative or 1 ms, whichever is
larger (models with >= 200 calls only); ``median`` is exact on both sides.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

import harness

SPANS = 20_000
SEED = 7
PERCENTILE_MIN_CALLS = 200

# ---------------------------------------------------------------------------
# comparators: (llmtrace value, duckdb value) -> agree?

Compare = Callable[[Any, Any], bool]


def exact(a: Any, b: Any) -> bool:
    return a == b


def rel(tol: float) -> Compare:
    def cmp(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)

    cmp.__name__ = f"rel({tol:g})"
    return cmp


def approx_percentile(a: Any, b: Any) -> bool:
    """t-digest (llmtrace) vs exact (DuckDB): within 5 % of the exact value or 1 ms."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= max(0.05 * abs(b), 1.0)


@dataclass(frozen=True)
class Question:
    id: str
    llmtrace_sql: str
    duckdb_sql: str
    # How many leading columns are the group key; the rest are compared with ``compare``.
    keys: int
    compare: tuple[Compare, ...]
    # The answer must have at least this many rows (keeps a HAVING from making it vacuous).
    min_rows: int = 1


def _error_rate(col: str = "status") -> str:
    return f"CAST(count(*) FILTER (WHERE {col} = 'error') AS DOUBLE) / count(*)"


QUESTIONS = [
    Question(
        "total_spans",
        "SELECT count(*) AS n FROM spans",
        "SELECT count(*) AS n FROM spans",
        keys=0, compare=(exact,),
    ),
    Question(
        "llm_calls",
        "SELECT count(*) AS n FROM llm_calls",
        "SELECT count(*) AS n FROM spans WHERE is_llm",
        keys=0, compare=(exact,),
    ),
    Question(
        "calls_per_model",
        "SELECT model, count(*) AS n FROM llm_calls GROUP BY model",
        "SELECT model, count(*) AS n FROM llm_calls GROUP BY model",
        keys=1, compare=(exact,), min_rows=2,
    ),
    Question(
        "tokens_per_provider",
        "SELECT provider, sum(input_tokens) AS input, sum(output_tokens) AS output, "
        "sum(cache_read_tokens) AS cache_read FROM llm_calls GROUP BY provider",
        "SELECT provider, sum(input_tokens) AS input, sum(output_tokens) AS output, "
        "sum(cache_read_tokens) AS cache_read FROM llm_calls GROUP BY provider",
        keys=1, compare=(exact, exact, exact), min_rows=2,
    ),
    Question(
        "cost_per_model",
        "SELECT model, sum(cost_usd) AS cost FROM llm_calls GROUP BY model",
        "SELECT model, sum(cost_usd) AS cost FROM llm_calls GROUP BY model",
        keys=1, compare=(rel(1e-9),), min_rows=2,
    ),
    Question(
        "errors_per_provider",
        f"SELECT provider, count(*) FILTER (WHERE status = 'error') AS errors, {_error_rate()} AS error_rate "
        "FROM llm_calls GROUP BY provider",
        f"SELECT provider, count(*) FILTER (WHERE status = 'error') AS errors, {_error_rate()} AS error_rate "
        "FROM llm_calls GROUP BY provider",
        keys=1, compare=(exact, rel(1e-12)), min_rows=2,
    ),
    Question(
        "spans_per_partition",
        "SELECT tenant, date, hour, count(*) AS n FROM spans GROUP BY tenant, date, hour",
        "SELECT tenant, date, hour, count(*) AS n FROM spans GROUP BY tenant, date, hour",
        keys=3, compare=(exact,),
    ),
    Question(
        "duration_percentiles_per_model",
        "SELECT model, count(*) AS n, approx_percentile_cont(duration_ms, 0.5) AS p50 "
        f"FROM llm_calls GROUP BY model HAVING count(*) >= {PERCENTILE_MIN_CALLS}",
        "SELECT model, count(*) AS n, quantile_cont(duration_ms, 0.5) AS p50 "
        f"FROM llm_calls GROUP BY model HAVING count(*) >= {PERCENTILE_MIN_CALLS}",
        keys=1, compare=(exact, approx_percentile), min_rows=2,
    ),
    Question(
        "duration_median_per_model",
        "SELECT model, median(duration_ms) AS median_ms FROM llm_calls GROUP BY model",
        "SELECT model, median(duration_ms) AS median_ms FROM llm_calls GROUP BY model",
        keys=1, compare=(rel(1e-9),), min_rows=2,
    ),
]


# ---------------------------------------------------------------------------
# the store: llmtrace serve <- loadgen, then SIGTERM


@dataclass
class LoadedStore:
    llmtrace: harness.Llmtrace
    # Shown by conftest's failure report (everything but "stderr" as JSON, then stderr).
    app: dict[str, Any] = field(default_factory=dict)
    sent: int | None = None
    acknowledged: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.llmtrace.data_dir

    def assert_loaded(self) -> None:
        """loadgen exited 0, everything it sent was acknowledged, llmtrace exited 0 on SIGTERM."""
        app = self.app
        assert app.get("returncode") == 0, (
            f"loadgen exited {app.get('returncode')}:\n{app.get('stdout', '')}\n{app.get('stderr', '')[-3000:]}"
        )
        assert self.sent is not None and self.acknowledged is not None, (
            f"no 'sent N spans' / 'acknowledged N spans' lines in the loadgen report:\n{app.get('stdout', '')}"
        )
        assert self.sent >= SPANS, f"loadgen sent only {self.sent} spans:\n{app.get('stdout', '')}"
        assert self.acknowledged == self.sent, f"acknowledged != sent:\n{app.get('stdout', '')}"
        assert self.llmtrace.exit_code == 0, (
            f"llmtrace exit code after SIGTERM: {self.llmtrace.exit_code} (None = did not exit in time)"
        )
        assert harness.parquet_files(self.data_dir), f"no Parquet files under {self.data_dir / 'spans'}"


def _count(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text, re.MULTILINE)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LoadedStore:
    base = tmp_path_factory.mktemp("query-vs-duckdb")
    lt = harness.start_llmtrace(base / "data", base / "llmtrace.log")
    cmd = [
        str(harness.llmtrace_bin()), "loadgen",
        "--endpoint", lt.grpc_endpoint, "--protocol", "grpc",
        "--rate", "0", "--spans", str(SPANS), "--duration", "60s", "--seed", str(SEED), "--quiet",
    ]
    try:
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=180,
                env=harness.clean_env(NO_COLOR="1"), stdin=subprocess.DEVNULL,
            )
            app = {"cmd": " ".join(cmd), "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        except subprocess.TimeoutExpired as e:
            app = {"cmd": " ".join(cmd), "returncode": None, "stdout": str(e.stdout or ""), "stderr": "timed out"}
    finally:
        lt.terminate(timeout=60)
    report = harness.strip_ansi(app["stdout"] + "\n" + app["stderr"])
    return LoadedStore(
        llmtrace=lt,
        app=app,
        sent=_count(r"^\s*sent (\d+) spans\b", report),
        acknowledged=_count(r"^\s*acknowledged (\d+) spans\b", report),
    )


@pytest.fixture(scope="module")
def duck(store: LoadedStore):
    import duckdb

    glob = str(store.data_dir / "spans" / "**" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    # Partition columns as strings, like llmtrace (no autocast of date=2026-01-01 to DATE).
    con.execute(
        "CREATE VIEW spans AS SELECT * FROM read_parquet("
        f"'{glob}', hive_partitioning=true, union_by_name=true, hive_types_autocast=false)"
    )
    con.execute("CREATE VIEW llm_calls AS SELECT * FROM spans WHERE is_llm")
    try:
        yield con
    finally:
        con.close()


# ---------------------------------------------------------------------------
# comparing answers


def _sort_key(key: tuple) -> tuple:
    return tuple((v is None, str(v)) for v in key)


def _keyed(rows: list[list[Any]] | list[tuple], keys: int, what: str) -> dict[tuple, tuple]:
    out: dict[tuple, tuple] = {}
    for r in rows:
        k = tuple(r[:keys])
        assert k not in out, f"{what}: key {k!r} appears twice"
        out[k] = tuple(r[keys:])
    return out


def _show(answer: dict[tuple, tuple]) -> str:
    return "\n".join(f"    {list(k)} -> {list(v)}" for k, v in sorted(answer.items(), key=lambda kv: _sort_key(kv[0])))


def test_duckdb_store_loaded(store: LoadedStore):
    """loadgen and llmtrace behaved, and llmtrace stored exactly what it acknowledged."""
    store.assert_loaded()
    n = harness.llmtrace_query(store.data_dir, "SELECT count(*) AS n FROM spans")["rows"]
    assert n == [[store.acknowledged]], f"llmtrace holds {n} spans, loadgen had {store.acknowledged} acknowledged"


@pytest.mark.parametrize("q", QUESTIONS, ids=[q.id for q in QUESTIONS])
def test_query_agrees_with_duckdb(store: LoadedStore, duck, q: Question):
    store.assert_loaded()

    lt = harness.llmtrace_query(store.data_dir, q.llmtrace_sql)
    assert lt.get("truncated") is False, f"llmtrace answer truncated: {lt}"
    assert lt.get("row_count") == len(lt["rows"]), f"row_count {lt.get('row_count')} != {len(lt['rows'])} rows"
    ncols = q.keys + len(q.compare)
    assert len(lt["columns"]) == ncols, f"llmtrace columns {lt['columns']}, expected {ncols}"

    cur = duck.execute(q.duckdb_sql)
    assert len(cur.description) == ncols, f"DuckDB columns {cur.description}, expected {ncols}"
    dk_rows = cur.fetchall()

    got = _keyed(lt["rows"], q.keys, "llmtrace")
    want = _keyed(dk_rows, q.keys, "DuckDB")

    problems: list[str] = []
    if len(want) < q.min_rows:
        problems.append(f"DuckDB answer has {len(want)} rows, expected at least {q.min_rows}")
    for k in sorted(set(got) - set(want), key=_sort_key):
        problems.append(f"only llmtrace has key {list(k)}: {list(got[k])}")
    for k in sorted(set(want) - set(got), key=_sort_key):
        problems.append(f"only DuckDB has key {list(k)}: {list(want[k])}")
    names = [c["name"] for c in lt["columns"]][q.keys:]
    for k in sorted(set(got) & set(want), key=_sort_key):
        for name, cmp, a, b in zip(names, q.compare, got[k], want[k]):
            if not cmp(a, b):
                problems.append(f"{list(k)} {name}: llmtrace {a!r} vs DuckDB {b!r} ({cmp.__name__})")

    if problems:
        msg = (
            f"question {q.id}: llmtrace and DuckDB disagree\n"
            f"  llmtrace SQL: {q.llmtrace_sql}\n"
            f"  DuckDB SQL:   {q.duckdb_sql}\n"
            "  differences:\n" + "\n".join(f"    {p}" for p in problems) + "\n"
            f"  llmtrace answer ({lt['columns']}):\n{_show(got)}\n"
            f"  DuckDB answer:\n{_show(want)}"
        )
        print(msg)
        pytest.fail(msg, pytrace=False)


@pytest.mark.parametrize("q", [0.9, 0.99])
def test_tail_percentiles_within_the_methods_tolerance(store: LoadedStore, duck, q: float):
    """Tail percentiles: llmtrace's t-digest interpolates around rank q*n, DuckDB's
    quantile_cont around q*(n-1); with few, sparse tail values the two differ by
    more than any fixed percentage. The methods' common tolerance is the span of
    order statistics around the rank: llmtrace's value must lie between the
    sorted durations at ranks floor(q*(n-1)) - 1 and ceil(q*n) + 1."""
    store.assert_loaded()
    lt = harness.llmtrace_query(
        store.data_dir,
        f"SELECT model, approx_percentile_cont(duration_ms, {q}) AS p FROM llm_calls "
        f"GROUP BY model HAVING count(*) >= {PERCENTILE_MIN_CALLS}",
    )
    got = {row[0]: row[1] for row in lt["rows"]}
    assert len(got) >= 2, lt
    problems = []
    for model, value in got.items():
        sorted_ms = [r[0] for r in duck.execute(
            "SELECT duration_ms FROM llm_calls WHERE model = ? ORDER BY duration_ms", [model]
        ).fetchall()]
        n = len(sorted_ms)
        lo = sorted_ms[max(0, math.floor(q * (n - 1)) - 1)]
        hi = sorted_ms[min(n - 1, math.ceil(q * n) + 1)]
        exact = duck.execute(
            f"SELECT quantile_cont(duration_ms, {q}) FROM llm_calls WHERE model = ?", [model]
        ).fetchone()[0]
        if not lo <= value <= hi:
            problems.append(f"{model} (n={n}): llmtrace {value} outside [{lo}, {hi}] (DuckDB exact {exact})")
    assert not problems, "\n".join(problems)
