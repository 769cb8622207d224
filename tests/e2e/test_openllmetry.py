"""End to end: OpenLLMetry (traceloop's ``opentelemetry-instrumentation-openai`` and
``opentelemetry-instrumentation-anthropic``) instruments real OpenAI and Anthropic clients
talking to local mock servers and exports over OTLP/HTTP protobuf to ``llmtrace serve``;
after SIGTERM, DuckDB reads the Parquet files and every LLM call's row must hold what the
mocks answered, normalised (Anthropic's input tokens made inclusive of cache reads and
writes), and be priced from the price book (``llmtrace prices lookup``) with the formula
of docs/price-book.md, computed here with ``decimal``.

Four scenarios, each with its own llmtrace process and data dir:

* ``openllmetry``: the anthropic SDK's own OpenTelemetry spans turned off, so every call
  makes exactly one span, OpenLLMetry's (``openai.chat`` / ``anthropic.chat``), all under
  one application root span;
* ``openllmetry+anthropic-sdk``: anthropic 2.x's own spans on, as they are by default:
  each Anthropic call also makes an ``anthropic.messages.create`` span (scope
  ``com.anthropic.sdk.python``, semconv attributes), a sibling of OpenLLMetry's under the
  app's root span, with the same ``gen_ai.response.id``;
* ``openllmetry+anthropic-sdk/no-parent``: the same, but the app makes its calls without
  any parent span, as most applications do: the two spans of an Anthropic call are then
  roots of two different traces (checked on what the app sent), and may arrive in the
  same export request or in two;
* ``openllmetry+anthropic-sdk/no-parent/batch-1``: the same, exported one span per request
  (``max_export_batch_size=1``), so the two spans of a call always arrive in different
  export requests.

Whatever the trace and request each span of a pair arrives in, llmtrace counts the call
once: one span keeps the LLM facts and is checked like any other, the other is stored as a
non-LLM span pointing at it (``attributes['llmtrace.duplicate_of']``). That holds for the
pair of a successful call (same response id, overlapping times) and for the pair of the
rate-limited call, which carries no response id: exactly one LLM row per call. Which span
is kept: within one export request the deepest, then the one with more token facts, then
the earliest start, then the lowest (trace id, span id); across requests the first
acknowledged, which the tests check for every pair whose spans were exported in different
requests. The per-model sums of calls, errors, tokens and cost (DuckDB over the Parquet
files, SQL through the live server's ``POST /api/v1/query``, and its
``/api/v1/stats?group_by=model``) must be one count per call of the mock's numbers.

Expected token counts and models come from ``mock_openai.MODELS`` and
``mock_anthropic.MODELS`` (the mocks give every response its own id, as real providers
do); cache, reasoning and streaming columns are expected to be what the span carried (0 if
it sent 0, null if it sent nothing); ids, times and status come from the spans the app
reports having sent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

import harness
import mock_anthropic
import mock_openai

APP = harness.E2E_DIR / "app_openllmetry.py"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

# call name (key of the app's "calls" output) -> (provider, request model)
CALLS: dict[str, tuple[str, str]] = {
    "openai_plain": ("openai", mock_openai.PLAIN_MODEL),
    "openai_stream": ("openai", mock_openai.STREAM_MODEL),
    "anthropic_plain": ("anthropic", mock_anthropic.PLAIN_MODEL),
    "anthropic_cache_write": ("anthropic", mock_anthropic.CACHE_WRITE_MODEL),
    "anthropic_cache_read": ("anthropic", mock_anthropic.CACHE_READ_MODEL),
    "anthropic_stream": ("anthropic", mock_anthropic.STREAM_MODEL),
    "anthropic_unpriced": ("anthropic", mock_anthropic.UNPRICED_MODEL),
    "anthropic_rate_limited": ("anthropic", mock_anthropic.RATE_LIMITED_MODEL),
}
STREAM_CALLS = {"openai_stream", "anthropic_stream"}

SCENARIOS: dict[str, dict[str, Any]] = {
    "openllmetry": {"anthropic_sdk_tracing": "off", "app_root_span": "on", "max_export_batch_size": None},
    "openllmetry+anthropic-sdk": {"anthropic_sdk_tracing": "on", "app_root_span": "on", "max_export_batch_size": None},
    "openllmetry+anthropic-sdk/no-parent": {
        "anthropic_sdk_tracing": "on", "app_root_span": "off", "max_export_batch_size": None,
    },
    "openllmetry+anthropic-sdk/no-parent/batch-1": {
        "anthropic_sdk_tracing": "on", "app_root_span": "off", "max_export_batch_size": 1,
    },
}

OLM_SCOPES = ("opentelemetry.instrumentation.openai", "opentelemetry.instrumentation.anthropic")
ANTHROPIC_SDK_SCOPE = "com.anthropic.sdk.python"

# Attribute names, in the order llmtrace is to read them (docs: shared genai-attributes.md §4).
CACHE_READ_ATTRS = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
CACHE_WRITE_ATTRS = (
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
)
REASONING_ATTRS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
)
STREAM_ATTRS = ("gen_ai.request.stream", "gen_ai.is_streaming", "llm.is_streaming")
CHUNK_EVENTS = ("gen_ai.content.completion.chunk", "llm.content.completion.chunk")


def span_source(span: dict[str, Any]) -> str:
    scope = span.get("scope") or ""
    if scope.startswith(OLM_SCOPES):
        return "openllmetry"
    if scope == ANTHROPIC_SDK_SCOPE:
        return "anthropic-sdk"
    return scope


def first_attr(attrs: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in attrs and attrs[n] is not None and attrs[n] != "":
            return attrs[n]
    return None


def as_bool(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() == "true"


def as_int(v: Any) -> int | None:
    return None if v is None else int(v)


# ---------------------------------------------------------------------------
# expectations from the mock tables


@dataclass
class Expected:
    """Normalised token counts for one LLM span: input inclusive of cache reads and writes."""

    input_tokens: int | None
    output_tokens: int | None
    cache_read: int  # for pricing; the column is checked against what the span carried
    cache_write: int
    reasoning: int = 0


def expected_tokens(call: str, span: dict[str, Any]) -> Expected | None:
    provider, model = CALLS[call]
    if provider == "openai":
        e = mock_openai.MODELS[model]
        if "error" in e:
            return None
        # OpenAI's prompt_tokens already include cached tokens; the mock sends cached_tokens 0.
        return Expected(e["input_tokens"], e["output_tokens"], 0, 0)
    e = mock_anthropic.MODELS[model]
    if "error" in e:
        return None
    output = e["output_tokens"]
    if call == "anthropic_stream" and span_source(span) == "openllmetry":
        # OpenLLMetry's Anthropic stream accumulator ADDS message_start's output_tokens to
        # message_delta's (already cumulative) count, so its span carries one more than the
        # API reported; llmtrace can only store what the span says.
        output += mock_anthropic.STREAM_START_OUTPUT_TOKENS
    return Expected(
        mock_anthropic.total_input_tokens(e),
        output,
        e["cache_read_input_tokens"],
        e["cache_creation_input_tokens"],
    )


def expected_response_model(call: str) -> str | None:
    provider, model = CALLS[call]
    table = mock_openai.MODELS if provider == "openai" else mock_anthropic.MODELS
    return table[model].get("response_model")


def is_failed(call: str) -> bool:
    provider, model = CALLS[call]
    table = mock_openai.MODELS if provider == "openai" else mock_anthropic.MODELS
    return "error" in table[model]


# ---------------------------------------------------------------------------
# pricing (docs/price-book.md), in decimal arithmetic


def _d(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def expected_cost(matched: dict[str, Any], tok: Expected) -> Decimal:
    base = matched["prices"]
    prices = dict(base)
    # Long-context tier: the highest threshold the call's total input exceeds; fields it
    # leaves out come from the base row.
    tiers = sorted(matched.get("tiers") or [], key=lambda t: t["input_tokens_gt"])
    for t in tiers:
        if tok.input_tokens > t["input_tokens_gt"]:
            prices = {k: (t["prices"].get(k) if t["prices"].get(k) is not None else base.get(k)) for k in base}
    def price(name: str, fallback: Decimal | None = None) -> Decimal:
        v = _d(prices.get(name))
        return fallback if v is None else v  # "0" is a price (free), only absent falls back

    p_in = price("input")
    p_out = price("output")
    p_cr = price("cache_read", p_in)  # absent: billed as input
    p_cw = price("cache_write", p_in)  # absent: billed as input
    p_cw1h = price("cache_write_1h", p_cw)  # absent: billed as cache_write
    p_rs = price("reasoning", p_out)  # absent: billed as output
    uncached = tok.input_tokens - tok.cache_read - tok.cache_write
    cw_5m, cw_1h = tok.cache_write, 0  # the mock's writes are all 5-minute ones
    total = (
        uncached * p_in
        + tok.cache_read * p_cr
        + cw_5m * p_cw
        + cw_1h * p_cw1h
        + (tok.output_tokens - tok.reasoning) * p_out
        + tok.reasoning * p_rs
    )
    return total / Decimal(1_000_000)


def price_entry(provider: str, response_model: str | None, request_model: str) -> tuple[dict[str, Any] | None, str]:
    """The matched entry (response model first, then requested model: docs/price-book.md)
    and the book's version."""
    answer: dict[str, Any] = {}
    for m in (response_model, request_model):
        if m:
            answer = harness.prices_lookup(m, provider)
            if answer["matched"] is not None:
                return answer["matched"], answer.get("book_version")
    return None, answer.get("book_version")


