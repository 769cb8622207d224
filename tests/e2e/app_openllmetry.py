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

By default the calls run inside one application root span
(``otel_app.APP_ROOT_SPAN``) so that they share a trace and the collector also
sees a non-LLM span. With ``--app-root-span off`` they run without any parent
span, as in most real applications: every span an instrumentation starts is
then the root of a trace of its own.

Before exiting it shuts the provider down so every span is exported, and
prints one JSON document to stdout: what the client saw for each call, the ids
of the spans each call produced, and every span (names, ids, attributes,
events with their times, status) as captured by an in-memory copy of the
pipeline, plus whether every OTLP export succeeded. The API keys are dummies;
message content capture is left at the instrumentations' default.

anthropic 2.x has OpenTelemetry tracing of its own (scope
``com.anthropic.sdk.python``, span ``anthropic.messages.create``, on by
default): with ``--anthropic-sdk-tracing on`` each Anthropic call then makes
two LLM spans, the SDK's and OpenLLMetry's ``anthropic.chat``; ``off`` (the
default here) turns the SDK's off. Neither library makes its span the current
one while the other starts its own (OpenLLMetry starts ``anthropic.chat`` with
``tracer.start_span`` and calls the SDK under the caller's context), so the two
are siblings under the app's root span, or, with ``--app-root-span off``, two
roots in two different traces, with the same ``gen_ai.response.id``.

``--max-export-batch-size N`` caps the spans per OTLP export request (1: every
span in a request of its own, so the two spans of a call always arrive in
different requests). The output's ``export_batches`` lists the span ids of each
request in the order they were sent (and acknowledged: one at a time).

Usage: python app_openllmetry.py --openai-base-url URL --anthropic-base-url URL
                                 --otlp-endpoint URL --service-name NAME
                                 [--anthropic-sdk-tracing {on,off}]
                                 [--app-root-span {on,off}] [--max-export-batch-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Any, Callable

# Make the mocks and otel_app importable whatever the working directory is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mock_anthropic  # noqa: E402
import mock_openai  # noqa: E402
from otel_app import AppTracing, openai_result, openai_stream_result, otlp_exporter, rate_limited_result  # noqa: E402,E501

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
    ap.add_argument(
        "--app-root-span", choices=["on", "off"], default="on",
        help="'on' runs the calls inside one application root span; 'off' makes them with no parent span",
    )
    ap.add_argument("--max-export-batch-size", type=int, default=None,
                    help="spans per OTLP export request at most (the SDK's default when not given)")
    args = ap.parse_args()

    tracing = AppTracing(
        args.service_name, otlp_exporter("http", args.otlp_endpoint), max_export_batch_size=args.max_export_batch_size
    )
    memory = tracing.memory

    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tracing.provider)
    AnthropicInstrumentor().instrument(tracer_provider=tracing.provider)

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
        return openai_result(oai.chat.completions.create(model=mock_openai.PLAIN_MODEL, messages=oai_messages))

    def openai_stream():
        return openai_stream_result(
            oai.chat.completions.create(
                model=mock_openai.STREAM_MODEL,
                messages=oai_messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )

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
        return rate_limited_result(
            lambda: ant.messages.create(model=mock_anthropic.RATE_LIMITED_MODEL, max_tokens=256, messages=ant_messages),
            anthropic.RateLimitError,
        )

    with tracing.root_span() if args.app_root_span == "on" else contextlib.nullcontext():
        call("openai_plain", openai_plain)
        call("openai_stream", openai_stream)
        call("anthropic_plain", anthropic_message(mock_anthropic.PLAIN_MODEL))
        call("anthropic_cache_write", anthropic_message(mock_anthropic.CACHE_WRITE_MODEL, CACHED_SYSTEM))
        call("anthropic_cache_read", anthropic_message(mock_anthropic.CACHE_READ_MODEL, CACHED_SYSTEM))
        call("anthropic_stream", anthropic_stream)
        call("anthropic_unpriced", anthropic_message(mock_anthropic.UNPRICED_MODEL))
        call("anthropic_rate_limited", anthropic_rate_limited)

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

    return tracing.finish(
        {
            "protocol": "http",
            "otlp_endpoint": args.otlp_endpoint,
            "service_name": args.service_name,
            "anthropic_sdk_tracing": args.anthropic_sdk_tracing,
            "app_root_span": args.app_root_span,
            "max_export_batch_size": args.max_export_batch_size,
            "versions": versions,
            "calls": calls,
        },
        detailed_spans=True,
    )


if __name__ == "__main__":
    sys.exit(main())
