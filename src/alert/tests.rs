//! Alert engine tests: a fake [`Source`] returns the samples each test sets, a [`ManualClock`]
//! drives time, and real local HTTP receivers stand in for Slack, PagerDuty and a webhook.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::notify::test_support::{event_log, LogCapture, Receiver, Reply, VirtualSleeper};
use super::notify::{self, Deliverer, DelivererOptions, Origin, RetryPolicy};
use super::*;

// ---------------------------------------------------------------- helpers

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const T0: &str = "2026-03-01T10:00:00Z";
const EXTERNAL: &str = "http://llmtrace:8080";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmtrace-alert-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Returns whatever the test set for each metric / SQL text, and records every call.
#[derive(Default)]
struct FakeSource {
    metrics: Mutex<HashMap<Metric, Result<Vec<Sample>, SourceError>>>,
    sql: Mutex<HashMap<String, Vec<Sample>>>,
    metric_calls: Mutex<Vec<(MetricQuery, DateTime<Utc>)>>,
    sql_calls: Mutex<Vec<String>>,
}

impl FakeSource {
    fn set(&self, metric: Metric, samples: Vec<Sample>) {
        self.metrics.lock().unwrap().insert(metric, Ok(samples));
    }

    fn fail(&self, metric: Metric, message: &str) {
        self.metrics
            .lock()
            .unwrap()
            .insert(metric, Err(SourceError::Query(message.into())));
    }

    fn set_sql(&self, sql: &str, rows: Vec<Sample>) {
        self.sql.lock().unwrap().insert(sql.to_owned(), rows);
    }
}

#[async_trait::async_trait]
impl Source for FakeSource {
    async fn metric(
        &self,
        q: &MetricQuery,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, SourceError> {
        self.metric_calls.lock().unwrap().push((q.clone(), now));
        self.metrics
            .lock()
            .unwrap()
            .get(&q.metric)
            .cloned()
            .unwrap_or(Ok(Vec::new()))
    }

    async fn sql(&self, sql: &str) -> Result<Vec<Sample>, SourceError> {
        self.sql_calls.lock().unwrap().push(sql.to_owned());
        self.sql
            .lock()
            .unwrap()
            .get(sql)
            .cloned()
            .ok_or_else(|| SourceError::Query(format!("no such table in {sql:?}")))
    }
}

fn sample(pairs: &[(&str, &str)], value: f64) -> Sample {
    Sample::new(pairs.iter().copied(), value)
}

/// Parses an `[alerts]` section the way the main config file holds it.
fn parse(toml_text: &str) -> AlertsConfig {
    #[derive(Deserialize)]
    struct File {
        alerts: AlertsConfig,
    }
    toml::from_str::<File>(toml_text)
        .unwrap_or_else(|e| panic!("config does not parse: {e}"))
        .alerts
}

fn try_parse(toml_text: &str) -> Result<AlertsConfig, String> {
    #[derive(Deserialize, Debug)]
    struct File {
        alerts: AlertsConfig,
    }
    toml::from_str::<File>(toml_text)
        .map(|f| f.alerts)
        .map_err(|e| e.to_string())
}

fn deliverer(sleeper: Arc<VirtualSleeper>) -> Arc<Deliverer> {
    Arc::new(
        Deliverer::new(DelivererOptions {
            policy: RetryPolicy::default(),
            origin: Origin {
                source: "llmtrace-test".into(),
                external_url: Some(EXTERNAL.into()),
            },
            ..DelivererOptions::default()
        })
        .unwrap()
        .with_sleeper(sleeper)
        .with_jitter_seed(7),
    )
}

struct Harness {
    slack: Receiver,
    pd: Receiver,
    source: Arc<FakeSource>,
    clock: Arc<ManualClock>,
    sleeper: Arc<VirtualSleeper>,
    dir: TempDir,
}

impl Harness {
    async fn new(pd_script: Vec<Reply>) -> Harness {
        let log = event_log();
        Harness {
            slack: Receiver::start(Vec::new(), log.clone()).await,
            pd: Receiver::start(pd_script, log.clone()).await,
            source: Arc::new(FakeSource::default()),
            clock: ManualClock::new(ts(T0)),
            sleeper: VirtualSleeper::new(log),
            dir: TempDir::new(),
        }
    }

    /// The DESIGN example rule, pointed at the local receivers.
    fn config(&self, rule_overrides: &str) -> AlertsConfig {
        let text = r#"
[alerts]
eval_interval = "15s"
repeat_interval = "1h"

[[alerts.destinations]]
name = "slack-oncall"
type = "slack"
url = "SLACK_URL"

[[alerts.destinations]]
name = "pd"
type = "pagerduty"
routing_key = "0123456789abcdef0123456789abcdef"
url = "PD_URL"

[[alerts.rules]]
name = "error-rate-spike"
metric = "error_rate"
window = "5m"
group_by = ["model"]
filter = { provider = "openai" }
op = ">"
threshold = 0.05
severity = "critical"
labels = { team = "ml" }
annotations = { summary = "Error rate of {{model}} is {{value}}", runbook_url = "https://runbooks.example/errors" }
notify = ["slack-oncall", "pd"]
"#
        .replace("SLACK_URL", &self.slack.url("/services/T000/B000/XXXX"))
        .replace("PD_URL", &self.pd.url("/v2/enqueue"));
        parse(&format!("{text}{rule_overrides}\n"))
    }

    fn engine(&self, config: AlertsConfig) -> AlertEngine {
        AlertEngine::new(
            config,
            Arc::clone(&self.source) as Arc<dyn Source>,
            deliverer(Arc::clone(&self.sleeper)),
            self.dir.path(),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
        )
        .unwrap()
    }

