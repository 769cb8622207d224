"""Helpers shared by the e2e tests: run ``llmtrace serve``, run the app, read Parquet."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from otel_app import APP_ROOT_SPAN

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# e.g. "... INFO llmtrace: listening grpc=127.0.0.1:4317 http=127.0.0.1:4318 api=127.0.0.1:8080"
# Tolerates quotes around values and other fields on the line.
_LISTENING = re.compile(
    r"listening\b.*?"
    r"\bgrpc=\"?(?P<grpc_host>[0-9.]+):(?P<grpc>\d+)\"?.*?"
    r"\bhttp=\"?(?P<http_host>[0-9.]+):(?P<http>\d+)\"?.*?"
    r"\bapi=\"?(?P<api_host>[0-9.]+):(?P<api>\d+)"
)


def llmtrace_bin() -> Path:
    return Path(os.environ.get("LLMTRACE_BIN") or REPO_ROOT / "target" / "debug" / "llmtrace")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_listening(log: str) -> dict[str, int] | None:
    for line in strip_ansi(log).splitlines():
        m = _LISTENING.search(line)
        if m:
            return {"grpc": int(m["grpc"]), "http": int(m["http"]), "api": int(m["api"])}
    return None


def clean_env(**extra: str) -> dict[str, str]:
    """The inherited environment without OTEL_* settings and with proxies off for loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


@dataclass
class Llmtrace:
    """A running ``llmtrace serve``; its stdout and stderr both go to ``log_path``."""

    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    exit_code: int | None = None

    def log(self) -> str:
        try:
            return strip_ansi(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return "<no log>"

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['grpc']}"

    @property
    def http_traces_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}/v1/traces"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.exit_code = None
                with self.log_path.open("a") as f:
                    f.write(f"\n[e2e] llmtrace did not exit within {timeout}s of SIGTERM; killed\n")
        else:
            self.exit_code = self.proc.returncode
        return self.exit_code


def start_llmtrace(data_dir: Path, log_path: Path, startup_timeout: float = 60.0) -> Llmtrace:
    binary = llmtrace_bin()
    if not binary.is_file():
        raise RuntimeError(
            f"llmtrace binary not found at {binary}; build it with `cargo build` "
            "or point LLMTRACE_BIN at it"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(binary), "serve",
        "--data-dir", str(data_dir),
        "--grpc-addr", "127.0.0.1:0",
        "--http-addr", "127.0.0.1:0",
        "--api-addr", "127.0.0.1:0",
    ]
    env = clean_env(NO_COLOR="1")
    env.setdefault("RUST_LOG", "info")
    logf = log_path.open("wb")
    with log_path.open("a") as f:
        f.write(f"[e2e] $ {' '.join(cmd)}\n")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    logf.close()
    lt = Llmtrace(proc=proc, data_dir=data_dir, log_path=log_path)

    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        ports = parse_listening(lt.log())
        if ports:
            lt.ports = ports
            break
        if proc.poll() is not None:
            raise RuntimeError(f"llmtrace exited with {proc.returncode} before listening:\n{lt.log_tail()}")
        time.sleep(0.1)
    else:
        lt.terminate(timeout=10)
        raise RuntimeError(f"no 'listening grpc=… http=… api=…' line within {startup_timeout}s:\n{lt.log_tail()}")

    # /healthz must answer 200 once it says it is listening (allow a short grace period).
    last_err: Exception | None = None
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"{lt.api_url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return lt
                last_err = RuntimeError(f"/healthz answered {r.status}")
        except Exception as e:  # noqa: BLE001
            last_err = e
        time.sleep(0.1)
    lt.terminate(timeout=10)
    raise RuntimeError(f"GET /healthz on {lt.api_url} did not answer 200: {last_err}\n{lt.log_tail()}")