# ---------------------------------------------------------------------------
# running it


class Run(harness.AppRun):
    @property
    def sdk_tracing(self) -> bool:
        return SCENARIOS[self.name]["anthropic_sdk_tracing"] == "on"

    @property
    def has_app_root(self) -> bool:
        return SCENARIOS[self.name]["app_root_span"] == "on"

    def export_request_of(self, span_id: str) -> int:
        """The position of the OTLP export request that carried the span (requests are sent,
        and acknowledged, one after the other)."""
        found = [n for n, ids in enumerate(self.app["export_batches"]) if span_id in ids]
        assert len(found) == 1, f"span {span_id} in export requests {found}"
        return found[0]

    def sent_by_id(self) -> dict[str, dict[str, Any]]:
        return {s["span_id"]: s for s in self.sent_spans()}

    def call_spans(self, call: str) -> list[dict[str, Any]]:
        by_id = self.sent_by_id()
        return [by_id[i] for i in self.app["calls"][call]["span_ids"]]

    def row(self, span_id: str) -> dict[str, Any]:
        found = [r for r in self.rows if r["span_id"] == span_id]
        assert len(found) == 1, f"{len(found)} rows for span {span_id}"
        return found[0]

    def expected_span_count(self, call: str) -> int:
        return 2 if (self.sdk_tracing and CALLS[call][0] == "anthropic") else 1

    def kept_span(self, call: str) -> dict[str, Any]:
        """The span of the call that keeps its LLM facts: the one stored with is_llm (exactly
        one must be, see test_each_call_is_one_llm_row), or the first if that is not so."""
        spans = self.call_spans(call)
        kept = [s for s in spans if self.row(s["span_id"]).get("is_llm") is True]
        return kept[0] if len(kept) == 1 else spans[0]

    def roles(self, call: str) -> dict[str, str | None]:
        """span id -> None for the span that must be the call's LLM row, or the span id of
        that row for the others. All spans of one call are one LLM call."""
        keeper = self.kept_span(call)["span_id"]
        return {s["span_id"]: (None if s["span_id"] == keeper else keeper) for s in self.call_spans(call)}