    /// Sets the clock to T0 + `offset` and runs one round, waiting for its deliveries.
    async fn eval_at(&self, engine: &AlertEngine, offset: Duration) -> EvalOutcome {
        self.clock
            .set(ts(T0) + chrono::Duration::from_std(offset).unwrap());
        let out = engine.evaluate_once().await;
        engine.wait_for_deliveries().await;
        out
    }

    fn error_rate(&self, value: f64) {
        self.source.set(
            Metric::ErrorRate,
            vec![sample(&[("model", "gpt-4o")], value)],
        );
    }
}

fn gpt4o_fingerprint() -> String {
    notify::fingerprint(&labels(&[
        ("alertname", "error-rate-spike"),
        ("model", "gpt-4o"),
        ("team", "ml"),
    ]))
}

fn only_alert(engine: &AlertEngine) -> Value {
    let api = engine.api_json();
    let alerts = api["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{api:#}");
    alerts[0].clone()
}

const STATS_URL: &str = "http://llmtrace:8080/api/v1/stats?window=5m&group_by=model";

fn check_pd_trigger(body: &Value, fp: &str, value: f64, fired_at: &str) {
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "client",
            "client_url",
            "links"
        ])
    );
    assert_eq!(body["routing_key"], "0123456789abcdef0123456789abcdef");
    assert_eq!(body["event_action"], "trigger");
    assert_eq!(body["dedup_key"], fp);
    assert_eq!(body["client"], "llmtrace");
    assert_eq!(body["client_url"], EXTERNAL);
    let p = &body["payload"];
    assert_eq!(
        p["summary"],
        format!("Error rate of gpt-4o is {}", notify::format_value(value))
    );
    assert_eq!(p["source"], "llmtrace-test");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["timestamp"], fired_at);
    assert_eq!(p["class"], "error-rate-spike");
    let d = &p["custom_details"];
    assert_eq!(d["rule"], "error-rate-spike");
    assert_eq!(d["value"], json!(value));
    assert_eq!(d["threshold"], json!(0.05));
    assert_eq!(d["fingerprint"], fp);
    assert_eq!(
        d["labels"],
        json!({"alertname": "error-rate-spike", "model": "gpt-4o", "team": "ml", "severity": "critical"})
    );
    assert_eq!(
        body["links"],
        json!([
            {"href": STATS_URL, "text": "View query"},
            {"href": "https://runbooks.example/errors", "text": "Runbook"}
        ])
    );
}

