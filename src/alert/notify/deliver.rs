//! Reliable delivery of notification payloads over HTTP.
//!
//! Policy (issue 7): retry with exponential backoff and jitter on 5xx, on 429 (honouring
//! `Retry-After`, also when a 503 carries one) and on network errors and timeouts; never retry other 4xx (or 3xx: redirects
//! are not followed, see [`Deliverer::new`]), because the receiver would give the same answer.
//! Every wait goes through a [`Sleeper`] so tests run the whole schedule in virtual time.
//!
//! Secrets: a Slack webhook URL's path and a PagerDuty routing key are credentials. Nothing here
//! logs a URL except through [`redact`], reqwest errors are stripped of their URL
//! (`without_url`) before they are turned into text, and response bodies quoted in errors are
//! scrubbed of the destination's secrets.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{payload_for, truncate_chars, Destination, Notification, Origin};

/// Sent as `User-Agent` so receivers can tell our requests apart in their logs.
pub const USER_AGENT: &str = concat!("llmtrace/", env!("CARGO_PKG_VERSION"));
/// How much of an error response body is kept for the error message.
const ERROR_BODY_MAX_CHARS: usize = 512;
/// A successful response body is read up to this size (so the pooled connection can be reused)
/// and then dropped: receivers answer `ok` or a small JSON object.
const SUCCESS_BODY_MAX_BYTES: usize = 64 * 1024;

/// The future a [`Sleeper`] returns.
pub type SleepFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Waits between attempts. Production uses [`TokioSleeper`]; tests inject one that records the
/// requested durations and returns at once, so a 60 s backoff costs nothing.
pub trait Sleeper: Send + Sync {
    fn sleep(&self, duration: Duration) -> SleepFuture;
}

/// Real waiting on the tokio timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> SleepFuture {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Any `Fn(Duration) -> SleepFuture` is a sleeper, which keeps test doubles to one closure.
impl<F> Sleeper for F
where
    F: Fn(Duration) -> SleepFuture + Send + Sync,
{
    fn sleep(&self, duration: Duration) -> SleepFuture {
        self(duration)
    }
}

/// Serde for durations written the way the config file writes them (`"500ms"`, `"1m"`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        // humantime's message ("expected number at 0") does not quote the input; we do.
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// When and how often to retry. Out-of-range values are tolerated rather than rejected (a
/// `multiplier` below 1 acts as 1, `jitter` is clamped to 0..=1, `max_attempts` 0 acts as 1), so
/// a config typo degrades the schedule instead of dropping alerts or panicking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total requests per notification, the first one included.
    pub max_attempts: u32,
    #[serde(with = "duration_text")]
    pub initial_backoff: Duration,
    /// Caps every wait, including one asked for by `Retry-After`.
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Relative spread: 0.2 means each wait is drawn from ±20 % of the nominal backoff, so many
    /// instances failing together do not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Attempts actually made: at least one.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// Wait before retry number `retry` (1 = the wait after the first failed attempt):
    /// `initial * multiplier^(retry-1)`, capped at `max_backoff`, then scaled by a jitter factor
    /// `1 + jitter * (2u - 1)` for `u` in `[0, 1)`, and capped again.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let max = self.max_backoff.as_secs_f64();
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        // Past 2^64 every realistic schedule is already at max_backoff; bounding the exponent
        // keeps powi away from infinity for sane multipliers.
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let nominal = self.initial_backoff.as_secs_f64() * multiplier.powi(exponent);
        let base = if nominal.is_finite() {
            nominal.min(max)
        } else {
            max
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let secs = (base * (1.0 + jitter * (2.0 * unit - 1.0))).clamp(0.0, max);
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_backoff)
    }
}

/// A tiny xorshift64 generator for jitter. Jitter only needs to decorrelate retries, not be
/// unpredictable, so this avoids a `rand` dependency. Lock-free so concurrent deliveries share it.
#[derive(Debug)]
struct XorShift64(AtomicU64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point; any other value has the full 2^64-1 period.
        XorShift64(AtomicU64::new(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        }))
    }

    fn from_time() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        XorShift64::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    fn step(mut x: u64) -> u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    /// Uniform in `[0, 1)` from the top 53 bits.
    fn next_unit(&self) -> f64 {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = Self::step(current);
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (next >> 11) as f64 / (1u64 << 53) as f64,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Delivery counters, shared with `/metrics`. Cumulative since start.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    /// HTTP requests sent (first tries and retries).
    pub attempts: AtomicU64,
    /// Notifications delivered (a 2xx answer).
    pub successes: AtomicU64,
    /// Notifications given up on (rejected, retries exhausted, or unsendable).
    pub failures: AtomicU64,
    /// Requests that were retries of an earlier failed one.
    pub retries: AtomicU64,
}