# Per model over the LLM calls: calls, failed calls, input and output tokens, cost, unpriced
# calls. {table} is the spans' table (`spans`, then WHERE is_llm) or `llm_calls`.
PER_MODEL_SQL = """
SELECT model,
       count(*) AS requests,
       count(*) FILTER (WHERE status = 'error') AS errors,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd,
       count(*) FILTER (WHERE cost_status = 'unpriced') AS unpriced
FROM {table}
GROUP BY model
"""


def ask_live_server(lt: harness.Llmtrace) -> dict[str, Any]:
    """After the app's last export was acknowledged, before SIGTERM: the per-model sums as
    the live server answers them (SQL over `llm_calls`, which covers acknowledged spans not
    yet flushed, and the live aggregates). A failed question is kept as its error."""
    live: dict[str, Any] = {}
    questions = {
        "api-query": lambda: harness.api_query(lt, PER_MODEL_SQL.format(table="llm_calls")),
        "api-stats": lambda: harness.api_stats(lt, group_by="model", window="15m")["groups"],
    }
    for name, ask in questions.items():
        try:
            live[name] = ask()
        except Exception as e:  # noqa: BLE001 - reported by the test that reads it
            live[name] = {"error": f"{type(e).__name__}: {e}"}
    return live


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


@pytest.fixture(scope="module", params=list(SCENARIOS))
def run(request, tmp_path_factory, mock_openai_server, mock_anthropic_server) -> Run:
    name = request.param
    scenario = SCENARIOS[name]
    base = tmp_path_factory.mktemp(f"openllmetry-{slug(name)}")
    service_name = f"llmtrace-e2e-{slug(name)}"

    def app_args(lt: harness.Llmtrace) -> list[str]:
        args = [
            "--openai-base-url", mock_openai_server.base_url,
            "--anthropic-base-url", mock_anthropic_server.base_url,
            "--otlp-endpoint", lt.http_traces_url,
            "--service-name", service_name,
            "--anthropic-sdk-tracing", scenario["anthropic_sdk_tracing"],
            "--app-root-span", scenario["app_root_span"],
        ]
        if scenario["max_export_batch_size"] is not None:
            args += ["--max-export-batch-size", str(scenario["max_export_batch_size"])]
        return args

    return Run.execute(name, service_name, base, APP, app_args, while_running=ask_live_server)