fn check_slack_firing(body: &Value, fp: &str, value: &str) {
    let summary = format!("Error rate of gpt-4o is {value}");
    assert_eq!(
        body["text"],
        format!("[FIRING] error-rate-spike (critical): {summary}")
    );
    assert_eq!(body["attachments"][0]["color"], "#d00000");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(
        blocks[0]["text"]["text"],
        ":rotating_light: FIRING: error-rate-spike"
    );
    assert_eq!(blocks[1]["text"]["text"], format!("*{summary}*"));
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "*Severity*\ncritical".to_owned(),
            format!("*Value*\n{value} (threshold 0.05)"),
            "*model*\ngpt-4o".to_owned(),
            "*team*\nml".to_owned(),
        ]
    );
    let context = blocks[2]["elements"].to_string();
    assert!(
        context.contains(&format!("Fingerprint `{fp}`")),
        "{context}"
    );
    assert_eq!(blocks[3]["elements"][0]["url"], STATS_URL);
    assert_eq!(
        blocks[3]["elements"][1]["url"],
        "https://runbooks.example/errors"
    );
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn metric_rule_pending_firing_repeat_resolve_over_http() {
    let h = Harness::new(Vec::new()).await;
    let engine = h.engine(h.config("for = \"1m\"\nkeep_firing_for = \"2m\""));
    let fp = gpt4o_fingerprint();
    h.error_rate(0.12);

    // t=0: condition true, `for` not elapsed: pending, nothing sent.
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(out.evaluated, vec!["error-rate-spike"]);
    assert!(out.notifications.is_empty() && out.errors.is_empty());
    let calls = h.source.metric_calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(
            MetricQuery {
                metric: Metric::ErrorRate,
                window: secs(300),
                group_by: vec!["model".into()],
                filter: labels(&[("provider", "openai")]),
            },
            ts(T0)
        )]
    );
    let a = only_alert(&engine);
    assert_eq!(a["state"], "pending");
    assert_eq!(a["fingerprint"], fp.as_str());
    assert_eq!(a["since"], "2026-03-01T10:00:00.000Z");
    assert_eq!(a["last_notified"], Value::Null);
    assert_eq!(a["labels"], json!({"model": "gpt-4o", "team": "ml"}));
    assert_eq!(a["annotations"]["summary"], "Error rate of gpt-4o is 0.12");
    assert_eq!(a["value"], json!(0.12));
    assert_eq!(a["threshold"], json!(0.05));
    assert_eq!(a["severity"], "critical");

    h.eval_at(&engine, secs(30)).await;
    assert_eq!(only_alert(&engine)["state"], "pending");
    assert!(h.slack.requests().is_empty() && h.pd.requests().is_empty());

    // t=60s: `for` elapsed: firing, both destinations notified once.
    let out = h.eval_at(&engine, secs(60)).await;
    assert_eq!(out.notifications.len(), 1);
    assert_eq!(out.notifications[0].status, notify::Status::Firing);
    let a = only_alert(&engine);
    assert_eq!(a["state"], "firing");
    assert_eq!(a["since"], "2026-03-01T10:01:00.000Z");
    assert_eq!(a["active_at"], "2026-03-01T10:00:00.000Z");
    assert_eq!(a["last_notified"], "2026-03-01T10:01:00.000Z");

    let pd = h.pd.requests();
    assert_eq!(pd.len(), 1);
    assert_eq!(pd[0].path, "/v2/enqueue");
    assert_eq!(pd[0].header("content-type"), Some("application/json"));
    check_pd_trigger(&pd[0].json(), &fp, 0.12, "2026-03-01T10:01:00.000Z");
    let slack = h.slack.requests();
    assert_eq!(slack.len(), 1);
    assert_eq!(slack[0].path, "/services/T000/B000/XXXX");
    check_slack_firing(&slack[0].json(), &fp, "0.12");

    // Still firing, repeat_interval (1h) not reached: nothing new.
    h.eval_at(&engine, secs(75)).await;
    h.eval_at(&engine, secs(30 * 60)).await;
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 1));

    // 1h after the last notification: sent again, same dedup_key.
    h.error_rate(0.2);
    let out = h.eval_at(&engine, secs(3600 + 60)).await;
    assert_eq!(out.notifications.len(), 1);
    let pd = h.pd.requests();
    assert_eq!(pd.len(), 2);
    // The episode still started at 10:01; the summary carries the current value.
    check_pd_trigger(&pd[1].json(), &fp, 0.2, "2026-03-01T10:01:00.000Z");
    check_slack_firing(&h.slack.requests()[1].json(), &fp, "0.2");
    assert_eq!(
        only_alert(&engine)["last_notified"],
        "2026-03-01T11:01:00.000Z"
    );

    // Condition false at 11:02: kept firing for 2m, no message.
    h.error_rate(0.01);
    h.eval_at(&engine, secs(3600 + 120)).await;
    h.eval_at(&engine, secs(3600 + 180)).await;
    assert_eq!(only_alert(&engine)["state"], "firing");
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (2, 2));

    // 11:04: false for keep_firing_for: resolved, and the resolve goes out.
    let out = h.eval_at(&engine, secs(3600 + 240)).await;
    assert_eq!(out.notifications.len(), 1);
    assert_eq!(out.notifications[0].status, notify::Status::Resolved);
    let pd = h.pd.requests();
    assert_eq!(pd.len(), 3);
    assert_eq!(
        pd[2].json(),
        json!({
            "routing_key": "0123456789abcdef0123456789abcdef",
            "event_action": "resolve",
            "dedup_key": fp,
        })
    );
    let slack = h.slack.requests();
    assert_eq!(slack.len(), 3);
    let body = slack[2].json();
    assert_eq!(
        body["text"],
        "[RESOLVED] error-rate-spike (critical): Error rate of gpt-4o is 0.01"
    );
    assert_eq!(body["attachments"][0]["color"], "#2eb67d");
    assert_eq!(
        body["blocks"][0]["text"]["text"],
        ":white_check_mark: RESOLVED: error-rate-spike"
    );
    let context = body["blocks"][2]["elements"].to_string();
    assert!(
        context.contains("Started 2026-03-01T10:01:00Z"),
        "{context}"
    );
    assert!(
        context.contains("Resolved 2026-03-01T11:04:00Z"),
        "{context}"
    );

    // Resolved stays visible for a while, sends nothing more, then is forgotten.
    h.eval_at(&engine, secs(3600 + 255)).await;
    let a = only_alert(&engine);
    assert_eq!(a["state"], "resolved");
    assert_eq!(a["since"], "2026-03-01T11:04:00.000Z");
    assert_eq!(a["resolved_at"], "2026-03-01T11:04:00.000Z");
    h.eval_at(&engine, secs(3600 + 240 + 15 * 60)).await;
    assert_eq!(engine.api_json(), json!({"alerts": []}));
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (3, 3));

    let m = engine.metrics().snapshot();
    assert_eq!(m.evaluations, 11);
    assert_eq!(m.evaluation_errors, 0);
    assert_eq!(m.notifications, 6);
    let d = engine.delivery_metrics().unwrap().snapshot();
    assert_eq!((d.successes, d.failures, d.retries), (6, 0, 0));
    // The file follows the table: nothing left after the instance was forgotten.
    let saved = StateStore::new(h.dir.path()).read().unwrap();
    assert!(saved.is_empty(), "{saved:?}");
}

#[tokio::test]
async fn pending_that_clears_goes_back_to_inactive_silently() {
    let h = Harness::new(Vec::new()).await;
    let engine = h.engine(h.config("for = \"1m\""));
    h.error_rate(0.12);
    h.eval_at(&engine, secs(0)).await;
    assert_eq!(only_alert(&engine)["state"], "pending");
    h.error_rate(0.01);
    let out = h.eval_at(&engine, secs(30)).await;
    assert!(out.notifications.is_empty());
    assert_eq!(engine.api_json(), json!({"alerts": []}));
    // It comes back: a new episode, `for` counts from now.
    h.error_rate(0.12);
    h.eval_at(&engine, secs(45)).await;
    h.eval_at(&engine, secs(90)).await;
    assert_eq!(only_alert(&engine)["state"], "pending");
    assert_eq!(only_alert(&engine)["since"], "2026-03-01T10:00:45.000Z");
    h.eval_at(&engine, secs(105)).await;
    assert_eq!(only_alert(&engine)["state"], "firing");
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 1));
}

#[tokio::test]
async fn receiver_answering_429_then_200_gets_the_message_once_more() {
    let h = Harness::new(vec![Reply::status(429)
        .header("retry-after", "7")
        .body("rate limited")])
    .await;
    let engine = h.engine(h.config(""));
    h.error_rate(0.12);

    // for = 0: fires in the first round.
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(out.notifications.len(), 1);
    let pd = h.pd.requests();
    assert_eq!(pd.len(), 2, "one 429, one accepted retry");
    assert_eq!(pd[0].body, pd[1].body, "the retry is the same message");
    check_pd_trigger(
        &pd[1].json(),
        &gpt4o_fingerprint(),
        0.12,
        "2026-03-01T10:00:00.000Z",
    );
    assert_eq!(h.sleeper.waits(), vec![secs(7)], "Retry-After honoured");
    let d = engine.delivery_metrics().unwrap().snapshot();
    assert_eq!(
        (d.attempts, d.successes, d.retries, d.failures),
        (3, 2, 1, 0)
    );

    // Later rounds do not send it again (no repeat before repeat_interval).
    h.eval_at(&engine, secs(15)).await;
    h.eval_at(&engine, secs(30)).await;
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 2));
}

