//! Alerts end to end: an error spike pushed through OTLP ingest fires a
//! metric rule, whose Alertmanager-style webhook reaches a real HTTP
//! receiver; the instance shows in GET /api/v1/alerts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use serde_json::Value;

use crate::support::{llm_calls_json as calls, TestServer};

/// A local HTTP server recording every JSON body posted to it.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = Router::new().route(
        "/hook",
        post(move |body: String| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_through_ingest_fires_the_webhook() {
    let (url, bodies) = receiver().await;
    let server = TestServer::start_with(|c| {
        let rules = format!(
            r#"
            eval_interval = "1s"
            [[destinations]]
            name = "hook"
            type = "webhook"
            url = "{url}"
            [[rules]]
            name = "error-rate-spike"
            metric = "error_rate"
            window = "5m"
            group_by = ["model"]
            op = ">"
            threshold = 0.5
            severity = "critical"
            annotations = {{ summary = "{{{{model}}}} failing at {{{{value}}}}" }}
            notify = ["hook"]
            "#
        );
        c.alerts = toml::from_str(&rules).unwrap();
    })
    .await;
    let client = reqwest::Client::new();
    let send = |body: String| {
        client
            .post(server.http_url("/v1/traces"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A healthy model and a failing one.
    assert_eq!(
        send(calls("gpt-4o-mini", 20, false, 1))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send(calls("gpt-4o", 3, false, 2)).await.unwrap().status(),
        200
    );
    assert_eq!(
        send(calls("gpt-4o", 17, true, 3)).await.unwrap().status(),
        200
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        if let Some(b) = bodies.lock().unwrap().first().cloned() {
            break b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "hook");
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only the failing model: {body}");
    let alert = &alerts[0];
    assert_eq!(alert["labels"]["alertname"], "error-rate-spike");
    assert_eq!(alert["labels"]["model"], "gpt-4o");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["annotations"]["summary"], "gpt-4o failing at 0.85");
    assert!(alert["fingerprint"].as_str().unwrap().len() == 16);

    let listed: Value = serde_json::from_str(
        &reqwest::get(server.api_url("/api/v1/alerts"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let firing: Vec<&Value> = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1, "{listed}");
    assert_eq!(firing[0]["labels"]["model"], "gpt-4o");
    assert_eq!(firing[0]["value"].as_f64(), Some(0.85));
    assert_eq!(firing[0]["fingerprint"], alert["fingerprint"]);
    assert_eq!(
        bodies.lock().unwrap().len(),
        1,
        "notified once, not per round"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("llmtrace_alert_deliveries_total{result=\"success\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}