class Mismatches:
    """Collects every column that differs, so one failure shows the whole row's story."""

    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []

    def eq(self, column: str, got: Any, want: Any, note: str = "") -> None:
        if got != want:
            self.items.append(f"{column}: stored {got!r}, expected {want!r}{'  (' + note + ')' if note else ''}")

    def check(self, ok: bool, msg: str) -> None:
        if not ok:
            self.items.append(msg)

    def assert_none(self) -> None:
        assert not self.items, f"{self.what}:\n  " + "\n  ".join(self.items)


# ---------------------------------------------------------------------------
# process level and what the instrumentations sent


def test_app_exported_all_spans(run: Run):
    run.assert_app_exported()
    app = run.app
    for call in CALLS:
        got = app["calls"][call]
        assert "unexpected_error" not in got, (call, got)
        provider, model = CALLS[call]
        if is_failed(call):
            assert got["error"] == "RateLimitError" and got["status_code"] == 429, (call, got)
        elif provider == "openai":
            e = mock_openai.MODELS[model]
            assert (got["model"], got["input_tokens"], got["output_tokens"]) == (
                e["response_model"], e["input_tokens"], e["output_tokens"]
            ), (call, got)
        else:
            e = mock_anthropic.MODELS[model]
            for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                assert got[k] == e[k], (call, k, got)
            assert got["model"] == e["response_model"]
        assert len(got["span_ids"]) == run.expected_span_count(call), (call, got["span_ids"])
    app_root = 1 if run.has_app_root else 0
    assert len(run.sent_spans()) == app_root + sum(run.expected_span_count(c) for c in CALLS)


def test_call_spans_placed_as_the_scenario_says(run: Run):
    """What the instrumentations really do with the pinned packages, so that the scenarios
    test what they claim: the two spans of an Anthropic call (SDK's and OpenLLMetry's) are
    siblings under the app's root span, or, without one, roots of two different traces;
    both carry the mock's response id when the call succeeded, neither when it failed; and
    with one span per export request, they arrive in different requests."""
    response_ids = []
    for call in CALLS:
        spans = run.call_spans(call)
        sources = sorted(span_source(s) for s in spans)
        if run.expected_span_count(call) == 2:
            assert sources == ["anthropic-sdk", "openllmetry"], (call, sources)
        else:
            assert sources == ["openllmetry"], (call, sources)
        if run.has_app_root:
            root = run.sent_root()
            for s in spans:
                assert (s["trace_id"], s["parent_span_id"]) == (root["trace_id"], root["span_id"]), (call, s["name"])
        else:
            assert all(s["parent_span_id"] is None for s in spans), (call, [s["parent_span_id"] for s in spans])
            assert len({s["trace_id"] for s in spans}) == len(spans), f"{call}: spans share a trace"
        ids = {s["attributes"].get("gen_ai.response.id") for s in spans}
        if is_failed(call):
            assert ids == {None}, (call, ids)
        else:
            assert len(ids) == 1 and None not in ids, (call, ids)
            response_ids.append(ids.pop())
        if SCENARIOS[run.name]["max_export_batch_size"] == 1:
            requests = [run.export_request_of(s["span_id"]) for s in spans]
            assert len(set(requests)) == len(spans), f"{call}: spans exported in requests {requests}"
    assert len(set(response_ids)) == len(response_ids), f"calls share a response id: {response_ids}"


