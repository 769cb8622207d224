//! A raw OTLP/JSON request over HTTP, as curl or a browser SDK would send it,
//! on every accepted path, plain and gzip-compressed.

use crate::support::{now_nanos, TestServer};

fn body(trace_id: &str, start: u64) -> String {
    let end = start + 2_500_000_000;
    format!(
        r#"{{"resourceSpans":[{{
  "resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"json-svc"}}}}]}},
  "scopeSpans":[{{"scope":{{"name":"manual","version":"0.1"}},"spans":[{{
    "traceId":"{trace_id}","spanId":"00f067aa0ba902b7","parentSpanId":"53995c3f42cd8ad8",
    "name":"chat gpt-4o-mini","kind":"SPAN_KIND_CLIENT",
    "startTimeUnixNano":"{start}","endTimeUnixNano":"{end}",
    "attributes":[
      {{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}},
      {{"key":"gen_ai.system","value":{{"stringValue":"az.ai.openai"}}}},
      {{"key":"gen_ai.request.model","value":{{"stringValue":"my-deployment"}}}},
      {{"key":"gen_ai.response.model","value":{{"stringValue":"gpt-4o-mini-2024-07-18"}}}},
      {{"key":"gen_ai.usage.prompt_tokens","value":{{"intValue":"512"}}}},
      {{"key":"gen_ai.usage.completion_tokens","value":{{"intValue":64}}}},
      {{"key":"gen_ai.usage.cache_creation.input_tokens","value":{{"intValue":"256"}}}},
      {{"key":"gen_ai.response.finish_reasons","value":{{"arrayValue":{{"values":[{{"stringValue":"length"}}]}}}}}},
      {{"key":"session.id","value":{{"stringValue":"s-1"}}}},
      {{"key":"gen_ai.prompt.name","value":{{"stringValue":"summarise"}}}}
    ],
    "events":[{{"timeUnixNano":"{start}","name":"exception","attributes":[
      {{"key":"exception.type","value":{{"stringValue":"openai.APITimeoutError"}}}}]}}],
    "status":{{"code":"STATUS_CODE_ERROR","message":"request timed out"}}
  }}]}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_json_on_every_path_is_stored() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let start = now_nanos() - 10_000_000_000;
    let paths = [
        "/v1/traces",
        "/api/public/otel/v1/traces",
        "/otel/v1/traces",
    ];
    let trace_ids = [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "4bf92f3577b34da6a3ce929d0e0e4737",
        "4BF92F3577B34DA6A3CE929D0E0E4738",
    ];
    for (n, (path, trace_id)) in paths.iter().zip(trace_ids).enumerate() {
        let mut req = client
            .post(server.http_url(path))
            .header("content-type", "application/json; charset=utf-8");
        // The last one gzip-compressed, as the OTel SDKs send it.
        req = if n == 2 {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(body(trace_id, start).as_bytes()).unwrap();
            req.header("content-encoding", "gzip")
                .body(gz.finish().unwrap())
        } else {
            req.body(body(trace_id, start))
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(
            resp.text().await.unwrap(),
            "{}",
            "full success has no partialSuccess"
        );
    }
    let (rows, _dir) = server.stop().await;
    assert_eq!(rows.len(), 3);
    let mut stored: Vec<_> = rows
        .iter()
        .map(|r| r.s("trace_id").unwrap().to_owned())
        .collect();
    stored.sort();
    let want: Vec<_> = trace_ids.iter().map(|t| t.to_lowercase()).collect();
    assert_eq!(stored, want, "ids are stored as lowercase hex");

    let r = &rows[0];
    assert_eq!(r.s("span_id"), Some("00f067aa0ba902b7"));
    assert_eq!(r.s("parent_span_id"), Some("53995c3f42cd8ad8"));
    assert_eq!(r.i("start_time"), Some(start as i64));
    assert_eq!(r.f("duration_ms"), Some(2500.0));
    assert_eq!(r.s("service_name"), Some("json-svc"));
    assert_eq!(r.s("scope_name"), Some("manual"));
    assert_eq!(r.s("span_kind"), Some("client"));
    assert_eq!(r.s("status"), Some("error"));
    assert_eq!(
        r.s("error_type"),
        Some("timeout"),
        "from the exception event"
    );
    assert_eq!(r.s("provider"), Some("azure.ai.openai"));
    assert_eq!(r.s("request_model"), Some("my-deployment"));
    assert_eq!(r.s("model"), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(r.i("input_tokens"), Some(512), "1.26 prompt_tokens name");
    assert_eq!(r.i("output_tokens"), Some(64));
    assert_eq!(r.i("cache_write_tokens"), Some(256));
    assert_eq!(r.i("total_tokens"), Some(576));
    assert_eq!(r.s("finish_reason"), Some("length"));
    assert_eq!(r.s("session_id"), Some("s-1"));
    assert_eq!(r.s("prompt_name"), Some("summarise"));
    assert_eq!(
        r.attributes["gen_ai.system"], "az.ai.openai",
        "raw value kept"
    );
}
