"""What the e2e "LLM applications" (``app_openai_v2``, ``app_openllmetry``) share.

* :class:`AppTracing`: the OpenTelemetry Python SDK set up as both apps use it
  (TracerProvider with the e2e resource, BatchSpanProcessor to an OTLP exporter
  whose every export request and result is recorded, SimpleSpanProcessor to an in-memory
  copy of the pipeline), the application root span, and the end of the run:
  flush, shut down and print the one JSON document the tests read;
* :func:`otlp_exporter`: the OTLP span exporter for ``http`` or ``grpc``;
* :func:`openai_result`, :func:`openai_stream_result`, :func:`rate_limited_result`:
  what the client saw of an OpenAI call, as the apps report it.

The OpenTelemetry SDK is imported when first used, as the apps always did, after
their arguments are parsed.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Callable, Sequence

APP_ROOT_SPAN = "e2e.app.run"


class RecordingExporter:
    """Wraps an exporter and remembers every export result, and which spans each export
    request carried (``batches``: span ids as hex, in the order the requests were sent; the
    BatchSpanProcessor sends one at a time, so also the order they were acknowledged)."""

    def __init__(self, inner):
        self._inner = inner
        self._lock = threading.Lock()
        self.results: list[str] = []
        self.batches: list[list[str]] = []
        self.exported_spans = 0

    def export(self, spans: Sequence[Any]):
        with self._lock:
            self.batches.append([format(s.get_span_context().span_id, "016x") for s in spans])
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


def _attrs_json(attrs: Any) -> dict[str, Any]:
    return {k: _attr_value(v) for k, v in (attrs or {}).items()}


def span_json(s, detailed: bool = False) -> dict[str, Any]:
    """One finished span as the apps print it; ``detailed`` adds the scope version and
    each event's time."""
    ctx = s.get_span_context()
    out = {
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
        "attributes": _attrs_json(s.attributes),
        "events": [],
        "resource": _attrs_json(s.resource.attributes),
    }
    for ev in s.events:
        event = {"name": ev.name, "attributes": _attrs_json(ev.attributes)}
        if detailed:
            event["time_unix_nano"] = ev.timestamp
        out["events"].append(event)
    if detailed:
        out["scope_version"] = s.instrumentation_scope.version if s.instrumentation_scope else None
    return out


def otlp_exporter(protocol: str, endpoint: str):
    """The OTLP span exporter: ``http`` (protobuf; endpoint is the traces URL) or ``grpc``."""
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, timeout=10)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)


class AppTracing:
    """The app's global TracerProvider; ``first_processors`` are added before the export
    and in-memory ones. ``max_export_batch_size`` caps the spans per OTLP export request
    (the SDK's default, 512, when None)."""

    def __init__(self, service_name: str, exporter, *first_processors, max_export_batch_size: int | None = None):
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.recording = RecordingExporter(exporter)
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": service_name,
                    "service.version": "0.0.1-e2e",
                    "deployment.environment": "e2e",
                }
            )
        )
        for p in first_processors:
            self.provider.add_span_processor(p)
        batch_kw = {} if max_export_batch_size is None else {"max_export_batch_size": max_export_batch_size}
        self.provider.add_span_processor(BatchSpanProcessor(self.recording, schedule_delay_millis=200, **batch_kw))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        trace.set_tracer_provider(self.provider)
        self._trace = trace

    def root_span(self):
        """The application root span (``APP_ROOT_SPAN``), as the current span."""
        return self._trace.get_tracer("llmtrace.e2e.app").start_as_current_span(APP_ROOT_SPAN)

    def finish(self, out: dict[str, Any], detailed_spans: bool = False) -> int:
        """Flushes and shuts the provider down, prints ``out`` plus the export results and
        every span as one JSON document, and returns the exit code: 0, or 3 if an OTLP
        export failed, or 4 if fewer spans were exported than produced."""
        recording = self.recording
        flushed = self.provider.force_flush(timeout_millis=15000)
        self.provider.shutdown()

        spans = [span_json(s, detailed_spans) for s in self.memory.get_finished_spans()]

        ok = flushed and bool(recording.results) and all(r == "SUCCESS" for r in recording.results)
        out = {
            **out,
            "export_results": recording.results,
            "export_batches": recording.batches,
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


def openai_result(resp) -> dict[str, Any]:
    """What the client saw of a plain chat completion."""
    return {"model": resp.model, "input_tokens": resp.usage.prompt_tokens, "output_tokens": resp.usage.completion_tokens}


def openai_stream_result(stream) -> dict[str, Any]:
    """Consumes a chat completion stream to the end; what the client saw of it."""
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


def rate_limited_result(fn: Callable[[], Any], error_type: type[Exception]) -> dict[str, Any]:
    """Runs a call that should be rate-limited; the ``error_type`` raised is caught."""
    try:
        fn()
        return {"error": None}
    except error_type as e:
        return {"error": type(e).__name__, "status_code": e.status_code}  # type: ignore[attr-defined]