@pytest.mark.parametrize("call", list(CALLS))
def test_instrumentation_sent_mock_values(run: Run, call: str):
    """What the instrumentation put on the span agrees with the mock (or with a known quirk):
    a failure here is the instrumentation's, not llmtrace's."""
    provider, model = CALLS[call]
    for span in run.call_spans(call):
        a = span["attributes"]
        m = Mismatches(f"{call} span {span['name']} ({span_source(span)}) sent")
        m.eq("gen_ai.request.model", a.get("gen_ai.request.model"), model)
        m.eq("provider", a.get("gen_ai.provider.name") or a.get("gen_ai.system"), provider)
        m.eq("gen_ai.operation.name", a.get("gen_ai.operation.name"), "chat")
        tok = expected_tokens(call, span)
        if tok is None:
            m.check("gen_ai.usage.input_tokens" not in a, "failed call carries input tokens")
            m.eq("status", span["status"], "ERROR")
        else:
            m.eq("gen_ai.response.model", a.get("gen_ai.response.model"), expected_response_model(call))
            m.eq("gen_ai.usage.input_tokens (inclusive)", as_int(a.get("gen_ai.usage.input_tokens")), tok.input_tokens)
            m.eq("gen_ai.usage.output_tokens", as_int(a.get("gen_ai.usage.output_tokens")), tok.output_tokens)
            cr = as_int(first_attr(a, CACHE_READ_ATTRS))
            cw = as_int(first_attr(a, CACHE_WRITE_ATTRS))
            m.check(cr in (None, tok.cache_read), f"cache read sent {cr}, mock {tok.cache_read}")
            m.check(cw in (None, tok.cache_write), f"cache write sent {cw}, mock {tok.cache_write}")
            if provider == "anthropic":
                m.eq("cache read sent", cr, tok.cache_read)
                m.eq("cache write sent", cw, tok.cache_write)
        if call in STREAM_CALLS:
            m.eq("streaming flag", as_bool(first_attr(a, STREAM_ATTRS)), True)
        m.assert_none()


def test_llmtrace_exits_zero_on_sigterm(run: Run):
    run.assert_llmtrace_exited_zero()


def test_every_sent_span_stored_once(run: Run):
    assert run.files, f"no Parquet files under {run.llmtrace.data_dir / 'spans'}"
    assert sorted(r["span_id"] for r in run.rows) == sorted(s["span_id"] for s in run.sent_spans())


