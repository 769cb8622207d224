"""A small "LLM application" instrumented with OpenLLMetry, run as a subprocess.

It sets up the OpenTelemetry Python SDK (TracerProvider + BatchSpanProcessor
+ OTLP/HTTP protobuf exporter), instruments the ``openai`` and ``anthropic``
packages with OpenLLMetry's ``opentelemetry-instrumentation-openai`` and
``opentelemetry-instrumentation-anthropic`` (the instrumentors alone, no
Traceloop SDK) and makes these calls against the mock servers:

OpenAI (``mock_openai``):
  ``openai_plain``      plain chat (``mock_openai.PLAIN_MODEL``),
  ``openai_stream``     streaming chat with ``stream_options.include_usage``;
Anthropic (``mock_anthropic``):
  ``anthropic_plain``        plain message,
  ``anthropic_cache_write``  message whose system prompt carries ``cache_control``
                             (the mock answers with ``cache_creation_input_tokens``),
  ``anthropic_cache_read``   the same prompt again (``cache_read_input_tokens``),
  ``anthropic_stream``       ``messages.create(stream=True)``, consumed to the end,
  ``anthropic_unpriced``     plain message to a model no price book knows,
  ``anthropic_rate_limited`` HTTP 429 ``rate_limit_error``; the
                             ``anthropic.RateLimitError`` is caught.

The calls run inside one application root span (``APP_ROOT_SPAN``) so that
they share a trace and the collector also sees a non-LLM span.

Before exiting it shuts the provider down so every span is exported, and
prints one JSON document to stdout: what the client saw for each call, the ids
of the spans each call produced, and every span (names, ids, attributes,
events with their times, status) as captured by an in-memory copy of the
pipeline, plus whether every OTLP export succeeded. The API keys are dummies;
message content capture is left at the instrumentations' default.

anthropic 2.x has OpenTelemetry tracing of its own (scope
``com.anthropic.sdk.python``, span ``anthropic.messages.create``, on by
default): with ``--anthropic-sdk-tracing on`` each Anthropic call then makes
two sibling LLM spans, the SDK's and OpenLLMetry's ``anthropic.chat``;
``off`` (the default here) turns the SDK's off.

Usage: python app_openllmetry.py --openai-base-url URL --anthropic-base-url URL
                                 --otlp-endpoint URL --service-name NAME
                                 [--anthropic-sdk-tracing {on,off}]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import warnings
from typing import Any, Callable, Sequence

# Make the mocks importable whatever the working directory is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mock_anthropic  # noqa: E402
import mock_openai  # noqa: E402

APP_ROOT_SPAN = "e2e.app.run"

# The anthropic SDK warns about deprecated model names; the mock does not care.
warnings.filterwarnings("ignore", category=DeprecationWarning)

# A system prompt long enough to be worth caching (the mock only checks that
# some block carries cache_control; the token counts come from its table).
CACHED_SYSTEM = [
    {
        "type": "text",
        "text": "You are the llmtrace e2e assistant. " + "Reference material. " * 200,
        "cache_control": {"type": "ephemeral"},
    }
]


class RecordingExporter:
    """Wraps an exporter and remembers every export result."""

    def __init__(self, inner):
        self._inner = inner
        self._lock = threading.Lock()
        self.results: list[str] = []
        self.exported_spans = 0

    def export(self, spans: Sequence[Any]):
        try:
            res = self._inner.export(spans)
        except Exception as e:  # pragma: no cover - surfaced in the JSON output
            with self._lock:
                self.results.append(f"exception: {e!r}")
            raise
        with self._lock:
            self.results.append(res.name)
            if res.name == "SUCCESS":
                self.exported_spans += len(spans)
        return res

    def shutdown(self):
        return self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000):
        return self._inner.force_flush(timeout_millis)


def _attr_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


def _span_json(s) -> dict[str, Any]:
    ctx = s.get_span_context()
    return {
        "name": s.name,
        "kind": s.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(s.parent.span_id, "016x") if s.parent else None,
        "scope": s.instrumentation_scope.name if s.instrumentation_scope else None,
        "scope_version": s.instrumentation_scope.version if s.instrumentation_scope else None,
        "start_time_unix_nano": s.start_time,
        "end_time_unix_nano": s.end_time,
        "status": s.status.status_code.name,
        "status_description": s.status.description,
        "attributes": {k: _attr_value(v) for k, v in (s.attributes or {}).items()},
        "events": [
            {
                "name": ev.name,
                "time_unix_nano": ev.timestamp,
                "attributes": {k: _attr_value(v) for k, v in (ev.attributes or {}).items()},
            }
            for ev in s.events
        ],
        "resource": {k: _attr_value(v) for k, v in s.resource.attributes.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--openai-base-url", required=True, help="e.g. http://127.0.0.1:1234/v1")
    ap.add_argument("--anthropic-base-url", required=True, help="e.g. http://127.0.0.1:1235")
    ap.add_argument("--otlp-endpoint", required=True, help="OTLP/HTTP traces URL, http://127.0.0.1:PORT/v1/traces")
    ap.add_argument("--service-name", required=True)
    ap.add_argument(
        "--anthropic-sdk-tracing", choices=["on", "off"], default="off",
        help="the anthropic SDK's own OpenTelemetry spans (anthropic.messages.create, on by default in "
             "the SDK); 'off' passes open_telemetry=False so only OpenLLMetry's spans are made",
    )
    args = ap.parse_args()

    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    recording = RecordingExporter(OTLPSpanExporter(endpoint=args.otlp_endpoint, timeout=10))
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": args.service_name,
                "service.version": "0.0.1-e2e",
                "deployment.environment": "e2e",
            }
        )
    )
    provider.add_span_processor(BatchSpanProcessor(recording, schedule_delay_millis=200))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)

    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=provider)
    AnthropicInstrumentor().instrument(tracer_provider=provider)

    import anthropic
    import openai

    oai = openai.OpenAI(
        base_url=args.openai_base_url, api_key="sk-e2e-dummy-not-a-secret", max_retries=0, timeout=10
    )
    ant_kw: dict[str, Any] = {}
    if args.anthropic_sdk_tracing == "off":
        ant_kw["open_telemetry"] = False
    ant = anthropic.Anthropic(
        base_url=args.anthropic_base_url, api_key="sk-ant-e2e-dummy-not-a-secret", max_retries=0, timeout=10,
        **ant_kw,
    )
    tracer = trace.get_tracer("llmtrace.e2e.app")
    calls: dict[str, Any] = {}
    oai_messages = [{"role": "user", "content": "Say hello to llmtrace."}]
    ant_messages = [{"role": "user", "content": "Say hello to llmtrace."}]

    def call(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Runs one call; records what the client saw and the ids of the spans it produced."""
        before = {s.get_span_context().span_id for s in memory.get_finished_spans()}
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - the expected ones are caught in fn
            result = {"unexpected_error": f"{type(e).__name__}: {e}"}
        new = [s for s in memory.get_finished_spans() if s.get_span_context().span_id not in before]
        result["span_ids"] = [format(s.get_span_context().span_id, "016x") for s in new]
        calls[name] = result

    def anthropic_usage(u) -> dict[str, Any]:
        return {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cache_read_input_tokens,
            "cache_creation_input_tokens": u.cache_creation_input_tokens,
        }

    def openai_plain():
        r = oai.chat.completions.create(model=mock_openai.PLAIN_MODEL, messages=oai_messages)
        return {"model": r.model, "input_tokens": r.usage.prompt_tokens, "output_tokens": r.usage.completion_tokens}

    def openai_stream():
        stream = oai.chat.completions.create(
            model=mock_openai.STREAM_MODEL,
            messages=oai_messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, model = [], None, None
        for chunk in stream:
            model = chunk.model
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    text.append(choice.delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        return {
            "model": model,
            "text": "".join(text),
            "input_tokens": usage.prompt_tokens if usage else None,
            "output_tokens": usage.completion_tokens if usage else None,
        }

    def anthropic_message(model: str, system=None):
        def fn():
            kw: dict[str, Any] = {"model": model, "max_tokens": 256, "messages": ant_messages}
            if system is not None:
                kw["system"] = system
            r = ant.messages.create(**kw)
            return {"model": r.model, "stop_reason": r.stop_reason, **anthropic_usage(r.usage)}

        return fn

    def anthropic_stream():
        stream = ant.messages.create(
            model=mock_anthropic.STREAM_MODEL, max_tokens=256, messages=ant_messages, stream=True
        )
        text, model, start_usage, output_tokens, stop_reason = [], None, None, None, None
        for ev in stream:
            if ev.type == "message_start":
                model = ev.message.model
                start_usage = anthropic_usage(ev.message.usage)
            elif ev.type == "content_block_delta" and getattr(ev.delta, "text", None):
                text.append(ev.delta.text)
            elif ev.type == "message_delta":
                output_tokens = ev.usage.output_tokens
                stop_reason = ev.delta.stop_reason
        usage = dict(start_usage or {})
        usage["output_tokens"] = output_tokens
        return {"model": model, "text": "".join(text), "stop_reason": stop_reason, **usage}

    def anthropic_rate_limited():
        try:
            ant.messages.create(model=mock_anthropic.RATE_LIMITED_MODEL, max_tokens=256, messages=ant_messages)
            return {"error": None}
        except anthropic.RateLimitError as e:
            return {"error": type(e).__name__, "status_code": e.status_code}

    with tracer.start_as_current_span(APP_ROOT_SPAN):
        call("openai_plain", openai_plain)
        call("openai_stream", openai_stream)
        call("anthropic_plain", anthropic_message(mock_anthropic.PLAIN_MODEL))
        call("anthropic_cache_write", anthropic_message(mock_anthropic.CACHE_WRITE_MODEL, CACHED_SYSTEM))
        call("anthropic_cache_read", anthropic_message(mock_anthropic.CACHE_READ_MODEL, CACHED_SYSTEM))
        call("anthropic_stream", anthropic_stream)
        call("anthropic_unpriced", anthropic_message(mock_anthropic.UNPRICED_MODEL))
        call("anthropic_rate_limited", anthropic_rate_limited)

    flushed = provider.force_flush(timeout_millis=15000)
    provider.shutdown()

    spans = [_span_json(s) for s in memory.get_finished_spans()]

    import importlib.metadata as md

    versions = {}
    for pkg in (
        "openai",
        "anthropic",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-openai",
        "opentelemetry-instrumentation-anthropic",
        "opentelemetry-semantic-conventions-ai",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None

    ok = flushed and bool(recording.results) and all(r == "SUCCESS" for r in recording.results)
    out = {
        "protocol": "http",
        "otlp_endpoint": args.otlp_endpoint,
        "service_name": args.service_name,
        "anthropic_sdk_tracing": args.anthropic_sdk_tracing,
        "versions": versions,
        "calls": calls,
        "export_results": recording.results,
        "exported_spans": recording.exported_spans,
        "force_flush": flushed,
        "spans": spans,
    }
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not ok:
        print(f"OTLP export did not fully succeed: {recording.results}", file=sys.stderr)
        return 3
    if recording.exported_spans != len(spans):
        print(f"exported {recording.exported_spans} spans, produced {len(spans)}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