#[tokio::test]
async fn restart_neither_repages_nor_forgets() {
    let h = Harness::new(Vec::new()).await;
    let rule = "for = \"1m\"\nkeep_firing_for = \"1m\"";
    let fp = gpt4o_fingerprint();
    h.error_rate(0.12);

    // Engine 1 sees the condition start, then the process stops.
    {
        let engine = h.engine(h.config(rule));
        h.eval_at(&engine, secs(0)).await;
        assert_eq!(only_alert(&engine)["state"], "pending");
    }
    // Engine 2: the pending instance was restored with its start, so it fires at t=60s.
    {
        let engine = h.engine(h.config(rule));
        assert_eq!(only_alert(&engine)["state"], "pending");
        let out = h.eval_at(&engine, secs(60)).await;
        assert_eq!(out.notifications.len(), 1);
        assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 1));
    }
    let saved = std::fs::read_to_string(h.dir.path().join("state.json")).unwrap();
    assert!(
        saved.contains("\"firing\"") && saved.contains(&fp),
        "{saved}"
    );
    assert!(!h.dir.path().join("state.json.tmp").exists());

    // Engine 3, ten minutes later, condition still true: still firing, nobody paged again.
    {
        let engine = h.engine(h.config(rule));
        let out = h.eval_at(&engine, secs(600)).await;
        assert!(out.notifications.is_empty());
        let a = only_alert(&engine);
        assert_eq!(a["state"], "firing");
        assert_eq!(a["since"], "2026-03-01T10:01:00.000Z");
        assert_eq!(a["last_notified"], "2026-03-01T10:01:00.000Z");
        // The condition stops holding; keep_firing_for (1m) has not elapsed when it stops.
        h.error_rate(0.0);
        let out = h.eval_at(&engine, secs(660)).await;
        assert!(out.notifications.is_empty());
    }
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 1));

    // Engine 4: remembers since when the condition is false, so the resolve goes out on time.
    let engine = h.engine(h.config(rule));
    let out = h.eval_at(&engine, secs(720)).await;
    assert_eq!(out.notifications.len(), 1);
    let pd = h.pd.requests();
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[1].json()["event_action"], "resolve");
    assert_eq!(pd[1].json()["dedup_key"], fp.as_str());
    assert_eq!(pd[0].json()["dedup_key"], fp.as_str());
    let slack = h.slack.requests();
    assert_eq!(slack.len(), 2);
    assert!(slack[1].json()["text"]
        .as_str()
        .unwrap()
        .starts_with("[RESOLVED] error-rate-spike"));
}

#[tokio::test]
async fn restart_after_repeat_interval_renotifies_once() {
    let h = Harness::new(Vec::new()).await;
    h.error_rate(0.12);
    {
        let engine = h.engine(h.config(""));
        h.eval_at(&engine, secs(0)).await;
    }
    // Down for 2h (repeat_interval is 1h): the first round after restart reminds once.
    let engine = h.engine(h.config(""));
    let out = h.eval_at(&engine, secs(7200)).await;
    assert_eq!(out.notifications.len(), 1);
    h.eval_at(&engine, secs(7215)).await;
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (2, 2));
    assert_eq!(h.pd.requests()[1].json()["event_action"], "trigger");
}

#[tokio::test]
async fn a_rule_removed_while_firing_is_resolved_after_restart() {
    let h = Harness::new(Vec::new()).await;
    h.error_rate(0.12);
    {
        let engine = h.engine(h.config(""));
        h.eval_at(&engine, secs(0)).await;
    }
    let mut config = h.config("");
    config.rules.clear();
    let engine = h.engine(config);
    let out = h.eval_at(&engine, secs(60)).await;
    assert_eq!(out.notifications.len(), 1);
    let pd = h.pd.requests();
    assert_eq!(pd.len(), 2);
    assert_eq!(
        pd[1].json(),
        json!({"routing_key": "0123456789abcdef0123456789abcdef", "event_action": "resolve", "dedup_key": gpt4o_fingerprint()})
    );
    assert_eq!(only_alert(&engine)["state"], "resolved");
}

#[tokio::test]
async fn query_failure_keeps_instances_as_they_are() {
    let h = Harness::new(Vec::new()).await;
    let engine = h.engine(h.config(""));
    h.error_rate(0.12);
    h.eval_at(&engine, secs(0)).await;
    h.source.fail(Metric::ErrorRate, "datafusion exploded");
    let out = h.eval_at(&engine, secs(15)).await;
    assert_eq!(
        out.errors,
        vec![(
            "error-rate-spike".to_owned(),
            "query failed: datafusion exploded".to_owned()
        )]
    );
    // Not resolved: a broken query is not "condition false".
    assert_eq!(only_alert(&engine)["state"], "firing");
    assert_eq!((h.slack.requests().len(), h.pd.requests().len()), (1, 1));
    let m = engine.metrics().snapshot();
    assert_eq!((m.evaluations, m.evaluation_errors), (2, 1));
}

#[tokio::test]
async fn duplicate_label_sets_are_an_evaluation_error() {
    let h = Harness::new(Vec::new()).await;
    let engine = h.engine(h.config(""));
    h.source.set(
        Metric::ErrorRate,
        vec![
            sample(&[("model", "gpt-4o")], 0.5),
            sample(&[("model", "gpt-4o")], 0.6),
        ],
    );
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(out.errors.len(), 1);
    assert!(
        out.errors[0].1.contains("more than one row"),
        "{:?}",
        out.errors
    );
    assert!(engine.instances().is_empty());
}