/// A consistent-enough copy of [`DeliveryMetrics`] for rendering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    pub retries: u64,
}

impl DeliveryMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A delivered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub destination: String,
    /// Requests it took, the successful one included.
    pub attempts: u32,
    /// The 2xx status of the successful answer.
    pub status: u16,
    /// Total time spent waiting between attempts.
    pub waited: Duration,
}

/// Why a delivery was given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    /// A 3xx or 4xx other than 429: the request itself is wrong (bad key, bad payload, gone
    /// webhook), so it was not retried.
    #[error("rejected with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// The receiver kept answering 5xx or 429 until the attempts ran out.
    #[error("receiver unavailable, last answer HTTP {status}: {body}")]
    Unavailable { status: u16, body: String },
    /// Connection, TLS or timeout failure on the last attempt. The message never has the URL.
    #[error("network error{}: {message}", if *.timeout { " (timeout)" } else { "" })]
    Network { message: String, timeout: bool },
    /// The request could not be built (bad URL or header); nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A notification that could not be delivered. `Display` is safe to log: it names the
/// destination, never its URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery to {destination:?} failed after {attempts} attempt(s): {kind}")]
pub struct DeliveryError {
    pub destination: String,
    /// Requests sent (0 when the request could not be built).
    pub attempts: u32,
    /// The last HTTP status received on any attempt, if there was an answer at all.
    pub last_status: Option<u16>,
    pub kind: FailureKind,
}

/// The HTTP client could not be built (TLS initialisation, for instance).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the notification HTTP client: {0}")]
pub struct ClientBuildError(String);

/// Knobs for [`Deliverer::new`].
#[derive(Debug, Clone)]
pub struct DelivererOptions {
    pub policy: RetryPolicy,
    /// TCP + TLS connection establishment.
    pub connect_timeout: Duration,
    /// Whole request, connect to last body byte. Slack and PagerDuty answer in well under a
    /// second; a hung receiver must not hold a notification for long.
    pub request_timeout: Duration,
    /// Identity shown in PagerDuty events and the webhook `externalURL`.
    pub origin: Origin,
}

impl Default for DelivererOptions {
    fn default() -> Self {
        DelivererOptions {
            policy: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            origin: Origin::default(),
        }
    }
}

/// Sends notifications to destinations with retries. Cheap to share (`Arc<Deliverer>`); each
/// call is independent, so the alert engine can spawn deliveries and never wait on them.
pub struct Deliverer {
    client: reqwest::Client,
    policy: RetryPolicy,
    origin: Origin,
    sleeper: Arc<dyn Sleeper>,
    rng: XorShift64,
    metrics: Arc<DeliveryMetrics>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("policy", &self.policy)
            .field("origin", &self.origin)
            .field("metrics", &self.metrics.snapshot())
            .finish_non_exhaustive()
    }
}

/// reqwest is built with `rustls-no-provider`: rustls needs a process-wide crypto provider
/// before the first client is built, or reqwest panics. We use `ring` (builds with just a C
/// compiler; aws-lc-rs would need cmake). If some other part of the process installed a
/// provider first, that one is kept and used, which is equally fine.
fn install_crypto_provider() {
    crate::install_crypto_provider();
}

