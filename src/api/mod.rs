//! The HTTP API (default 127.0.0.1:8080): health, readiness, SQL
//! (`POST /api/v1/query`), live stats (`GET /api/v1/stats`) and Prometheus
//! metrics (`GET /metrics`).

mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::aggregate::Aggregator;
use crate::alert::AlertEngine;
use crate::auth::{AuthError, Keys, Principal, Scope};
use crate::metrics::{Gauges, Metrics};
use crate::query::{format, QueryEngine, QueryError};
use crate::store::Store;

/// Whether the collector accepts data: false until the receivers are bound and
/// again once shutdown has begun, so load balancers drain it first.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the API reads from.
#[derive(Clone)]
pub struct ApiState {
    pub readiness: Readiness,
    pub query: Arc<QueryEngine>,
    pub aggregator: Arc<Aggregator>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    pub alerts: Arc<AlertEngine>,
    pub keys: Arc<Keys>,
}

impl ApiState {
    /// The caller, if it may use `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, AuthError> {
        let principal = self.keys.authenticate(headers)?;
        principal.require(scope)?;
        Ok(principal)
    }
}

/// The 401 (with a Bearer challenge) or 403 answer of an auth failure.
pub fn denied(e: AuthError) -> Response {
    let status = match e {
        AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
    };
    let mut response = error(status, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"llmtrace\""),
        );
    }
    response
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/v1/query", post(run_query))
        .route("/api/v1/stats", get(stats::stats))
        .route("/api/v1/alerts", get(alerts))
        .route("/metrics", get(prometheus))
        .with_state(state)
}

async fn alerts(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    // Alert instances can name any tenant's models: admin only.
    if let Err(e) = state.authorize(&headers, Scope::Admin) {
        return denied(e);
    }
    Json(state.alerts.api_json()).into_response()
}

async fn prometheus(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers, Scope::Admin) {
        return denied(e);
    }
    let counts = state.aggregator.stats_counts();
    let gauges = Gauges {
        buffer_bytes: state.store.buffer().bytes() as u64,
        open_cells: counts.open_cells as u64,
        overflowed_calls: counts.overflowed_calls,
    };
    let mut out = String::with_capacity(16 << 10);
    state.metrics.render(gauges, &mut out);
    state.aggregator.render_prometheus(&mut out);
    render_alert_metrics(&state.alerts, &mut out);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// 200 `ready`, or 503 saying why not: starting or stopping, or a disk
/// write failing (one line per kind of file, with its error), so that load
/// balancers send exports elsewhere until the disk takes writes again.
async fn ready(State(state): State<ApiState>) -> (StatusCode, String) {
    if !state.readiness.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned());
    }
    let failing = state.metrics.failing_writes();
    if failing.is_empty() {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let mut text = String::new();
    for (_, meaning, failure) in failing {
        text.push_str(&format!("not ready: {meaning}: {}\n", failure.message));
    }
    (StatusCode::SERVICE_UNAVAILABLE, text)
}

fn render_alert_metrics(alerts: &AlertEngine, out: &mut String) {
    use std::fmt::Write;
    let e = alerts.metrics().snapshot();
    let d = alerts
        .delivery_metrics()
        .map(|m| m.snapshot())
        .unwrap_or_default();
    for (name, help, v) in [
        (
            "llmtrace_alert_evaluations_total",
            "Alert rule evaluations.",
            e.evaluations,
        ),
        (
            "llmtrace_alert_evaluation_errors_total",
            "Alert rule evaluations that failed (state kept).",
            e.evaluation_errors,
        ),
        (
            "llmtrace_alert_notifications_total",
            "Alert notifications dispatched.",
            e.notifications,
        ),
        (
            "llmtrace_alert_state_write_errors_total",
            "Failed writes of the persisted alert state.",
            e.state_write_errors,
        ),
        (
            "llmtrace_alert_delivery_attempts_total",
            "HTTP attempts to deliver notifications.",
            d.attempts,
        ),
        (
            "llmtrace_alert_delivery_retries_total",
            "Delivery attempts that were retries.",
            d.retries,
        ),
        (
            "llmtrace_alert_deliveries_total{result=\"success\"}",
            "Notifications delivered or given up on.",
            d.successes,
        ),
        (
            "llmtrace_alert_deliveries_total{result=\"failure\"}",
            "",
            d.failures,
        ),
    ] {
        let bare = name.split('{').next().unwrap_or(name);
        if !help.is_empty() {
            let _ = writeln!(out, "# HELP {bare} {help}\n# TYPE {bare} counter");
        }
        let _ = writeln!(out, "{name} {v}");
    }
}

#[derive(Deserialize)]
struct QueryRequest {
    sql: String,
}

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The largest query request body: axum's default for JSON bodies, above
/// the largest statement (`query.max_sql_bytes`, 1 MiB) a client may send.
const QUERY_BODY_LIMIT: usize = 2 << 20;

/// Says whether an answer was cut at `query.max_rows` or
/// `query.max_result_bytes`.
pub const TRUNCATED_HEADER: &str = "x-llmtrace-truncated";

async fn run_query(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<QueryRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let principal = match state.authorize(&headers, Scope::Query) {
        Ok(p) => p,
        Err(e) => return denied(e),
    };
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over the API's limit of {QUERY_BODY_LIMIT} bytes"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be JSON: {\"sql\": \"SELECT …\"}".into(),
            );
        }
    };
    let result = match state
        .query
        .run_as(principal.read_tenant(), &request.sql)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                _ if e.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, e.to_string());
        }
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let truncated = result.truncated;
    let encode = move || {
        if accept.contains("text/csv") {
            format::to_csv(&result).map(|b| ("text/csv", b))
        } else if accept.contains(ARROW_STREAM) {
            format::to_arrow_ipc(&result).map(|b| (ARROW_STREAM, b))
        } else {
            format::to_json(&result).map(|v| ("application/json", v.to_string().into_bytes()))
        }
    };
    let encoded = match crate::query::off_ingest(encode).await {
        Ok(encoded) => encoded,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match encoded {
        // JSON says `truncated` in the body; CSV and Arrow have no place for
        // it, so every format says it in a header too.
        Ok((content_type, bytes)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, content_type),
                (
                    header::HeaderName::from_static(TRUNCATED_HEADER),
                    if truncated { "true" } else { "false" },
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