@pytest.mark.parametrize("call", list(CALLS))
def test_each_call_is_one_llm_row(run: Run, call: str):
    """All spans of one call, whatever trace and export request each arrived in, with the
    same response id or (the rate-limited call) none: exactly one keeps the LLM facts, the
    others are stored as non-LLM spans that name it in llmtrace.duplicate_of."""
    spans = run.call_spans(call)
    rows = {s["span_id"]: run.row(s["span_id"]) for s in spans}
    keepers = [i for i, r in rows.items() if r["is_llm"] is True]
    assert len(keepers) == 1, (
        f"{run.name} / {call}: is_llm rows {keepers} among the call's spans "
        f"{[(s['name'], s['span_id'], s['trace_id'], run.export_request_of(s['span_id'])) for s in spans]} "
        "(name, span id, trace id, export request)"
    )
    for i, r in rows.items():
        if i == keepers[0]:
            continue
        m = Mismatches(f"{run.name} / {call} / duplicate span {i} of {keepers[0]}")
        attrs = dict(r["attributes"] or {})
        m.eq("is_llm", r["is_llm"], False)
        m.eq("attributes[llmtrace.duplicate_of]", attrs.get("llmtrace.duplicate_of"), keepers[0])
        m.eq("cost_status", r["cost_status"], "not_llm")
        m.eq("cost_usd", r["cost_usd"], None)
        for col in ("provider", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            m.eq(col, r[col], None)
        # the raw attributes stay
        sent = run.sent_by_id()[i]["attributes"]
        for name in ("gen_ai.usage.input_tokens", "gen_ai.response.id"):
            m.eq(f"attributes[{name}]", attrs.get(name), None if name not in sent else str(sent[name]))
        m.assert_none()


def test_across_requests_the_first_acknowledged_span_is_kept(run: Run):
    """For every call whose spans arrived in different export requests (always so with one
    span per request; by chance of the batch timer otherwise), the span kept as the LLM call
    is the one acknowledged first."""
    if not run.sdk_tracing:
        pytest.skip("one span per call: no pair to keep one of")
    crossed = 0
    for call in CALLS:
        spans = run.call_spans(call)
        requests = {s["span_id"]: run.export_request_of(s["span_id"]) for s in spans}
        if len(spans) < 2 or len(set(requests.values())) < 2:
            continue
        crossed += 1
        first = min(requests, key=requests.get)
        kept = [i for i in requests if run.row(i)["is_llm"] is True]
        assert kept == [first], (
            f"{run.name} / {call}: kept {kept}, first acknowledged {first} "
            f"(export request per span: {requests})"
        )
    if SCENARIOS[run.name]["max_export_batch_size"] == 1:
        assert crossed == sum(1 for c in CALLS if run.expected_span_count(c) == 2)
    if crossed == 0:
        pytest.skip("the batch timer split no call's spans across export requests in this run")


def test_llm_rows_are_the_llm_spans(run: Run):
    want = sorted(i for c in CALLS for i, dup in run.roles(c).items() if dup is None)
    got = sorted(r["span_id"] for r in run.rows if r.get("is_llm") is True)
    by_id = run.sent_by_id()
    assert got == want, (
        "is_llm rows differ from the LLM spans sent; extra: "
        f"{[(by_id.get(i, {}).get('name'), i) for i in set(got) - set(want)]}, missing: "
        f"{[(by_id[i]['name'], by_id[i]['scope'], i) for i in set(want) - set(got)]}"
    )
    if run.has_app_root:
        root = run.row(run.sent_root()["span_id"])
        assert root["is_llm"] is False
        assert root["cost_usd"] is None and root["cost_status"] == "not_llm", (root["cost_usd"], root["cost_status"])


# ---------------------------------------------------------------------------
# one LLM call's row


@pytest.mark.parametrize("call", list(CALLS))
def test_llm_call_row(run: Run, call: str):
    provider, request_model = CALLS[call]
    failed = is_failed(call)
    roles = run.roles(call)
    for sent in run.call_spans(call):
        if roles[sent["span_id"]] is not None:
            continue  # a duplicate of the call's LLM row: test_duplicates_counted_once
        a = sent["attributes"]
        row = run.row(sent["span_id"])
        m = Mismatches(f"{run.name} / {call} / span {sent['name']} ({span_source(sent)}) {sent['span_id']}")

        # identity and linkage
        m.check(bool(HEX32.match(row["trace_id"] or "")), f"trace_id {row['trace_id']!r}")
        m.check(bool(HEX16.match(row["span_id"] or "")), f"span_id {row['span_id']!r}")
        m.eq("trace_id", row["trace_id"], sent["trace_id"])
        m.eq("parent_span_id", row["parent_span_id"], sent["parent_span_id"])
        m.eq("service_name", row["service_name"], run.service_name)
        m.eq("span_name", row["span_name"], sent["name"])
        m.eq("scope_name", row["scope_name"], sent["scope"])
        m.check("client" in str(row["span_kind"]).lower(), f"span_kind {row['span_kind']!r}")
        m.check(abs(row["start_time__ns"] - sent["start_time_unix_nano"]) < 1000, "start_time")
        m.check(abs(row["end_time__ns"] - sent["end_time_unix_nano"]) < 1000, "end_time")

        # LLM facts
        m.eq("is_llm", row["is_llm"], True)
        m.eq("provider", row["provider"], provider)
        m.eq("operation", row["operation"], "chat")
        m.eq("request_model", row["request_model"], request_model)
        m.eq("response_id", row["response_id"], a.get("gen_ai.response.id"))
        tok = expected_tokens(call, sent)
        if tok is None:
            m.eq("response_model", row["response_model"], None)
            m.eq("model", row["model"], request_model)
            for col in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "total_tokens"):
                m.eq(col, row[col], None)
        else:
            response_model = expected_response_model(call)
            m.eq("response_model", row["response_model"], response_model)
            m.eq("model", row["model"], response_model)
            sent_in = a.get("gen_ai.usage.input_tokens")
            m.eq("input_tokens", row["input_tokens"], tok.input_tokens,
                 f"mock: uncached + cache read + cache write; span sent gen_ai.usage.input_tokens={sent_in!r}")
            m.eq("output_tokens", row["output_tokens"], tok.output_tokens)
            # cache and reasoning columns: exactly what the span carried (0 stays 0, absent is null)
            for col, names in (
                ("cache_read_tokens", CACHE_READ_ATTRS),
                ("cache_write_tokens", CACHE_WRITE_ATTRS),
                ("reasoning_tokens", REASONING_ATTRS),
            ):
                v = first_attr(a, names)
                m.eq(col, row[col], as_int(v), f"span sent {[(n, a[n]) for n in names if n in a]}")
            m.check(row["total_tokens"] in (None, tok.input_tokens + tok.output_tokens),
                    f"total_tokens: stored {row['total_tokens']!r}, expected null or {tok.input_tokens + tok.output_tokens}")

        # streaming and time to first chunk
        sent_stream = as_bool(first_attr(a, STREAM_ATTRS))
        m.eq("streaming", row["streaming"], sent_stream,
             f"span sent {[(n, a[n]) for n in STREAM_ATTRS if n in a]}")
        if sent_stream is True:
            chunks = [e for e in sent["events"] if e["name"] in CHUNK_EVENTS]
            if a.get("gen_ai.response.time_to_first_chunk") is not None:
                want_ttft = float(a["gen_ai.response.time_to_first_chunk"]) * 1000.0
                how = "gen_ai.response.time_to_first_chunk"
            elif chunks:
                want_ttft = (chunks[0]["time_unix_nano"] - sent["start_time_unix_nano"]) / 1e6
                how = f"first {chunks[0]['name']} event"
            else:
                want_ttft, how = None, "no TTFT attribute or chunk event sent"
            if want_ttft is None:
                m.eq("ttft_ms", row["ttft_ms"], None, how)
            else:
                m.check(row["ttft_ms"] is not None and math.isclose(row["ttft_ms"], want_ttft, abs_tol=0.01),
                        f"ttft_ms: stored {row['ttft_ms']!r}, expected {want_ttft:.3f} from {how}")
        else:
            m.eq("ttft_ms", row["ttft_ms"], None, "not a streaming call")

        # status and errors
        sent_status = harness.otlp_status_to_column(sent["status"])
        if sent_status == "unset" and a.get("error.type"):
            sent_status = "error"
        m.eq("status", row["status"], sent_status)
        if failed:
            m.eq("status", row["status"], "error")
            m.eq("error_type", row["error_type"], "rate_limited",
                 f"sent error.type={a.get('error.type')!r}, http.response.status_code="
                 f"{a.get('http.response.status_code')!r}, status description={sent['status_description']!r}")
            if sent["status_description"]:
                m.eq("status_message", row["status_message"], sent["status_description"])
        else:
            m.check(row["status"] != "error", f"status {row['status']!r} on a successful call")
            m.eq("error_type", row["error_type"], None)
            reasons = a.get("gen_ai.response.finish_reasons")
            if reasons:
                m.eq("finish_reason", row["finish_reason"], reasons[0])

        # raw attributes kept
        attrs = dict(row["attributes"] or {})
        m.eq("attributes[gen_ai.provider.name]", attrs.get("gen_ai.provider.name"), a.get("gen_ai.provider.name"))
        m.eq("attributes[gen_ai.usage.input_tokens]", attrs.get("gen_ai.usage.input_tokens"),
             None if "gen_ai.usage.input_tokens" not in a else str(a["gen_ai.usage.input_tokens"]))
        m.assert_none()


