"""A small "LLM application" used by the e2e tests, run as a subprocess.

It sets up the OpenTelemetry Python SDK (TracerProvider + BatchSpanProcessor
+ OTLP exporter over HTTP/protobuf or gRPC), instruments the ``openai``
package with ``opentelemetry-instrumentation-openai-v2`` and makes three chat
calls against the mock OpenAI server:

1. a plain call (``mock_openai.PLAIN_MODEL``),
2. a streaming call with ``stream_options.include_usage`` (``STREAM_MODEL``),
3. a call that gets HTTP 429 (``RATE_LIMITED_MODEL``); the
   ``openai.RateLimitError`` is caught.

The three calls run inside one application root span (``APP_ROOT_SPAN``) so
that they share a trace and the collector also sees a non-LLM span.

Before exiting it shuts the provider down so every span is exported, and
prints one JSON document to stdout describing the spans it produced (names,
ids, attributes, status) as captured by an in-memory copy of the pipeline and
whether every OTLP export succeeded. No secrets are printed: the API key is a
dummy and message content capture is left at the instrumentation's default
(off).

Usage: python app_openai_v2.py --mock-base-url URL --otlp-endpoint URL
                               --protocol {http,grpc} --service-name NAME
                               [--tag-streaming]
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import sys
import threading
from typing import Any, Sequence

# Make mock_openai importable whatever the working directory is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mock_openai  # noqa: E402
from opentelemetry.sdk.trace import SpanProcessor  # noqa: E402

APP_ROOT_SPAN = "e2e.app.run"

# Set while the app makes its streaming call; read by StreamTagger.
_IN_STREAMING_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("in_streaming_call", default=False)


class StreamTagger(SpanProcessor):
    """Optional SpanProcessor (``--tag-streaming``): marks spans started during
    the app's streaming call with ``gen_ai.request.stream=true`` (semconv
    v1.41), which opentelemetry-instrumentation-openai-v2 2.4b0 does not set by
    itself. Used to check that llmtrace maps that attribute."""

    def on_start(self, span, parent_context=None):
        if _IN_STREAMING_CALL.get():
            span.set_attribute("gen_ai.request.stream", True)


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mock-base-url", required=True, help="e.g. http://127.0.0.1:1234/v1")
    ap.add_argument("--otlp-endpoint", required=True,
                    help="http: http://127.0.0.1:PORT/v1/traces ; grpc: http://127.0.0.1:PORT")
    ap.add_argument("--protocol", choices=["http", "grpc"], required=True)
    ap.add_argument("--service-name", required=True)
    ap.add_argument("--tag-streaming", action="store_true",
                    help="add gen_ai.request.stream=true to the streaming call's span")
    args = ap.parse_args()

    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if args.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=args.otlp_endpoint, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=args.otlp_endpoint, insecure=True, timeout=10)

    recording = RecordingExporter(otlp)
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
    if args.tag_streaming:
        provider.add_span_processor(StreamTagger())
    provider.add_span_processor(BatchSpanProcessor(recording, schedule_delay_millis=200))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)

    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=provider)

    import openai

    client = openai.OpenAI(
        base_url=args.mock_base_url,
        api_key="sk-e2e-dummy-not-a-secret",
        max_retries=0,
        timeout=10,
    )
    tracer = trace.get_tracer("llmtrace.e2e.app")
    calls: dict[str, Any] = {}
    messages = [{"role": "user", "content": "Say hello to llmtrace."}]

    with tracer.start_as_current_span(APP_ROOT_SPAN):
        # 1. plain call
        resp = client.chat.completions.create(model=mock_openai.PLAIN_MODEL, messages=messages)
        calls["plain"] = {
            "model": resp.model,
            "input_tokens": resp.usage.prompt_tokens,
            "output_tokens": resp.usage.completion_tokens,
        }

        # 2. streaming call, consuming the whole stream
        token = _IN_STREAMING_CALL.set(True)
        try:
            stream = client.chat.completions.create(
                model=mock_openai.STREAM_MODEL,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        finally:
            _IN_STREAMING_CALL.reset(token)
        text, usage, model = [], None, None
        for chunk in stream:
            model = chunk.model
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    text.append(choice.delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        calls["stream"] = {
            "model": model,
            "text": "".join(text),
            "input_tokens": usage.prompt_tokens if usage else None,
            "output_tokens": usage.completion_tokens if usage else None,
        }

        # 3. rate-limited call
        try:
            client.chat.completions.create(model=mock_openai.RATE_LIMITED_MODEL, messages=messages)
            calls["rate_limited"] = {"error": None}
        except openai.RateLimitError as e:
            calls["rate_limited"] = {"error": type(e).__name__, "status_code": e.status_code}

    flushed = provider.force_flush(timeout_millis=15000)
    provider.shutdown()

    spans = []
    for s in memory.get_finished_spans():
        ctx = s.get_span_context()
        spans.append(
            {
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "parent_span_id": format(s.parent.span_id, "016x") if s.parent else None,
                "scope": s.instrumentation_scope.name if s.instrumentation_scope else None,
                "start_time_unix_nano": s.start_time,
                "end_time_unix_nano": s.end_time,
                "status": s.status.status_code.name,
                "status_description": s.status.description,
                "attributes": {k: _attr_value(v) for k, v in (s.attributes or {}).items()},
                "events": [
                    {"name": ev.name, "attributes": {k: _attr_value(v) for k, v in (ev.attributes or {}).items()}}
                    for ev in s.events
                ],
                "resource": {k: _attr_value(v) for k, v in s.resource.attributes.items()},
            }
        )

    ok = flushed and bool(recording.results) and all(r == "SUCCESS" for r in recording.results)
    out = {
        "protocol": args.protocol,
        "tag_streaming": args.tag_streaming,
        "otlp_endpoint": args.otlp_endpoint,
        "service_name": args.service_name,
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
