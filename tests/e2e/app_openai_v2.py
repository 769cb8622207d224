"""A small "LLM application" used by the e2e tests, run as a subprocess.

It sets up the OpenTelemetry Python SDK (TracerProvider + BatchSpanProcessor
+ OTLP exporter over HTTP/protobuf or gRPC), instruments the ``openai``
package with ``opentelemetry-instrumentation-openai-v2`` and makes three chat
calls against the mock OpenAI server:

1. a plain call (``mock_openai.PLAIN_MODEL``),
2. a streaming call with ``stream_options.include_usage`` (``STREAM_MODEL``),
3. a call that gets HTTP 429 (``RATE_LIMITED_MODEL``); the
   ``openai.RateLimitError`` is caught.

The three calls run inside one application root span (``otel_app.APP_ROOT_SPAN``)
so that they share a trace and the collector also sees a non-LLM span.

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
import os
import sys

# Make mock_openai and otel_app importable whatever the working directory is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mock_openai  # noqa: E402
from opentelemetry.sdk.trace import SpanProcessor  # noqa: E402
from otel_app import AppTracing, openai_result, openai_stream_result, otlp_exporter, rate_limited_result  # noqa: E402,E501

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

    exporter = otlp_exporter(args.protocol, args.otlp_endpoint)
    tracing = AppTracing(args.service_name, exporter, *([StreamTagger()] if args.tag_streaming else []))

    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tracing.provider)

    import openai

    client = openai.OpenAI(
        base_url=args.mock_base_url,
        api_key="sk-e2e-dummy-not-a-secret",
        max_retries=0,
        timeout=10,
    )
    calls: dict = {}
    messages = [{"role": "user", "content": "Say hello to llmtrace."}]

    with tracing.root_span():
        # 1. plain call
        calls["plain"] = openai_result(
            client.chat.completions.create(model=mock_openai.PLAIN_MODEL, messages=messages)
        )

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
        calls["stream"] = openai_stream_result(stream)

        # 3. rate-limited call
        calls["rate_limited"] = rate_limited_result(
            lambda: client.chat.completions.create(model=mock_openai.RATE_LIMITED_MODEL, messages=messages),
            openai.RateLimitError,
        )

    return tracing.finish(
        {
            "protocol": args.protocol,
            "tag_streaming": args.tag_streaming,
            "otlp_endpoint": args.otlp_endpoint,
            "service_name": args.service_name,
            "calls": calls,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