#[tokio::test]
async fn per_rule_interval_is_honoured() {
    let h = Harness::new(Vec::new()).await;
    let engine = h.engine(h.config("interval = \"1m\""));
    assert_eq!(engine.tick(), secs(15));
    let mut evaluated = Vec::new();
    for t in [0, 15, 30, 45, 60, 75, 120] {
        if !h.eval_at(&engine, secs(t)).await.evaluated.is_empty() {
            evaluated.push(t);
        }
    }
    assert_eq!(evaluated, vec![0, 60, 120]);
}

// ---------------------------------------------------------------- grouping and SQL

#[tokio::test]
async fn group_by_gives_one_instance_per_group() {
    let h = Harness::new(Vec::new()).await;
    let config = parse(
        &r#"
[alerts]
[[alerts.destinations]]
name = "slack"
type = "slack"
url = "SLACK_URL"

[[alerts.rules]]
name = "p99-latency"
metric = "latency_p99"
window = "10m"
group_by = ["provider", "model"]
op = ">="
threshold = 2000
annotations = { summary = "p99 of {{provider}}/{{model}} is {{value}} ms" }
notify = ["slack"]
"#
        .replace("SLACK_URL", &h.slack.url("/hook")),
    );
    let engine = h.engine(config);
    let s = |p: &str, m: &str, v: f64| sample(&[("provider", p), ("model", m)], v);
    h.source.set(
        Metric::LatencyP99,
        vec![
            s("openai", "gpt-4o", 2500.0),
            s("anthropic", "claude-sonnet-4", 2000.0),
            s("openai", "gpt-4o-mini", 300.0),
        ],
    );
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(out.series.len(), 3);
    assert_eq!(out.notifications.len(), 2);
    let fp = |p: &str, m: &str| {
        notify::fingerprint(&labels(&[
            ("alertname", "p99-latency"),
            ("provider", p),
            ("model", m),
        ]))
    };
    let views = engine.instances();
    let got: Vec<(String, String, AlertState)> = views
        .iter()
        .map(|v| (v.labels["model"].clone(), v.fingerprint.clone(), v.state))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "claude-sonnet-4".to_owned(),
                fp("anthropic", "claude-sonnet-4"),
                AlertState::Firing
            ),
            (
                "gpt-4o".to_owned(),
                fp("openai", "gpt-4o"),
                AlertState::Firing
            ),
        ]
    );
    assert_ne!(views[0].fingerprint, views[1].fingerprint);
    assert_eq!(
        views[0].severity,
        notify::Severity::Warning,
        "default severity"
    );
    let texts: BTreeSet<String> = h
        .slack
        .requests()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        BTreeSet::from([
            "[FIRING] p99-latency (warning): p99 of openai/gpt-4o is 2500 ms".to_owned(),
            "[FIRING] p99-latency (warning): p99 of anthropic/claude-sonnet-4 is 2000 ms"
                .to_owned(),
        ])
    );

    // gpt-4o's series disappears (no traffic): condition false, resolved (keep_firing_for 0).
    // claude keeps firing without a new message; gpt-4o-mini crosses the threshold.
    h.source.set(
        Metric::LatencyP99,
        vec![
            s("anthropic", "claude-sonnet-4", 2100.0),
            s("openai", "gpt-4o-mini", 2300.0),
        ],
    );
    let out = h.eval_at(&engine, secs(15)).await;
    let mut got: Vec<(String, notify::Status)> = out
        .notifications
        .iter()
        .map(|n| (n.labels["model"].clone(), n.status))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("gpt-4o".to_owned(), notify::Status::Resolved),
            ("gpt-4o-mini".to_owned(), notify::Status::Firing),
        ]
    );
    let resolved = out
        .notifications
        .iter()
        .find(|n| n.status == notify::Status::Resolved)
        .unwrap();
    assert_eq!(resolved.fingerprint, fp("openai", "gpt-4o"));
    assert_eq!(
        resolved.value, 2500.0,
        "last value kept when the series vanished"
    );
    assert_eq!(h.slack.requests().len(), 4);
    let states: BTreeMap<String, AlertState> = engine
        .instances()
        .into_iter()
        .map(|v| (v.labels["model"].clone(), v.state))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("claude-sonnet-4".to_owned(), AlertState::Firing),
            ("gpt-4o".to_owned(), AlertState::Resolved),
            ("gpt-4o-mini".to_owned(), AlertState::Firing),
        ])
    );
}

const COST_SQL: &str = "SELECT model, provider, sum(cost_usd) AS value FROM llm_calls \
WHERE start_time > now() - INTERVAL '1 hour' GROUP BY model, provider";