impl Deliverer {
    /// Builds the HTTP client: connect and request timeouts, our `User-Agent`, and no redirects
    /// (a redirected POST may turn into a GET or carry the secret URL's body to another host;
    /// Slack and PagerDuty never redirect, so a 3xx means a misconfigured URL).
    pub fn new(options: DelivererOptions) -> Result<Self, ClientBuildError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| ClientBuildError(error_chain(&e.without_url(), &[])))?;
        Ok(Deliverer {
            client,
            policy: options.policy,
            origin: options.origin,
            sleeper: Arc::new(TokioSleeper),
            rng: XorShift64::from_time(),
            metrics: Arc::new(DeliveryMetrics::default()),
        })
    }

    /// Replaces the real timer (tests: record the waits and return at once).
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Makes the jitter sequence reproducible.
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.rng = XorShift64::new(seed);
        self
    }

    /// Shares counters with another deliverer or with whoever renders `/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<DeliveryMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> Arc<DeliveryMetrics> {
        Arc::clone(&self.metrics)
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Builds the payload `destination` expects for `notification` and delivers it.
    pub async fn notify(
        &self,
        destination: &Destination,
        notification: &Notification,
    ) -> Result<DeliveryOutcome, DeliveryError> {
        let body = payload_for(destination, notification, &self.origin);
        let (headers, secrets): (&BTreeMap<String, String>, Vec<&str>) = match destination {
            Destination::PagerDuty { routing_key, .. } => (&EMPTY, vec![routing_key.as_str()]),
            Destination::Webhook { headers, .. } => {
                (headers, headers.values().map(String::as_str).collect())
            }
            Destination::Slack { .. } => (&EMPTY, Vec::new()),
        };
        let result = self
            .send(
                destination.name(),
                destination.url(),
                headers,
                &body,
                &secrets,
            )
            .await;
        match &result {
            Ok(outcome) => debug!(
                destination = destination.name(),
                kind = destination.kind(),
                rule = %notification.rule,
                fingerprint = %notification.fingerprint,
                status = %notification.status,
                attempts = outcome.attempts,
                "notification delivered"
            ),
            Err(err) => warn!(
                destination = destination.name(),
                kind = destination.kind(),
                rule = %notification.rule,
                fingerprint = %notification.fingerprint,
                status = %notification.status,
                error = %err,
                "notification dropped"
            ),
        }
        result
    }

    /// POSTs `body` as JSON to `url` with the retry policy. Public so the engine can send a
    /// grouped webhook body (`webhook::payload` over several alerts) through the same path.
    pub async fn post_json(
        &self,
        destination: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
    ) -> Result<DeliveryOutcome, DeliveryError> {
        let secrets: Vec<&str> = headers.values().map(String::as_str).collect();
        self.send(destination, url, headers, body, &secrets).await
    }

    async fn send(
        &self,
        destination: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        body: &serde_json::Value,
        extra_secrets: &[&str],
    ) -> Result<DeliveryOutcome, DeliveryError> {
        let fail = |attempts: u32, last_status: Option<u16>, kind: FailureKind| {
            DeliveryMetrics::inc(&self.metrics.failures);
            DeliveryError {
                destination: destination.to_owned(),
                attempts,
                last_status,
                kind,
            }
        };
        let target = check_url(url).map_err(|e| fail(0, None, FailureKind::InvalidRequest(e)))?;
        let mut header_map =
            header_map(headers).map_err(|e| fail(0, None, FailureKind::InvalidRequest(e)))?;
        // Ours first unless the destination explicitly set its own Content-Type.
        header_map
            .entry(CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(body)
            .map(Bytes::from)
            .map_err(|e| fail(0, None, FailureKind::InvalidRequest(e.to_string())))?;

        // Strings that must never appear in an error message: the secret part of the URL and
        // whatever the caller says is secret (routing key, header values).
        let path_and_query = url_secret_part(&target);
        let mut secrets: Vec<&str> = extra_secrets.to_vec();
        secrets.push(&path_and_query);

        let redacted = redact(url);
        let max_attempts = self.policy.attempts();
        let mut last_status = None;
        let mut waited = Duration::ZERO;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            DeliveryMetrics::inc(&self.metrics.attempts);
            let sent = self
                .client
                .post(target.clone())
                .headers(header_map.clone())
                .body(body.clone())
                .send()
                .await;
            let (kind, retry_after) = match sent {
                Ok(response) => {
                    let status = response.status();
                    last_status = Some(status.as_u16());
                    if status.is_success() {
                        drain(response).await;
                        DeliveryMetrics::inc(&self.metrics.successes);
                        return Ok(DeliveryOutcome {
                            destination: destination.to_owned(),
                            attempts: attempt,
                            status: status.as_u16(),
                            waited,
                        });
                    }
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, Utc::now()));
                    let text = scrub(&read_prefix(response).await, &secrets);
                    let code = status.as_u16();
                    if code == 429 || status.is_server_error() {
                        (
                            FailureKind::Unavailable {
                                status: code,
                                body: text,
                            },
                            retry_after,
                        )
                    } else {
                        let kind = FailureKind::Rejected {
                            status: code,
                            body: text,
                        };
                        // Final outcome: the caller (`notify`) logs it with the rule context.
                        debug!(destination, url = %redacted, attempt, error = %kind,
                            "notification rejected; not retrying");
                        return Err(fail(attempt, last_status, kind));
                    }
                }
                Err(e) => {
                    let e = e.without_url();
                    let message = scrub(&error_chain(&e, &[]), &secrets);
                    if e.is_builder() {
                        return Err(fail(
                            attempt,
                            last_status,
                            FailureKind::InvalidRequest(message),
                        ));
                    }
                    (
                        FailureKind::Network {
                            message,
                            timeout: e.is_timeout(),
                        },
                        None,
                    )
                }
            };
            if attempt >= max_attempts {
                debug!(destination, url = %redacted, attempt, error = %kind,
                    "notification delivery failed; attempts exhausted");
                return Err(fail(attempt, last_status, kind));
            }
            // A server-requested wait is honoured as given (it is a minimum, so no jitter below
            // it) but capped, so one bad header cannot park a notification for hours.
            let delay = match retry_after {
                Some(d) => d.min(self.policy.max_backoff),
                None => self.policy.backoff(attempt, self.rng.next_unit()),
            };
            warn!(destination, url = %redacted, attempt, max_attempts, error = %kind,
                delay_ms = delay.as_millis() as u64, "notification delivery failed; retrying");
            DeliveryMetrics::inc(&self.metrics.retries);
            waited += delay;
            self.sleeper.sleep(delay).await;
        }
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date in any of the three
/// formats RFC 9110 requires recipients to accept (IMF-fixdate, RFC 850, asctime). A date in the
/// past means "now" (zero). Unparseable values give `None`, and the caller falls back to its own
/// backoff.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail; the caller caps the wait.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = DateTime::parse_from_rfc2822(value)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
                .map(|naive| naive.and_utc())
        })?;
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

