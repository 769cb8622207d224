"""End to end: a real OpenAI client instrumented by opentelemetry-instrumentation-openai-v2
exports to ``llmtrace serve``; after SIGTERM, DuckDB reads the Parquet files and the LLM
facts of the three calls must match what the mock OpenAI server answered.

Two scenarios, each with its own llmtrace process and data dir:

* ``http``: OTLP/HTTP protobuf, the instrumentation exactly as it comes (defaults);
* ``grpc``: OTLP/gRPC, and the app also tags its streaming call with
  ``gen_ai.request.stream=true`` (semconv v1.41), which this instrumentation version does
  not set by itself.

Expected token counts and models come from ``mock_openai.MODELS``; expected ids, times
and status come from the spans the app reports having sent.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

import harness
from mock_openai import MODELS, PLAIN_MODEL, RATE_LIMITED_MODEL, STREAM_MODEL

APP = harness.E2E_DIR / "app_openai_v2.py"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

# call name -> request model; names match the keys of the app's "calls" output.
CALLS = {"plain": PLAIN_MODEL, "stream": STREAM_MODEL, "rate_limited": RATE_LIMITED_MODEL}

SCENARIOS = {
    "http": {"protocol": "http", "tag_streaming": False},
    "grpc": {"protocol": "grpc", "tag_streaming": True},
}


class Run(harness.AppRun):
    def sent_llm_span(self, request_model: str) -> dict[str, Any]:
        found = [s for s in self.sent_spans() if s["attributes"].get("gen_ai.request.model") == request_model]
        assert len(found) == 1, f"app sent {len(found)} spans for {request_model}"
        return found[0]

    def llm_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("is_llm") is True]

    def llm_row(self, request_model: str) -> dict[str, Any]:
        found = [r for r in self.llm_rows() if r.get("request_model") == request_model]
        assert len(found) == 1, (
            f"expected one is_llm row with request_model={request_model!r}, got {len(found)}; "
            f"LLM rows: {[(r.get('span_name'), r.get('request_model')) for r in self.llm_rows()]}"
        )
        return found[0]


@pytest.fixture(scope="module", params=list(SCENARIOS))
def run(request, tmp_path_factory, mock_openai_server) -> Run:
    name = request.param
    sc = SCENARIOS[name]
    base = tmp_path_factory.mktemp(f"openai-v2-{name}")
    service_name = f"llmtrace-e2e-openai-{name}"

    def app_args(lt: harness.Llmtrace) -> list[str]:
        endpoint = lt.http_traces_url if sc["protocol"] == "http" else lt.grpc_endpoint
        args = [
            "--mock-base-url", mock_openai_server.base_url,
            "--otlp-endpoint", endpoint,
            "--protocol", sc["protocol"],
            "--service-name", service_name,
        ]
        if sc["tag_streaming"]:
            args.append("--tag-streaming")
        return args

    return Run.execute(name, service_name, base, APP, app_args)


# ---------------------------------------------------------------------------
# process level


def test_app_exported_all_spans(run: Run):
    run.assert_app_exported()
    app = run.app
    # The client saw what the mock table says.
    for call, model in CALLS.items():
        entry = MODELS[model]
        got = app["calls"][call]
        if "error" in entry:
            assert got == {"error": "RateLimitError", "status_code": entry["error"]["status"]}
        else:
            assert got["model"] == entry["response_model"]
            assert got["input_tokens"] == entry["input_tokens"]
            assert got["output_tokens"] == entry["output_tokens"]
    assert len(run.sent_spans()) == 4  # 3 LLM calls + the app's root span


def test_llmtrace_exits_zero_on_sigterm(run: Run):
    run.assert_llmtrace_exited_zero()


# ---------------------------------------------------------------------------
# on-disk layout


def test_parquet_hive_layout(run: Run):
    spans_dir = run.llmtrace.data_dir / "spans"
    assert run.files, f"no Parquet files under {spans_dir}; data dir holds: {sorted(map(str, run.llmtrace.data_dir.rglob('*')))}"
    layout = re.compile(r"^tenant=default/date=\d{4}-\d{2}-\d{2}/hour=\d{2}/[^/]+\.parquet$")
    for f in run.files:
        rel = f.relative_to(spans_dir).as_posix()
        assert layout.match(rel), f"unexpected Parquet path {rel}"
    for row in run.rows:
        assert row["tenant"] == "default"  # from the hive path
        if "file_tenant" in row:
            assert row["file_tenant"] == "default"  # the column inside the file
        # The partition is the span's start hour (or the next one, if it is by receive time
        # and the run straddled an hour boundary).
        start_ns = row["start_time__ns"]
        hours = {
            _utc_hour(start_ns),
            _utc_hour(start_ns + 3600 * 10**9),
        }
        assert (row["date"], row["hour"]) in hours, (row["date"], row["hour"], start_ns)


def _utc_hour(ns: int) -> tuple[str, str]:
    import datetime as dt

    t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%d"), t.strftime("%H")


def test_every_sent_span_stored_once(run: Run):
    sent = sorted(s["span_id"] for s in run.sent_spans())
    stored = sorted(r["span_id"] for r in run.rows)
    assert stored == sent


# ---------------------------------------------------------------------------
# LLM facts


def test_exactly_three_llm_rows(run: Run):
    llm = run.llm_rows()
    assert len(llm) == 3, [(r.get("span_name"), r.get("is_llm")) for r in run.rows]
    assert sorted(r["request_model"] for r in llm) == sorted(CALLS.values())
    root = [r for r in run.rows if r["span_id"] == run.sent_root()["span_id"]]
    assert len(root) == 1 and root[0]["is_llm"] is False


@pytest.mark.parametrize("call", list(CALLS))
def test_llm_call_row(run: Run, call: str):
    request_model = CALLS[call]
    entry = MODELS[request_model]
    sent = run.sent_llm_span(request_model)
    row = run.llm_row(request_model)
    failed = "error" in entry

    # identity and linkage
    assert HEX32.match(row["trace_id"]), row["trace_id"]
    assert HEX16.match(row["span_id"]), row["span_id"]
    assert row["trace_id"] == sent["trace_id"]
    assert row["span_id"] == sent["span_id"]
    assert row["parent_span_id"] == sent["parent_span_id"] == run.sent_root()["span_id"]
    assert row["service_name"] == run.service_name
    assert row["tenant"] == "default"
    assert row["span_name"] == sent["name"]
    assert row["scope_name"] == sent["scope"]
    assert "client" in str(row["span_kind"]).lower(), row["span_kind"]

    # times: DuckDB may keep microseconds only
    assert abs(row["start_time__ns"] - sent["start_time_unix_nano"]) < 1000
    assert abs(row["end_time__ns"] - sent["end_time_unix_nano"]) < 1000
    expected_ms = (sent["end_time_unix_nano"] - sent["start_time_unix_nano"]) / 1e6
    assert math.isclose(row["duration_ms"], expected_ms, abs_tol=0.01), (row["duration_ms"], expected_ms)

    # LLM facts
    assert row["provider"] == "openai"
    assert row["operation"] == "chat"
    assert row["request_model"] == request_model
    if failed:
        assert row["response_model"] is None
        assert row["model"] == request_model
        assert row["input_tokens"] is None and row["output_tokens"] is None
    else:
        assert row["response_model"] == entry["response_model"]
        assert row["model"] == entry["response_model"]
        assert row["input_tokens"] == entry["input_tokens"]
        assert row["output_tokens"] == entry["output_tokens"]
        assert row["total_tokens"] in (None, entry["input_tokens"] + entry["output_tokens"])

    # status: what the span carried. The instrumentation leaves successful spans UNSET
    # (it never sets OK), so the faithful value for them is 'unset', not 'ok'.
    expected_status = harness.otlp_status_to_column(sent["status"])
    assert row["status"] == expected_status, (
        f"sent status {sent['status']!r} -> expected {expected_status!r}, stored {row['status']!r}"
    )
    if failed:
        assert row["status"] == "error"
        assert row["error_type"] == "rate_limited", (
            f"sent error.type={sent['attributes'].get('error.type')!r}, "
            f"status description={sent['status_description']!r}"
        )
        assert row["status_message"] == sent["status_description"]
        assert "429" in row["status_message"]
    else:
        assert row["status"] != "error"
        assert row["error_type"] is None

    if call == "plain":
        assert row["finish_reason"] == "stop"  # sent as gen_ai.response.finish_reasons ["stop"]
    if call != "stream":
        assert row["streaming"] is not True
        assert row["ttft_ms"] is None  # streaming calls only


def test_streamed_call_is_streaming(run: Run):
    """Streaming is stored as the span says: true when marked, and unknown (NULL),
    never false, when the instrumentation sends no marker (openai-v2 2.4b0 sends none)."""
    sent = run.sent_llm_span(STREAM_MODEL)
    row = run.llm_row(STREAM_MODEL)
    if sent["attributes"].get("gen_ai.request.stream") is True:
        assert row["streaming"] is True
    else:
        assert row["streaming"] is None, row["streaming"]
        assert row["ttft_ms"] is None


def test_attributes_and_resource_kept(run: Run):
    for call, model in CALLS.items():
        sent = run.sent_llm_span(model)
        row = run.llm_row(model)
        res = dict(row["resource_attributes"] or {})
        assert res.get("service.version") == sent["resource"]["service.version"]
        assert res.get("deployment.environment") == "e2e"
        attrs = dict(row["attributes"] or {})
        assert attrs.get("server.address") == "127.0.0.1", attrs
        assert attrs.get("server.port") == str(sent["attributes"]["server.port"]), attrs