#[tokio::test]
async fn sql_rule_labels_come_from_columns() {
    let h = Harness::new(Vec::new()).await;
    let log = event_log();
    let hook = Receiver::start(Vec::new(), log).await;
    let config = parse(
        &r#"
[alerts]
[[alerts.destinations]]
name = "hook"
type = "webhook"
url = "HOOK_URL"
headers = { Authorization = "Bearer s3cr3t-token" }

[[alerts.rules]]
name = "hourly-cost"
sql = "COST_SQL"
op = ">"
threshold = 10
severity = "error"
labels = { budget = "hourly" }
annotations = { summary = "Cost of {{model}} via {{provider}} is ${{value}} (budget ${{threshold}})" }
notify = ["hook"]
"#
        .replace("HOOK_URL", &hook.url("/alerts"))
        .replace("COST_SQL", COST_SQL),
    );
    let engine = h.engine(config);
    h.source.set_sql(
        COST_SQL,
        vec![
            sample(&[("model", "gpt-4o"), ("provider", "openai")], 12.5),
            sample(&[("model", "claude-haiku"), ("provider", "anthropic")], 3.2),
        ],
    );
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(
        *h.source.sql_calls.lock().unwrap(),
        vec![COST_SQL.to_owned()]
    );
    assert_eq!(out.series.len(), 2);
    let requests = hook.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some("Bearer s3cr3t-token")
    );
    let body = requests[0].json();
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "hook");
    let alert = &body["alerts"][0];
    assert_eq!(
        alert["labels"],
        json!({"alertname": "hourly-cost", "model": "gpt-4o", "provider": "openai",
               "budget": "hourly", "severity": "error"})
    );
    assert_eq!(
        alert["annotations"]["summary"],
        "Cost of gpt-4o via openai is $12.5 (budget $10)"
    );
    assert_eq!(alert["startsAt"], "2026-03-01T10:00:00Z");
    assert_eq!(alert["generatorURL"], "", "no stats link for SQL rules");
    assert_eq!(
        alert["fingerprint"],
        notify::fingerprint(&labels(&[
            ("alertname", "hourly-cost"),
            ("budget", "hourly"),
            ("model", "gpt-4o"),
            ("provider", "openai"),
        ]))
    );
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn failed_delivery_is_logged_redacted_counted_and_never_blocks_evaluation() {
    let capture = LogCapture::default();
    let _guard = capture.install();
    let h = Harness::new(vec![
        Reply::status(400).body("{\"status\":\"invalid event\"}")
    ])
    .await;
    let engine = h.engine(h.config(""));
    h.error_rate(0.12);
    let out = h.eval_at(&engine, secs(0)).await;
    assert_eq!(out.notifications.len(), 1);
    let d = engine.delivery_metrics().unwrap().snapshot();
    assert_eq!(
        (d.successes, d.failures),
        (1, 1),
        "slack delivered, pd rejected"
    );
    let text = capture.text();
    assert!(text.contains("alert notification not delivered"), "{text}");
    assert!(
        text.contains(&format!("url=http://{}/…", h.pd.addr)),
        "redacted URL logged: {text}"
    );
    assert!(!text.contains("/v2/enqueue"), "{text}");
    assert!(!text.contains("/services/T000/B000/XXXX"), "{text}");
    assert!(!text.contains("0123456789abcdef0123456789abcdef"), "{text}");
}

#[tokio::test]
async fn slow_receiver_does_not_hold_up_evaluation_and_order_is_kept() {
    // PagerDuty answers the trigger's first attempt only after a (real) 300 ms, with a 503, so
    // the trigger is retried. Rounds do not wait for it: the next round resolves the instance
    // meanwhile. The resolve must still reach PagerDuty after the trigger's retry, or the
    // incident would be reopened by a late trigger and never closed.
    let h = Harness::new(vec![Reply::status(503).delay(Duration::from_millis(300))]).await;
    let engine = h.engine(h.config(""));
    h.error_rate(0.12);
    h.clock.set(ts(T0));
    let out = engine.evaluate_once().await;
    assert_eq!(out.notifications.len(), 1);
    h.error_rate(0.0);
    h.clock.set(ts(T0) + chrono::Duration::seconds(15));
    let out = engine.evaluate_once().await;
    assert_eq!(out.notifications[0].status, notify::Status::Resolved);
    engine.wait_for_deliveries().await;
    let actions: Vec<String> =
        h.pd.requests()
            .iter()
            .map(|r| r.json()["event_action"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(actions, vec!["trigger", "trigger", "resolve"]);
    let d = engine.delivery_metrics().unwrap().snapshot();
    assert_eq!((d.successes, d.failures, d.retries), (4, 0, 1));
}

#[tokio::test]
async fn run_loop_evaluates_on_its_tick_and_stops_on_shutdown() {
    let h = Harness::new(Vec::new()).await;
    let mut config = h.config("");
    config.eval_interval = Duration::from_millis(20);
    let engine = Arc::new(h.engine(config));
    h.error_rate(0.12);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.pd.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification from run()"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run() returns after shutdown")
        .unwrap();
    assert!(engine.metrics().snapshot().rounds >= 1);
    assert_eq!(only_alert(&engine)["state"], "firing");
    assert_eq!(
        h.pd.requests().len(),
        1,
        "the clock did not move: no repeat"
    );
}

// ---------------------------------------------------------------- persistence

#[tokio::test]
async fn corrupt_state_file_is_set_aside_not_fatal() {
    let h = Harness::new(Vec::new()).await;
    std::fs::write(
        h.dir.path().join("state.json"),
        b"{\"version\":1,\"instances\":[{",
    )
    .unwrap();
    let engine = h.engine(h.config(""));
    assert!(engine.instances().is_empty());
    let names: Vec<String> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("state.json.corrupt-20260301T100000"),
        "{names:?}"
    );
    // The engine works and writes a fresh, valid file.
    h.error_rate(0.12);
    h.eval_at(&engine, secs(0)).await;
    let saved = StateStore::new(h.dir.path()).read().unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].state, AlertState::Firing);

    // A file from an unknown future version is set aside too.
    std::fs::write(
        h.dir.path().join("state.json"),
        br#"{"version":99,"saved_at":"2026-03-01T10:00:00Z","instances":[]}"#,
    )
    .unwrap();
    h.clock.set(ts("2026-03-01T10:05:00Z"));
    let engine = h.engine(h.config(""));
    assert!(engine.instances().is_empty());
    assert!(h
        .dir
        .path()
        .join("state.json.corrupt-20260301T100500.000Z")
        .exists());
}

