//! Tenants and API keys: ingest needs a key with the ingest scope and writes
//! to the key's tenant; queries and stats see only the key's tenant; admin
//! keys see everything; missing, wrong and under-scoped keys are refused.

use base64::Engine;
use llmtrace::auth::{hash_key, AuthConfig, KeyConfig, Scope};
use llmtrace::pricing::PriceBook;
use llmtrace::query::{QueryEngine, QueryLimits};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::{json, Value};

use crate::support::{llm_calls_json, TestServer};

const ACME: &str = "acme-key-0123456789abcd";
const GLOBEX: &str = "globex-key-0123456789";
const WRITER: &str = "writer-only-0123456789";
const OPS: &str = "ops-admin-0123456789";

fn key(name: &str, tenant: &str, scopes: &[Scope], secret: &str, hashed: bool) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        tenant: tenant.into(),
        scopes: scopes.to_vec(),
        key: (!hashed).then(|| secret.into()),
        key_sha256: hashed.then(|| hash_key(secret)),
    }
}

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.auth = AuthConfig {
            keys: vec![
                key("acme", "acme", &[Scope::Ingest, Scope::Query], ACME, false),
                key(
                    "globex",
                    "globex",
                    &[Scope::Ingest, Scope::Query],
                    GLOBEX,
                    true,
                ),
                key("acme-writer", "acme", &[Scope::Ingest], WRITER, true),
                key("ops", "ops", &[Scope::Admin], OPS, false),
            ],
        };
    })
    .await
}

/// Posts spans with `auth` as (header, value); returns the status.
async fn ingest(server: &TestServer, auth: Option<(&str, String)>, body: String) -> u16 {
    let mut req = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body);
    if let Some((h, v)) = auth {
        req = req.header(h, v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn query(server: &TestServer, key: Option<&str>, sql: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(server.api_url("/api/v1/query"))
        .header("content-type", "application/json")
        .body(json!({ "sql": sql }).to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

async fn get(server: &TestServer, key: Option<&str>, path: &str) -> (u16, String) {
    let mut req = reqwest::Client::new().get(server.api_url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn bearer(k: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {k}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_who_writes_where_and_who_reads_what() {
    let server = start().await;

    // Refused: no key, a wrong key, a key without the ingest scope.
    let body = || llm_calls_json("gpt-4o", 2, false, 9);
    assert_eq!(ingest(&server, None, body()).await, 401);
    assert_eq!(
        ingest(&server, bearer("not-a-key-0123456789"), body()).await,
        401
    );
    assert_eq!(
        ingest(&server, bearer(OPS), body()).await,
        200,
        "admin may ingest"
    );
    let unauthenticated = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body())
        .send()
        .await
        .unwrap();
    assert!(unauthenticated.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let status = grpc
        .export(ExportTraceServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Accepted, in each of the usual headers, each into the key's tenant.
    assert_eq!(
        ingest(
            &server,
            bearer(ACME),
            llm_calls_json("gpt-4o", 10, false, 1)
        )
        .await,
        200
    );
    let x_api_key = Some(("x-api-key", GLOBEX.to_owned()));
    assert_eq!(
        ingest(&server, x_api_key, llm_calls_json("claude", 4, true, 2)).await,
        200
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("pk-lf-1:{WRITER}"));
    let basic = Some(("authorization", format!("Basic {basic}")));
    assert_eq!(
        ingest(&server, basic, llm_calls_json("gpt-4o", 3, false, 3)).await,
        200
    );

    let by_tenant = "SELECT tenant, count(*) FROM llm_calls GROUP BY tenant ORDER BY tenant";
    let (s, v) = query(&server, Some(ACME), by_tenant).await;
    assert_eq!((s, &v["rows"]), (200, &json!([["acme", 13]])));
    let (_, v) = query(&server, Some(GLOBEX), by_tenant).await;
    assert_eq!(v["rows"], json!([["globex", 4]]));
    let (_, v) = query(&server, Some(OPS), by_tenant).await;
    assert_eq!(v["rows"], json!([["acme", 13], ["globex", 4], ["ops", 2]]));
    // Asking for another tenant's rows finds none.
    let (_, v) = query(
        &server,
        Some(ACME),
        "SELECT count(*) FROM spans WHERE tenant = 'globex'",
    )
    .await;
    assert_eq!(v["rows"], json!([[0]]));
    let (s, v) = query(&server, Some(WRITER), by_tenant).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("query"));
    let (s, _) = query(&server, None, by_tenant).await;
    assert_eq!(s, 401);

    // Live stats are scoped the same way, whatever the filter asks.
    let (s, body) = get(
        &server,
        Some(ACME),
        "/api/v1/stats?window=1h&group_by=tenant&tenant=globex",
    )
    .await;
    assert_eq!(s, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["groups"].as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(stats["groups"][0]["tenant"], "acme");
    assert_eq!(stats["groups"][0]["requests"], 13);

    // Alerts and metrics are for admins.
    assert_eq!(get(&server, Some(ACME), "/metrics").await.0, 403);
    assert_eq!(get(&server, Some(ACME), "/api/v1/alerts").await.0, 403);
    let (s, metrics) = get(&server, Some(OPS), "/metrics").await;
    assert_eq!(s, 200);
    assert!(
        metrics.contains("llmtrace_export_requests_rejected_total{reason=\"unauthorized\"} 4"),
        "{metrics}"
    );
    assert_eq!(get(&server, Some(OPS), "/api/v1/alerts").await.0, 200);
    assert_eq!(
        get(&server, None, "/healthz").await.0,
        200,
        "health stays open"
    );

    // On disk, each tenant has its own partitions; rollups are scoped too.
    let (rows, dir) = server.stop().await;
    let mut tenants: Vec<_> = rows.iter().map(|r| r.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    assert_eq!(tenants, ["acme", "globex", "ops"]);
    let engine = QueryEngine::open(
        &dir.path().join("data"),
        &PriceBook::default_book(),
        QueryLimits::default(),
    )
    .await
    .unwrap();
    let result = engine
        .run_as(
            Some("globex"),
            "SELECT tenant, sum(requests), sum(errors) FROM rollups GROUP BY tenant",
        )
        .await
        .unwrap();
    let v = llmtrace::query::format::to_json(&result).unwrap();
    assert_eq!(v["rows"], json!([["globex", 4, 4]]));
}