@pytest.mark.parametrize("call", list(CALLS))
def test_llm_call_cost(run: Run, call: str):
    """Priced rows cost what the price book entry and the mock's token counts say (decimal
    arithmetic, docs/price-book.md); models the book does not know stay unpriced (null, never 0)."""
    provider, request_model = CALLS[call]
    response_model = expected_response_model(call)
    matched, book_version = price_entry(provider, response_model, request_model)
    roles = run.roles(call)
    for sent in run.call_spans(call):
        if roles[sent["span_id"]] is not None:
            continue  # a duplicate: not_llm, checked in test_duplicates_counted_once
        row = run.row(sent["span_id"])
        what = f"{run.name} / {call} / {sent['name']} ({span_source(sent)}), model {row['model']!r}"
        tok = expected_tokens(call, sent)
        if matched is None:
            assert row["cost_usd"] is None and row["cost_status"] == "unpriced" and row["price_id"] is None, (
                f"{what}: the price book knows no such model, stored cost_usd={row['cost_usd']!r} "
                f"cost_status={row['cost_status']!r}"
            )
            continue
        if tok is None:
            # A failed call that reported no usage was not billed: priced at 0 (known price).
            assert row["cost_status"] == "priced" and row["cost_usd"] == 0.0, (
                f"{what}: failed call without usage, stored cost_usd={row['cost_usd']!r} "
                f"cost_status={row['cost_status']!r}"
            )
            continue
        want = expected_cost(matched, tok)
        assert row["cost_status"] == "priced", (
            f"{what}: price entry {matched['id']} matched, stored cost_status={row['cost_status']!r} "
            f"cost_usd={row['cost_usd']!r} (expected {want})"
        )
        assert row["cost_usd"] is not None and math.isclose(row["cost_usd"], float(want), rel_tol=1e-9, abs_tol=1e-15), (
            f"{what}: cost_usd stored {row['cost_usd']!r}, expected {want} from {matched['id']} "
            f"prices {matched['prices']} and tokens {tok}"
        )
        assert row["price_id"] == matched["id"], (what, row["price_id"], matched["id"])
        assert row["price_version"] == book_version, (what, row["price_version"], book_version)