def run_app(script: Path, args: list[str], timeout: float = 120.0) -> dict[str, Any]:
    """Runs an app script; returns its JSON output (plus returncode and stderr)."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True, text=True, timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL,
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {"unparsed_stdout": proc.stdout}
    out["returncode"] = proc.returncode
    out["stderr"] = proc.stderr
    return out


@dataclass
class AppRun:
    """One scenario: an app run against its own ``llmtrace serve``, then what llmtrace stored."""

    name: str
    service_name: str
    llmtrace: Llmtrace
    app: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    # What ``while_running`` asked the server after the app exited, before SIGTERM.
    live: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def execute(
        cls,
        name: str,
        service_name: str,
        base: Path,
        script: Path,
        app_args: Callable[[Llmtrace], list[str]],
        while_running: Callable[[Llmtrace], dict[str, Any]] | None = None,
    ):
        """Starts llmtrace under ``base``, runs ``script`` with ``app_args(llmtrace)``, then
        ``while_running(llmtrace)`` (questions to the live server, kept as ``live``), stops
        llmtrace with SIGTERM and reads the Parquet files it wrote."""
        lt = start_llmtrace(base / "data", base / "llmtrace.log")
        live: dict[str, Any] = {}
        try:
            app = run_app(script, app_args(lt))
            if while_running is not None:
                live = while_running(lt)
        finally:
            lt.terminate(timeout=60)
        r = cls(name=name, service_name=service_name, llmtrace=lt, app=app, live=live)
        r.files = parquet_files(lt.data_dir)
        if r.files:
            r.rows = read_spans(lt.data_dir)
        return r

    def sent_spans(self) -> list[dict[str, Any]]:
        return self.app.get("spans", [])

    def sent_root(self) -> dict[str, Any]:
        found = [s for s in self.sent_spans() if s["name"] == APP_ROOT_SPAN]
        assert len(found) == 1
        return found[0]

    def assert_app_exported(self) -> None:
        """The app exited 0 and every OTLP export succeeded."""
        app = self.app
        assert app["returncode"] == 0, f"app failed ({app['returncode']}):\n{app.get('stderr', '')[-3000:]}"
        assert app["export_results"] and all(r == "SUCCESS" for r in app["export_results"])

    def assert_llmtrace_exited_zero(self) -> None:
        assert self.llmtrace.exit_code == 0, (
            f"llmtrace exit code after SIGTERM: {self.llmtrace.exit_code} (None = did not exit in time)"
        )


def parquet_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spans").rglob("*.parquet"))


def read_spans(data_dir: Path) -> list[dict[str, Any]]:
    """All span rows, read by DuckDB with Hive partitioning.

    ``tenant``, ``date`` and ``hour`` come from the directory names (with
    ``hive_partitioning=true`` DuckDB lets the path value win over a column of
    the same name in the file); the file's own ``tenant`` column is returned as
    ``file_tenant``. For every timestamp column ``c`` an extra ``c__ns`` holds
    ``epoch_ns(c)`` (DuckDB may keep only microseconds of a UTC ns timestamp).
    """
    import duckdb

    glob = str(data_dir / "spans" / "**" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    try:
        src = (
            f"read_parquet('{glob}', hive_partitioning=true, union_by_name=true, "
            f"hive_types_autocast=false, filename=true)"
        )
        cols = con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
        extra = [f"epoch_ns({name}) AS {name}__ns" for name, typ, *_ in cols if typ.upper().startswith("TIMESTAMP")]
        sel = ", ".join(["*", *extra])
        cur = con.execute(f"SELECT {sel} FROM {src}")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]

        # The file's own columns, without Hive partitioning, keyed by (filename, span_id).
        src_file = f"read_parquet('{glob}', hive_partitioning=false, union_by_name=true, filename=true)"
        file_cols = {c[0] for c in con.execute(f"DESCRIBE SELECT * FROM {src_file}").fetchall()}
        if "tenant" in file_cols and "span_id" in file_cols:
            ft = {
                (f, s): t
                for f, s, t in con.execute(f"SELECT filename, span_id, tenant FROM {src_file}").fetchall()
            }
            for r in rows:
                r["file_tenant"] = ft.get((r.get("filename"), r.get("span_id")))
        return rows
    finally:
        con.close()


def duckdb_sql(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    """Runs ``sql`` in DuckDB with a view ``spans`` over every Parquet file under
    ``data_dir/spans`` (Hive partitioning, as :func:`read_spans`); rows as dicts."""
    import duckdb

    glob = str(data_dir / "spans" / "**" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    try:
        con.execute(
            f"CREATE VIEW spans AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true, "
            f"union_by_name=true, hive_types_autocast=false)"
        )
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _api(lt: Llmtrace, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """GET (or, with ``body``, POST as JSON) ``path`` on llmtrace's API; the JSON answer.
    Raises with the status and body on anything but 200."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{lt.api_url}{path}", data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{req.get_method()} {path} answered {e.code}: {e.read()[:2000]!r}") from e


def api_stats(lt: Llmtrace, **params: str) -> dict[str, Any]:
    """``GET /api/v1/stats`` with ``params`` (e.g. ``group_by="model"``)."""
    return _api(lt, "/api/v1/stats?" + urllib.parse.urlencode(params))


def api_query(lt: Llmtrace, sql: str) -> list[dict[str, Any]]:
    """``POST /api/v1/query``; rows as dicts keyed by column name."""
    answer = _api(lt, "/api/v1/query", {"sql": sql})
    names = [c["name"] for c in answer["columns"]]
    assert not answer.get("truncated"), f"query answer truncated: {sql}"
    return [dict(zip(names, r)) for r in answer["rows"]]


def otlp_status_to_column(code: str) -> str:
    """Maps the OTel SDK StatusCode name the app sent to the contract's ``status`` value."""
    return {"OK": "ok", "ERROR": "error", "UNSET": "unset"}[code]


_PRICES_CACHE: dict[tuple[str, str | None], dict[str, Any]] = {}


def prices_lookup(model: str, provider: str | None = None) -> dict[str, Any]:
    """``llmtrace prices lookup MODEL [--provider P] --format json``, parsed (cached per process).

    The answer's ``matched`` is null (and the exit code 1) when the price book knows no such model.
    """
    key = (model, provider)
    if key not in _PRICES_CACHE:
        cmd = [str(llmtrace_bin()), "prices", "lookup", model, "--format", "json"]
        if provider:
            cmd += ["--provider", provider]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, env=clean_env(NO_COLOR="1"), stdin=subprocess.DEVNULL,
        )
        # Exit 0 when the book knows the model; 1, with the same JSON and "matched": null, when not.
        try:
            answer = json.loads(proc.stdout)
        except json.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict) or proc.returncode not in (0, 1) or (
            proc.returncode == 1 and answer.get("matched") is not None
        ):
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        _PRICES_CACHE[key] = answer
    return _PRICES_CACHE[key]


def llmtrace_query(data_dir: Path, sql: str, timeout: float = 120.0) -> dict[str, Any]:
    """``llmtrace query --data-dir DIR --format json SQL``, parsed.

    The answer is ``{"columns": [{"name", "type"}], "rows": [[...]], "row_count", "truncated",
    "elapsed_ms"}``; raises if the command fails or prints something else.
    """
    cmd = [str(llmtrace_bin()), "query", "--data-dir", str(data_dir), "--format", "json", sql]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(NO_COLOR="1"), stdin=subprocess.DEVNULL,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        answer = None
    if proc.returncode != 0 or not isinstance(answer, dict) or not isinstance(answer.get("rows"), list):
        raise RuntimeError(
            f"llmtrace query exited {proc.returncode} for:\n  {sql}\n"
            f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
        )
    return answer