#[test]
fn state_round_trips_including_nan_values() {
    let dir = TempDir::new();
    let store = StateStore::new(dir.path().join("alerts"));
    let mut inst = Instance::new(
        "r",
        "abc".into(),
        labels(&[("model", "m")]),
        f64::NAN,
        1.5,
        notify::Severity::Info,
        vec!["pd".into()],
        ts(T0),
    );
    inst.annotations = labels(&[("summary", "s")]);
    store.save(std::slice::from_ref(&inst), ts(T0)).unwrap();
    let back = store.read().unwrap();
    assert_eq!(back.len(), 1);
    assert!(back[0].value.is_nan());
    inst.value = 0.0;
    let mut b = back[0].clone();
    b.value = 0.0;
    assert_eq!(b, inst);
}

// ---------------------------------------------------------------- config and validation

#[test]
fn design_example_parses_with_defaults() {
    let config = parse(
        r#"
[alerts]
[[alerts.destinations]]
name = "slack-oncall"
type = "slack"
url = "https://hooks.slack.com/services/T000/B000/XXXX"

[[alerts.destinations]]
name = "pd"
type = "pagerduty"
routing_key = "0123456789abcdef0123456789abcdef"

[[alerts.rules]]
name = "error-rate-spike"
metric = "error_rate"
window = "5m"
group_by = ["model"]
filter = { provider = "openai" }
op = ">"
threshold = 0.05
for = "1m"
keep_firing_for = "2m"
severity = "critical"
labels = { team = "ml" }
annotations = { summary = "Error rate of {{model}} is {{value}}" }
notify = ["slack-oncall", "pd"]

[[alerts.rules]]
name = "unpriced"
metric = "unpriced_calls"
window = "1h"
op = ">"
threshold = 0
"#,
    );
    assert_eq!(config.eval_interval, secs(15));
    assert_eq!(config.repeat_interval, secs(4 * 3600));
    let rules = compile(&config).unwrap();
    assert_eq!(rules.len(), 2);
    let r = &rules[0];
    assert_eq!(r.for_duration, secs(60));
    assert_eq!(r.keep_firing_for, secs(120));
    assert_eq!(r.interval, secs(15));
    assert_eq!(r.severity, notify::Severity::Critical);
    assert_eq!(
        r.describe(),
        "metric error_rate > 0.05 over 5m by model where provider=openai"
    );
    let u = &rules[1];
    assert_eq!(u.threshold, 0.0, "integer threshold accepted");
    assert_eq!(u.for_duration, Duration::ZERO);
    assert_eq!(u.keep_firing_for, Duration::ZERO);
    assert_eq!(u.severity, notify::Severity::Warning);
    assert!(u.notify.is_empty());
    // Every comparison parses.
    for op in [">", ">=", "<", "<=", "==", "!="] {
        let c = parse(&format!(
            "[alerts]\n[[alerts.rules]]\nname = \"x\"\nmetric = \"requests\"\nwindow = \"1m\"\nop = \"{op}\"\nthreshold = 1\n"
        ));
        assert_eq!(c.rules[0].op.as_str(), op);
    }
}

#[test]
fn typos_and_malformed_values_are_rejected_at_parse() {
    let base = "[alerts]\n[[alerts.rules]]\nname = \"x\"\nmetric = \"requests\"\nwindow = \"1m\"\nop = \">\"\nthreshold = 1\n";
    let err = try_parse(&format!("{base}tresh = 2\n")).unwrap_err();
    assert!(err.contains("tresh"), "{err}");
    let err = try_parse(&base.replace("\"1m\"", "\"5 minutes-ish\"")).unwrap_err();
    assert!(
        err.contains("invalid duration") && err.contains("window"),
        "{err}"
    );
    let err = try_parse(&base.replace("\">\"", "\"=>\"")).unwrap_err();
    assert!(err.contains("=>"), "{err}");
    let err = try_parse(&format!("{base}severity = \"sev1\"\n")).unwrap_err();
    assert!(err.contains("sev1"), "{err}");
    let err = try_parse("[alerts]\neval_intervall = \"1m\"\n").unwrap_err();
    assert!(err.contains("eval_intervall"), "{err}");
}

#[test]
fn validation_names_rule_and_key_for_every_problem() {
    let config = parse(
        r#"
[alerts]
repeat_interval = "0s"

[[alerts.destinations]]
name = "pd"
type = "pagerduty"
routing_key = ""

[[alerts.destinations]]
name = "slack"
type = "slack"
url = "ftp://hooks.example/x"

[[alerts.rules]]
name = "error-rate-spike"
metric = "error_rate"
op = ">"
threshold = 0.05
notify = ["pager"]

[[alerts.rules]]
name = "error-rate-spike"
metric = "latency_p99"
window = "0s"
op = ">"
threshold = 1

[[alerts.rules]]
name = "both"
metric = "requests"
sql = "SELECT 1 AS value"
window = "1m"
op = ">"
threshold = 1

[[alerts.rules]]
name = "neither"
op = ">"
threshold = 1

[[alerts.rules]]
name = "bad-metric"
metric = "latency_p42"
window = "1m"
group_by = ["model", "region"]
filter = { customer = "acme" }
op = ">"
threshold = 1

[[alerts.rules]]
name = "bad-templates"
metric = "requests"
window = "1m"
group_by = ["model"]
op = ">"
threshold = 1
labels = { alertname = "x", model = "m", "bad-name" = "y" }
annotations = { summary = "{{model} is high", description = "{{modle}} at {{value}}" }

[[alerts.rules]]
name = "bad-sql"
sql = "DELETE FROM spans"
window = "5m"
group_by = ["model"]
op = ">"
threshold = 1

[[alerts.rules]]
name = "bad-interval"
sql = "SELECT 1 AS value"
op = ">"
threshold = 1
interval = "0s"
"#,
    );
    let errors: Vec<String> = validate(&config)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let expect = [
        r#"alerts: key "repeat_interval": must be greater than 0"#,
        r#"destination "pd": key "routing_key": must not be empty"#,
        r#"destination "slack": key "url": scheme "ftp" is not supported"#,
        r#"rule "error-rate-spike": key "window": required for metric rules"#,
        r#"rule "error-rate-spike": key "notify": unknown destination "pager" (defined: pd, slack)"#,
        r#"rule "error-rate-spike": key "name": another rule has the same name"#,
        r#"rule "error-rate-spike": key "window": must be greater than 0"#,
        r#"rule "both": key "metric": set either `metric` or `sql`, not both"#,
        r#"rule "neither": key "metric": set either `metric` or `sql`"#,
        r#"rule "bad-metric": key "metric": unknown metric "latency_p42" (expected one of: latency_p50,"#,
        r#"rule "bad-metric": key "group_by": unknown dimension "region" (expected one of: tenant, service,"#,
        r#"rule "bad-metric": key "filter": unknown dimension "customer""#,
        r#"rule "bad-templates": key "labels.alertname": `alertname` is set by the engine"#,
        r#"rule "bad-templates": key "labels.model": `model` is also in group_by"#,
        r#"rule "bad-templates": key "labels.bad-name": label names must match"#,
        r#"rule "bad-templates": key "annotations.summary": bad template: unclosed `{{` at byte 0"#,
        r#"rule "bad-templates": key "annotations.description": unknown template variable {{modle}} (available: "#,
        r#"rule "bad-sql": key "sql": must be a query starting with SELECT or WITH, not "DELETE""#,
        r#"rule "bad-sql": key "window": applies only to metric rules"#,
        r#"rule "bad-sql": key "group_by": applies only to metric rules"#,
        r#"rule "bad-interval": key "interval": must be greater than 0"#,
    ];
    for e in expect {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), expect.len(), "{}", errors.join("\n"));
    // The engine refuses to start with the same errors.
    let err = AlertEngine::new(
        config,
        Arc::new(FakeSource::default()),
        deliverer(VirtualSleeper::new(event_log())),
        TempDir::new().path(),
        ManualClock::new(ts(T0)),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(r#"rule "neither": key "metric""#),
        "{err}"
    );
}