/// Keeps only scheme, host and port of a URL, for logs: `https://hooks.slack.com/…`.
/// Userinfo, path and query (where Slack and most webhooks keep their secret) are dropped.
/// Text that does not parse as a URL is not echoed at all.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.host_str() {
            Some(host) => {
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!("{}://{host}{port}/…", u.scheme())
            }
            None => format!("{}:…", u.scheme()),
        },
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Absolute http(s) URL with a host. The error text never contains the URL itself.
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported (use https)",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none() {
        return Err("URL has no host".to_owned());
    }
    Ok(parsed)
}

/// Turns configured headers into a `HeaderMap`. Values are marked sensitive so hyper neither
/// prints them in `Debug` nor lets HTTP/2 HPACK index them. Errors name the header, not its value.
pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name:?} is not a valid header value"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// The secret-bearing part of a URL (userinfo, path, query) as one string to scrub, or empty
/// when the path is trivial.
fn url_secret_part(url: &reqwest::Url) -> String {
    let mut s = url.path().to_owned();
    if let Some(q) = url.query() {
        s.push('?');
        s.push_str(q);
    }
    if s == "/" {
        String::new()
    } else {
        s
    }
}

/// Replaces every occurrence of each (non-trivial) secret with `…`.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short "secrets" (a header value of "1") would shred the message for no gain.
        if secret.len() >= 6 {
            out = out.replace(secret, "…");
        }
    }
    out
}

/// `error: cause: cause` on one line, skipping a cause that repeats its parent's text.
fn error_chain(err: &(dyn std::error::Error + 'static), secrets: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    scrub(&parts.join(": "), secrets)
}

/// The start of an error response body, for the error message.
async fn read_prefix(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    // Bytes are an upper bound on chars, so this reads enough for ERROR_BODY_MAX_CHARS.
    while buf.len() < ERROR_BODY_MAX_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    truncate_chars(text.trim(), ERROR_BODY_MAX_CHARS)
}

async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < SUCCESS_BODY_MAX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}
