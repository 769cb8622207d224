//! The alert engine: evaluation rounds, instance bookkeeping, persistence and dispatch.
//!
//! A round ([`AlertEngine::evaluate_once`]) takes the time from the injected [`Clock`], asks the
//! [`Source`] for every rule that is due, steps every instance of that rule through the
//! lifecycle in [`state`](super::state), hands the resulting notifications to delivery tasks,
//! and rewrites `state.json` if anything changed. Rounds never wait for a receiver: each
//! notification is delivered on its own spawned task (at most
//! [`MAX_CONCURRENT_DELIVERIES`] sending at once), and notifications for the same instance and
//! destination are delivered in the order they were produced, so a slow trigger can never land
//! after its resolve.
//!
//! A rule whose query fails is skipped for the round and its instances keep their state: a query
//! outage neither resolves nor fires anything (it is logged and counted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{debug, error, info, warn};

use super::notify::{self, Deliverer, DeliveryMetrics, Destination, Notification, Status};
use super::rules::{compile, AlertsConfig, CompiledRule, Query, RuleError};
use super::source::{Sample, Source, SourceError};
use super::state::{AlertState, Instance, StateStore, Timing, Transition};
use super::template;

pub use super::clock::{Clock, ManualClock, SystemClock};
use super::dispatch::Dispatcher;
pub use super::dispatch::MAX_CONCURRENT_DELIVERIES;
use super::metrics::inc;
pub use super::metrics::{EngineMetrics, EngineMetricsSnapshot};
pub use super::view::{alerts_json, InstanceView};

/// How long [`AlertEngine::run`] lets in-flight deliveries finish after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid alert configuration:\n{}", join_errors(.0))]
    Invalid(Vec<RuleError>),
}