#[test]
fn rules_file_is_merged_and_validated_together() {
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
[[destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/alerts"

[[rules]]
name = "unpriced-calls"
metric = "unpriced_calls"
window = "1h"
op = ">"
threshold = 0
notify = ["hook", "slack"]
"#,
    )
    .unwrap();
    let config = parse(
        "[alerts]\nrules_file = \"rules.toml\"\n[[alerts.destinations]]\nname = \"slack\"\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/X\"\n",
    )
    .with_rules_file(Some(dir.path()))
    .unwrap();
    assert_eq!(config.rules_file, None);
    assert_eq!(config.destinations.len(), 2);
    let rules = compile(&config).unwrap();
    assert_eq!(rules[0].name, "unpriced-calls");
    assert_eq!(rules[0].notify, vec!["hook", "slack"]);

    std::fs::write(dir.path().join("bad.toml"), "[[rules]]\nnme = \"x\"\n").unwrap();
    let err = load_rules_file(&dir.path().join("bad.toml")).unwrap_err();
    assert!(matches!(err, RulesFileError::Parse { .. }));
    assert!(
        err.to_string().contains("bad.toml") && err.to_string().contains("nme"),
        "{err}"
    );
    let err = load_rules_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, RulesFileError::Io { .. }), "{err}");
}

// ---------------------------------------------------------------- alerts check

#[tokio::test]
async fn check_evaluates_once_prints_states_and_sends_nothing() {
    let h = Harness::new(Vec::new()).await;
    let mut config = h.config("");
    config.rules.push(
        parse(
            "[alerts]\n[[alerts.rules]]\nname = \"cost\"\nsql = \"SELECT 1 AS value FROM nowhere\"\nop = \">\"\nthreshold = 1\n",
        )
        .rules
        .remove(0),
    );
    h.source.set(
        Metric::ErrorRate,
        vec![
            sample(&[("model", "gpt-4o")], 0.12),
            sample(&[("model", "gpt-4o-mini")], 0.01),
        ],
    );
    let report = check(
        &config,
        Arc::clone(&h.source) as Arc<dyn Source>,
        Some(h.dir.path()),
        Arc::clone(&h.clock) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    assert_eq!(
        report.lines,
        vec![
            r#"rule "error-rate-spike" [metric error_rate > 0.05 over 5m by model where provider=openai]: 2 series, 1 firing, 0 pending"#,
            r#"  firing    {model="gpt-4o", team="ml"} value=0.12"#,
            r#"  inactive  {model="gpt-4o-mini", team="ml"} value=0.01"#,
            r#"rule "cost" [sql value > 1]: ERROR query failed: no such table in "SELECT 1 AS value FROM nowhere""#,
        ]
    );
    assert_eq!(report.errors, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.slack.requests().is_empty() && h.pd.requests().is_empty());
    assert!(
        std::fs::read_dir(h.dir.path()).unwrap().next().is_none(),
        "check writes no state"
    );

    // With the persisted state of a running engine, check shows where each instance is.
    let mut with_for = h.config("for = \"10m\"");
    let engine = h.engine(with_for.clone());
    h.eval_at(&engine, secs(0)).await;
    h.clock.set(ts(T0) + chrono::Duration::seconds(60));
    let report = check(
        &with_for,
        Arc::clone(&h.source) as Arc<dyn Source>,
        Some(h.dir.path()),
        Arc::clone(&h.clock) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    assert_eq!(
        report.lines[1],
        r#"  pending   {model="gpt-4o", team="ml"} value=0.12"#
    );

    with_for.rules[0].window = None;
    let errors = check(
        &with_for,
        Arc::clone(&h.source) as Arc<dyn Source>,
        None,
        Arc::clone(&h.clock) as Arc<dyn Clock>,
    )
    .await
    .unwrap_err();
    assert_eq!(errors[0].rule(), Some("error-rate-spike"));
    assert_eq!(errors[0].key, "window");
}