# ---------------------------------------------------------------------------
# per-model sums: each call counted once


@dataclass
class Totals:
    """What the LLM calls of one model add up to."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)  # priced calls only
    unpriced: int = 0


def expected_totals(run: Run) -> dict[str, Totals]:
    """One count per call of the mock's numbers, by the model column's value (the response
    model, or the requested one when the call failed). A call's tokens are those its kept span
    carries (expected_tokens: the mock's, except OpenLLMetry's stream quirk)."""
    out: dict[str, Totals] = {}
    for call, (provider, request_model) in CALLS.items():
        response_model = expected_response_model(call)
        t = out.setdefault(response_model or request_model, Totals())
        t.requests += 1
        tok = expected_tokens(call, run.kept_span(call))
        if tok is None:
            t.errors += 1
        else:
            t.input_tokens += tok.input_tokens
            t.output_tokens += tok.output_tokens
        matched, _ = price_entry(provider, response_model, request_model)
        if matched is None:
            t.unpriced += 1
        elif tok is not None:
            t.cost_usd += expected_cost(matched, tok)
    return out


def stored_totals(run: Run, source: str) -> dict[str, Totals]:
    """The per-model sums as one source answers them: DuckDB over the Parquet files, or the
    live server's SQL (`llm_calls`) or stats, asked before shutdown."""
    if source == "parquet":
        rows = harness.duckdb_sql(
            run.llmtrace.data_dir, PER_MODEL_SQL.format(table="(SELECT * FROM spans WHERE is_llm)")
        )
    else:
        rows = run.live[source]
        assert not (isinstance(rows, dict) and "error" in rows), f"{source}: {rows['error']}"
    return {
        r["model"]: Totals(
            requests=int(r["requests"]),
            errors=int(r["errors"]),
            input_tokens=int(r["input_tokens"] or 0),
            output_tokens=int(r["output_tokens"] or 0),
            cost_usd=Decimal(str(r["cost_usd"] or 0)),
            unpriced=int(r["unpriced"]),
        )
        for r in rows
    }


@pytest.mark.parametrize("source", ["parquet", "api-query", "api-stats"])
def test_per_model_sums_count_each_call_once(run: Run, source: str):
    """Per model: calls, failed calls, input and output tokens, cost and unpriced calls add up
    to one count per call, in the Parquet files and in the live server's SQL and stats alike.
    A call counted twice (its SDK and OpenLLMetry spans in two traces, or in two export
    requests, or the two spans of the rate-limited call) shows as a doubled model here."""
    want = expected_totals(run)
    got = stored_totals(run, source)
    m = Mismatches(f"{run.name} / per-model sums from {source}")
    m.eq("models", sorted(got), sorted(want))
    for model in sorted(set(want) & set(got)):
        w, g = want[model], got[model]
        for col in ("requests", "errors", "input_tokens", "output_tokens", "unpriced"):
            m.eq(f"{model}: {col}", getattr(g, col), getattr(w, col))
        # The stats sum nano-dollars (each call's cost rounded to 1e-9); the SQL sums floats.
        m.check(math.isclose(g.cost_usd, w.cost_usd, rel_tol=1e-9, abs_tol=1e-9 * w.requests),
                f"{model}: cost_usd: stored {g.cost_usd}, expected {w.cost_usd}")
    m.assert_none()