fn join_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One series seen in a round.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesResult {
    pub rule: String,
    pub fingerprint: String,
    /// Instance labels (sample labels plus the rule's static labels).
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Whether `value op threshold` held.
    pub condition: bool,
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct EvalOutcome {
    pub now: Option<DateTime<Utc>>,
    /// Rules evaluated this round (the due ones), in config order.
    pub evaluated: Vec<String>,
    /// `(rule, error)` for rules whose evaluation failed.
    pub errors: Vec<(String, String)>,
    pub series: Vec<SeriesResult>,
    /// Notifications produced (each went to every destination of its rule, unless the engine
    /// was built by [`check`], which sends nothing).
    pub notifications: Vec<Notification>,
}

/// `{model="gpt-4o", team="ml"}`.
fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

#[derive(Default)]
struct Inner {
    /// By fingerprint.
    instances: BTreeMap<String, Instance>,
    /// Per rule: when it is next due.
    next_due: HashMap<String, DateTime<Utc>>,
}

/// The alert engine. Share it as `Arc<AlertEngine>`: [`AlertEngine::run`] drives it, the API
/// reads [`AlertEngine::instances`].
pub struct AlertEngine {
    rules: Vec<CompiledRule>,
    destinations: BTreeMap<String, Destination>,
    repeat_interval: Duration,
    tick: Duration,
    source: Arc<dyn Source>,
    clock: Arc<dyn Clock>,
    /// None for [`check`]: nothing is written.
    store: Option<StateStore>,
    /// None for [`check`]: nothing is sent.
    dispatcher: Option<Dispatcher>,
    external_url: Option<String>,
    inner: Mutex<Inner>,
    /// Serialises rounds (the run loop and a manual `evaluate_once` must not interleave).
    round: tokio::sync::Mutex<()>,
    metrics: Arc<EngineMetrics>,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine")
            .field("rules", &self.rules.len())
            .field("destinations", &self.destinations.values())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AlertEngine {
    /// Validates `config` (errors name rule and key), loads `<state_dir>/state.json` (a corrupt
    /// file is set aside, see [`StateStore::load`]) and returns an engine ready to evaluate.
    /// `config.rules_file` must already be merged (see [`AlertsConfig::with_rules_file`]).
    pub fn new(
        config: AlertsConfig,
        source: Arc<dyn Source>,
        deliverer: Arc<Deliverer>,
        state_dir: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        let store = StateStore::new(state_dir);
        let instances = store.load(clock.now());
        let external_url = deliverer.origin().external_url.clone();
        let engine = Self::build(
            &config,
            source,
            clock,
            Some(store),
            Some(Dispatcher::new(deliverer)),
            external_url,
            instances,
        )?;
        let n = engine.inner.lock().unwrap().instances.len();
        info!(
            rules = engine.rules.len(),
            destinations = engine.destinations.len(),
            restored_instances = n,
            "alert engine ready"
        );
        Ok(engine)
    }

    fn build(
        config: &AlertsConfig,
        source: Arc<dyn Source>,
        clock: Arc<dyn Clock>,
        store: Option<StateStore>,
        dispatcher: Option<Dispatcher>,
        external_url: Option<String>,
        instances: Vec<Instance>,
    ) -> Result<Self, EngineError> {
        let rules = compile(config).map_err(EngineError::Invalid)?;
        let tick = rules
            .iter()
            .map(|r| r.interval)
            .chain([config.eval_interval])
            .min()
            .unwrap_or(config.eval_interval);
        Ok(AlertEngine {
            destinations: config
                .destinations
                .iter()
                .map(|d| (d.name().to_owned(), d.clone()))
                .collect(),
            rules,
            repeat_interval: config.repeat_interval,
            tick,
            source,
            clock,
            store,
            dispatcher,
            external_url,
            inner: Mutex::new(Inner {
                instances: instances
                    .into_iter()
                    .map(|i| (i.fingerprint.clone(), i))
                    .collect(),
                next_due: HashMap::new(),
            }),
            round: tokio::sync::Mutex::new(()),
            metrics: Arc::new(EngineMetrics::default()),
        })
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// How often [`AlertEngine::run`] wakes up: the smallest rule interval.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    pub fn metrics(&self) -> Arc<EngineMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The deliverer's counters (attempts, successes, failures, retries).
    pub fn delivery_metrics(&self) -> Option<Arc<DeliveryMetrics>> {
        self.dispatcher.as_ref().map(|d| d.deliverer().metrics())
    }

    /// Evaluates every rule that is due, steps the instances, dispatches notifications (without
    /// waiting for them) and persists the state if it changed.
    pub async fn evaluate_once(&self) -> EvalOutcome {
        self.round(false).await
    }

    /// Waits until every notification dispatched so far has been delivered or given up.
    pub async fn wait_for_deliveries(&self) {
        if let Some(d) = &self.dispatcher {
            d.idle().await;
        }
    }

    /// Evaluates on every tick until `shutdown` completes, then gives in-flight deliveries up to
    /// [`SHUTDOWN_GRACE`] to finish. A round in progress when `shutdown` fires is completed.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(tick = %humantime::format_duration(self.tick), "alert engine running");
        loop {
            let stop = std::future::poll_fn(|cx| {
                if shutdown.as_mut().poll(cx).is_ready() {
                    Poll::Ready(true)
                } else if ticker.poll_tick(cx).is_ready() {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if stop {
                break;
            }
            self.evaluate_once().await;
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.wait_for_deliveries())
            .await
            .is_err()
        {
            warn!("alert engine stopped with notifications still being delivered");
        }
        info!("alert engine stopped");
    }

    /// Current instances (pending, firing, and recently resolved), by rule then labels.
    pub fn instances(&self) -> Vec<InstanceView> {
        let inner = self.inner.lock().unwrap();
        let mut views: Vec<InstanceView> =
            inner.instances.values().map(InstanceView::from).collect();
        views.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
        views
    }

    /// The `GET /api/v1/alerts` body (see [`alerts_json`]).
    pub fn api_json(&self) -> Value {
        alerts_json(&self.instances())
    }

    fn is_due(&self, rule: &CompiledRule, now: DateTime<Utc>, inner: &Inner) -> bool {
        match inner.next_due.get(&rule.name) {
            None => true,
            // A tenth of the interval of slack absorbs timer jitter, so a rule evaluated on every
            // tick is not skipped because the tick came a millisecond early.
            Some(due) => {
                now + chrono::Duration::from_std(rule.interval / 10).unwrap_or_default() >= *due
            }
        }
    }

    async fn query(
        &self,
        rule: &CompiledRule,
        now: DateTime<Utc>,
    ) -> Result<Vec<Sample>, SourceError> {
        let limit = rule.interval.max(Duration::from_secs(1));
        let fut = async {
            match &rule.query {
                Query::Metric(q) => self.source.metric(q, now).await,
                Query::Sql(sql) => self.source.sql(sql).await,
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(SourceError::Timeout(limit)))
    }

    async fn round(&self, force: bool) -> EvalOutcome {
        let _round = self.round.lock().await;
        let now = self.clock.now();
        inc(&self.metrics.rounds);
        let mut outcome = EvalOutcome {
            now: Some(now),
            ..EvalOutcome::default()
        };
        let mut changed = self.retire_orphans(now, &mut outcome);

        for rule in &self.rules {
            {
                let mut inner = self.inner.lock().unwrap();
                if !force && !self.is_due(rule, now, &inner) {
                    continue;
                }
                let next = now + chrono::Duration::from_std(rule.interval).unwrap_or_default();
                inner.next_due.insert(rule.name.clone(), next);
            }
            outcome.evaluated.push(rule.name.clone());
            inc(&self.metrics.evaluations);
            let result = match self.query(rule, now).await {
                Ok(samples) => self.apply(rule, samples, now, &mut outcome),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(c) => changed |= c,
                Err(message) => {
                    inc(&self.metrics.evaluation_errors);
                    warn!(rule = %rule.name, error = %message,
                        "alert rule evaluation failed; its instances keep their state");
                    outcome.errors.push((rule.name.clone(), message));
                }
            }
        }

        if changed {
            self.persist(now).await;
        }
        outcome
    }

    /// Instances restored from disk whose rule is gone: resolve the firing ones (so their
    /// incidents close), drop pending ones, let resolved ones age out.
    fn retire_orphans(&self, now: DateTime<Utc>, outcome: &mut EvalOutcome) -> bool {
        let known: BTreeSet<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        let mut inner = self.inner.lock().unwrap();
        let mut changed = false;
        let mut remove = Vec::new();
        for inst in inner.instances.values_mut() {
            if known.contains(inst.rule.as_str()) {
                continue;
            }
            let t = inst.retire(now);
            changed |= t.persist();
            if t == Transition::Resolved {
                info!(rule = %inst.rule, fingerprint = %inst.fingerprint,
                    "alert rule no longer configured; resolving its firing instance");
                self.emit(inst, Status::Resolved, None, outcome);
            }
            if t.removes() {
                remove.push(inst.fingerprint.clone());
            }
        }
        for fp in remove {
            inner.instances.remove(&fp);
        }
        changed
    }

    /// Steps every instance of `rule` with this round's samples. Returns whether anything that
    /// is persisted changed; an error leaves every instance untouched.
    fn apply(
        &self,
        rule: &CompiledRule,
        samples: Vec<Sample>,
        now: DateTime<Utc>,
        outcome: &mut EvalOutcome,
    ) -> Result<bool, String> {
        // Label sets first, so a bad result changes nothing.
        let mut series: BTreeMap<String, (BTreeMap<String, String>, f64)> = BTreeMap::new();
        for sample in samples {
            let mut labels = sample.labels;
            labels.remove("alertname");
            labels.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut identity = labels.clone();
            identity.insert("alertname".to_owned(), rule.name.clone());
            let fp = notify::fingerprint(&identity);
            if series.contains_key(&fp) {
                return Err(format!(
                    "the result has more than one row for the labels {}; add the distinguishing columns or dimensions",
                    format_labels(&labels)
                ));
            }
            series.insert(fp, (labels, sample.value));
        }

        let timing = Timing {
            for_duration: rule.for_duration,
            keep_firing_for: rule.keep_firing_for,
            repeat_interval: self.repeat_interval,
        };
        let generator_url = self.generator_url(rule);
        let mut inner = self.inner.lock().unwrap();
        let mut changed = false;
        let mut remove = Vec::new();

        for (fp, (labels, value)) in &series {
            let condition = rule.op.holds(*value, rule.threshold);
            outcome.series.push(SeriesResult {
                rule: rule.name.clone(),
                fingerprint: fp.clone(),
                labels: labels.clone(),
                value: *value,
                condition,
            });
            if !inner.instances.contains_key(fp) {
                if !condition {
                    continue;
                }
                changed = true;
                let inst = Instance::new(
                    &rule.name,
                    fp.clone(),
                    labels.clone(),
                    *value,
                    rule.threshold,
                    rule.severity,
                    rule.notify.clone(),
                    now,
                );
                inner.instances.insert(fp.clone(), inst);
            }
            let Some(inst) = inner.instances.get_mut(fp) else {
                continue;
            };
            changed |= refresh(inst, rule);
            inst.value = *value;
            inst.annotations = render_annotations(rule, &inst.labels, *value);
            let t = inst.step(condition, now, timing);
            changed |= t.persist();
            self.handle(inst, t, generator_url.as_deref(), outcome, &mut remove);
        }

        // Instances of this rule whose series is gone this round: condition false.
        for inst in inner.instances.values_mut() {
            if inst.rule != rule.name || series.contains_key(&inst.fingerprint) {
                continue;
            }
            changed |= refresh(inst, rule);
            let t = inst.step(false, now, timing);
            changed |= t.persist();
            self.handle(inst, t, generator_url.as_deref(), outcome, &mut remove);
        }
        for fp in remove {
            inner.instances.remove(&fp);
        }
        Ok(changed)
    }

    fn handle(
        &self,
        inst: &Instance,
        t: Transition,
        generator_url: Option<&str>,
        outcome: &mut EvalOutcome,
        remove: &mut Vec<String>,
    ) {
        match t {
            Transition::Fired | Transition::Repeated => {
                info!(rule = %inst.rule, fingerprint = %inst.fingerprint, labels = %format_labels(&inst.labels),
                    value = inst.value, repeat = (t == Transition::Repeated), "alert firing");
                self.emit(inst, Status::Firing, generator_url, outcome);
            }
            Transition::Resolved => {
                info!(rule = %inst.rule, fingerprint = %inst.fingerprint, labels = %format_labels(&inst.labels),
                    value = inst.value, "alert resolved");
                self.emit(inst, Status::Resolved, generator_url, outcome);
            }
            Transition::Pending => {
                debug!(rule = %inst.rule, fingerprint = %inst.fingerprint, "alert pending")
            }
            Transition::Inactive | Transition::Forgotten => remove.push(inst.fingerprint.clone()),
            Transition::Unchanged | Transition::Updated => {}
        }
    }

    /// Records and dispatches one notification to every destination of the instance.
    fn emit(
        &self,
        inst: &Instance,
        status: Status,
        generator_url: Option<&str>,
        outcome: &mut EvalOutcome,
    ) {
        let n = Notification {
            rule: inst.rule.clone(),
            fingerprint: inst.fingerprint.clone(),
            status,
            severity: inst.severity,
            labels: inst.labels.clone(),
            annotations: inst.annotations.clone(),
            value: inst.value,
            threshold: inst.threshold,
            starts_at: inst.fired_at.unwrap_or(inst.active_since),
            ends_at: match status {
                Status::Resolved => inst.resolved_at,
                Status::Firing => None,
            },
            generator_url: generator_url.map(str::to_owned),
        };
        if let Some(dispatcher) = &self.dispatcher {
            for name in &inst.notify {
                match self.destinations.get(name) {
                    Some(d) => {
                        inc(&self.metrics.notifications);
                        dispatcher.send(d.clone(), n.clone());
                    }
                    None => warn!(rule = %inst.rule, destination = %name,
                        "alert destination no longer configured; notification not sent"),
                }
            }
        }
        outcome.notifications.push(n);
    }

    /// Link to the live aggregates behind a metric rule, when the server's external URL is known.
    fn generator_url(&self, rule: &CompiledRule) -> Option<String> {
        let base = self.external_url.as_deref()?;
        let Query::Metric(q) = &rule.query else {
            return None;
        };
        let mut url =
            reqwest::Url::parse(&format!("{}/api/v1/stats", base.trim_end_matches('/'))).ok()?;
        url.query_pairs_mut()
            .append_pair("window", &humantime::format_duration(q.window).to_string());
        if !q.group_by.is_empty() {
            url.query_pairs_mut()
                .append_pair("group_by", &q.group_by.join(","));
        }
        Some(url.into())
    }

    async fn persist(&self, now: DateTime<Utc>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let instances: Vec<Instance> = self
            .inner
            .lock()
            .unwrap()
            .instances
            .values()
            .cloned()
            .collect();
        let result = tokio::task::spawn_blocking(move || store.save(&instances, now))
            .await
            .unwrap_or_else(|e| {
                Err(super::state::StateError::Write {
                    path: PathBuf::from(super::state::STATE_FILE),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        if let Err(e) = result {
            inc(&self.metrics.state_write_errors);
            error!(error = %e, "cannot persist alert state; a restart may re-notify or lose pending alerts");
        }
    }
}

/// Copies what the rule may have changed since the instance was created (or restored).
fn refresh(inst: &mut Instance, rule: &CompiledRule) -> bool {
    let changed = inst.threshold != rule.threshold
        || inst.severity != rule.severity
        || inst.notify != rule.notify;
    inst.threshold = rule.threshold;
    inst.severity = rule.severity;
    inst.notify.clone_from(&rule.notify);
    changed
}

fn render_annotations(
    rule: &CompiledRule,
    labels: &BTreeMap<String, String>,
    value: f64,
) -> BTreeMap<String, String> {
    let vars = template::context(
        rule.filter(),
        labels,
        &rule.name,
        rule.severity.as_str(),
        value,
        rule.threshold,
    );
    rule.annotations
        .iter()
        .map(|(k, t)| (k.clone(), template::render(t, &vars)))
        .collect()
}

/// What `llmtrace alerts check` prints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    pub lines: Vec<String>,
    /// Rules whose evaluation failed (the CLI exits 1 when non-zero).
    pub errors: usize,
}

/// `llmtrace alerts check`: validates `config` (errors name rule and key), then evaluates every
/// rule once, starting from the persisted state in `state_dir` when given (read only: a corrupt
/// file is reported, not moved), and returns one line per rule and per series with its state.
/// Nothing is sent and nothing is written.
pub async fn check(
    config: &AlertsConfig,
    source: Arc<dyn Source>,
    state_dir: Option<&Path>,
    clock: Arc<dyn Clock>,
) -> Result<CheckReport, Vec<RuleError>> {
    let mut lines = Vec::new();
    let instances = match state_dir.map(|d| StateStore::new(d).read()) {
        None => Vec::new(),
        Some(Ok(i)) => i,
        Some(Err(e)) => {
            lines.push(format!("alert state ignored: {e}"));
            Vec::new()
        }
    };
    let engine = match AlertEngine::build(config, source, clock, None, None, None, instances) {
        Ok(e) => e,
        Err(EngineError::Invalid(errors)) => return Err(errors),
    };
    let outcome = engine.round(true).await;
    let errors: BTreeMap<&str, &str> = outcome
        .errors
        .iter()
        .map(|(r, e)| (r.as_str(), e.as_str()))
        .collect();
    let views = engine.instances();
    for rule in &engine.rules {
        let header = format!("rule {:?} [{}]", rule.name, rule.describe());
        if let Some(e) = errors.get(rule.name.as_str()) {
            lines.push(format!("{header}: ERROR {e}"));
            continue;
        }
        let mut series: Vec<&SeriesResult> = outcome
            .series
            .iter()
            .filter(|s| s.rule == rule.name)
            .collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        let instances: Vec<&InstanceView> = views.iter().filter(|v| v.rule == rule.name).collect();
        lines.push(format!(
            "{header}: {} series, {} firing, {} pending",
            series.len(),
            instances
                .iter()
                .filter(|v| v.state == AlertState::Firing)
                .count(),
            instances
                .iter()
                .filter(|v| v.state == AlertState::Pending)
                .count(),
        ));
        for s in &series {
            let state = instances
                .iter()
                .find(|v| v.fingerprint == s.fingerprint)
                .map(|v| v.state.as_str())
                .unwrap_or("inactive");
            lines.push(format!(
                "  {state:<9} {} value={}",
                format_labels(&s.labels),
                notify::format_value(s.value)
            ));
        }
        for v in instances
            .iter()
            .filter(|v| !series.iter().any(|s| s.fingerprint == v.fingerprint))
        {
            lines.push(format!(
                "  {:<9} {} (no data this round; last value {})",
                v.state.as_str(),
                format_labels(&v.labels),
                notify::format_value(v.value)
            ));
        }
    }
    Ok(CheckReport {
        lines,
        errors: outcome.errors.len(),
    })
}
