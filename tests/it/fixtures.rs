//! The attribute dialects, end to end: each fixture in tests/fixtures/genai/
//! is an OTLP/JSON request written from a library's public example spans,
//! with the facts its spans must yield. Every fixture goes through the real
//! HTTP ingest path; the stored rows must match.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{Row, TestServer};

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/genai");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn trace_ids(request: &Value) -> HashSet<String> {
    let mut ids = HashSet::new();
    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for sp in ss["spans"].as_array().into_iter().flatten() {
                if let Some(t) = sp["traceId"].as_str() {
                    ids.insert(t.to_lowercase());
                }
            }
        }
    }
    ids
}

/// The stored value of `column` as JSON, for comparison with the fixture.
fn stored(row: &Row, column: &str) -> Value {
    if let Some(v) = row.strings.get(column) {
        return v.clone().map_or(Value::Null, Value::from);
    }
    if let Some(v) = row.ints.get(column) {
        return v.map_or(Value::Null, Value::from);
    }
    if let Some(v) = row.floats.get(column) {
        return v.map_or(Value::Null, Value::from);
    }
    if let Some(v) = row.bools.get(column) {
        return v.map_or(Value::Null, Value::from);
    }
    panic!("no column {column}");
}

fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) => {
            (w.as_f64().unwrap() - g.as_f64().unwrap()).abs()
                <= 1e-6 * w.as_f64().unwrap().abs().max(1.0)
        }
        _ => want == got,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_yields_its_facts() {
    let all = fixtures();
    assert!(all.len() >= 15, "at least 15 fixtures, found {}", all.len());
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for (name, fixture) in &all {
        let resp = client
            .post(server.http_url("/v1/traces"))
            .header("content-type", "application/json")
            .body(fixture["request"].to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body, "{}", "{name}: every span accepted");
    }
    let (rows, _dir) = server.stop().await;

    let mut failures = Vec::new();
    for (name, fixture) in &all {
        let traces = trace_ids(&fixture["request"]);
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| traces.contains(r.s("trace_id").unwrap()))
            .collect();
        for expect in fixture["expect"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: expect list"))
        {
            let span_name = expect["span_name"].as_str().unwrap();
            let matching: Vec<&&Row> = mine
                .iter()
                .filter(|r| r.s("span_name") == Some(span_name))
                .filter(|r| {
                    expect
                        .get("span_id")
                        .is_none_or(|id| r.s("span_id") == id.as_str())
                })
                .collect();
            if matching.len() != 1 {
                failures.push(format!(
                    "{name}: {} rows for span {span_name:?}",
                    matching.len()
                ));
                continue;
            }
            let row = matching[0];
            let checks: HashMap<&String, &Value> = expect
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "span_name" && *k != "span_id")
                .collect();
            for (column, want) in checks {
                let got = stored(row, column);
                if !same(want, &got) {
                    failures.push(format!(
                        "{name}: {span_name}.{column}: expected {want}, stored {got}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
