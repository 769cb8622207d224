//! One alert instance (a rule plus one label set) and its lifecycle, and the file that keeps
//! every instance across restarts.
//!
//! The lifecycle is Prometheus':
//!
//! ```text
//!  inactive ──cond──> pending ──cond for `for`──> firing ──cond false for keep_firing_for──> resolved
//!      ^                 │                          │ └─ still firing: notify again every           │
//!      └──cond false─────┘ (no notification)        │    repeat_interval                            │
//!                                                   notify firing                  notify resolved   │
//!  resolved ──cond──> pending (a new episode, same fingerprint)                                      │
//!  resolved ──kept RESOLVED_RETENTION for the API──> forgotten <─────────────────────────────────────┘
//! ```
//!
//! A series that is absent from a round counts as "condition false". `for = 0` fires in the round
//! the condition is first seen; `keep_firing_for = 0` resolves in the first round it is false.
//! Inactive instances are not stored at all.
//!
//! Persistence: `<state_dir>/state.json`, rewritten after each round that changed something
//! (a transition, a notification, `false_since`; a new value alone is not worth a write),
//! through a temp file, fsync and rename (and an fsync of the directory), so a crash leaves either
//! the old or the new file. A file that cannot be parsed is renamed to
//! `state.json.corrupt-<timestamp>` and the engine starts empty: never a crash loop.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::notify::Severity;

/// How long a resolved instance stays visible in `GET /api/v1/alerts` (Prometheus keeps
/// resolved alerts for 15 minutes too).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Version of the `state.json` layout.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// A stored instance's state (inactive instances are not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// RFC 3339 timestamps (chrono's `serde` feature is not enabled in llmtrace).
mod time_text {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn parse(s: &str) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("invalid timestamp {s:?}: {e}"))
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::format(t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| super::parse(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// JSON has no NaN: non-finite values are stored as `null` and read back as NaN.
mod float_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// One alert instance. Everything here is persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub rule: String,
    /// `notify::fingerprint` of `labels` plus `alertname = rule`; PagerDuty's `dedup_key`.
    pub fingerprint: String,
    pub state: AlertState,
    /// Sample labels overlaid with the rule's static labels (no `alertname`).
    pub labels: BTreeMap<String, String>,
    /// Rendered with the latest value seen.
    pub annotations: BTreeMap<String, String>,
    /// Latest value seen (the last one while the series is absent).
    #[serde(with = "float_or_null")]
    pub value: f64,
    /// Copied from the rule so an instance outliving its rule (removed from the config between
    /// restarts) can still be shown and resolved.
    #[serde(with = "float_or_null")]
    pub threshold: f64,
    pub severity: Severity,
    /// Destination names, for the same reason.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Start of the current episode (when it became pending).
    #[serde(with = "time_text")]
    pub active_since: DateTime<Utc>,
    #[serde(default, with = "time_text::option")]
    pub fired_at: Option<DateTime<Utc>>,
    #[serde(default, with = "time_text::option")]
    pub last_notified_at: Option<DateTime<Utc>>,
    /// While firing: first round of the current run of "condition false" (for keep_firing_for).
    #[serde(default, with = "time_text::option")]
    pub false_since: Option<DateTime<Utc>>,
    #[serde(default, with = "time_text::option")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(with = "time_text")]
    pub last_eval_at: DateTime<Utc>,
}

/// Timing parameters of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    pub repeat_interval: Duration,
}

/// What one evaluation did to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing that needs persisting (the value may have changed).
    Unchanged,
    /// Persisted bookkeeping changed (`false_since` set or cleared), no notification.
    Updated,
    /// Inactive or resolved -> pending.
    Pending,
    /// Pending -> inactive: drop the instance, no notification.
    Inactive,
    /// -> firing: send a firing notification.
    Fired,
    /// Still firing and `repeat_interval` has passed since the last notification: send again.
    Repeated,
    /// Firing -> resolved: send a resolved notification.
    Resolved,
    /// Resolved long enough: drop the instance.
    Forgotten,
}

impl Transition {
    pub fn persist(self) -> bool {
        self != Transition::Unchanged
    }

    /// Whether the instance must be removed from the table.
    pub fn removes(self) -> bool {
        matches!(self, Transition::Inactive | Transition::Forgotten)
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or(Duration::ZERO)
}

impl Instance {
    /// A new instance whose condition just became true (state pending; call [`Instance::step`]
    /// right after, which fires it at once when `for` is 0).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rule: &str,
        fingerprint: String,
        labels: BTreeMap<String, String>,
        value: f64,
        threshold: f64,
        severity: Severity,
        notify: Vec<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Instance {
            rule: rule.to_owned(),
            fingerprint,
            state: AlertState::Pending,
            labels,
            annotations: BTreeMap::new(),
            value,
            threshold,
            severity,
            notify,
            active_since: now,
            fired_at: None,
            last_notified_at: None,
            false_since: None,
            resolved_at: None,
            last_eval_at: now,
        }
    }

    /// Advances the lifecycle by one evaluation at `now`. `condition` is whether the series was
    /// present and its value satisfied the rule. Records notification times itself, so the
    /// caller only has to send what the returned transition says.
    pub fn step(&mut self, condition: bool, now: DateTime<Utc>, t: Timing) -> Transition {
        self.last_eval_at = now;
        match (self.state, condition) {
            (AlertState::Resolved, true) => {
                // A new episode of the same instance.
                self.state = AlertState::Pending;
                self.active_since = now;
                self.fired_at = None;
                self.last_notified_at = None;
                self.false_since = None;
                self.resolved_at = None;
                match self.pending_true(now, t) {
                    Transition::Fired => Transition::Fired,
                    _ => Transition::Pending,
                }
            }
            (AlertState::Resolved, false) => {
                let resolved_at = self.resolved_at.unwrap_or(now);
                if elapsed(resolved_at, now) >= RESOLVED_RETENTION {
                    Transition::Forgotten
                } else {
                    Transition::Unchanged
                }
            }
            (AlertState::Pending, true) => self.pending_true(now, t),
            (AlertState::Pending, false) => Transition::Inactive,
            (AlertState::Firing, condition) => {
                let mut out = Transition::Unchanged;
                if condition {
                    if self.false_since.take().is_some() {
                        out = Transition::Updated;
                    }
                } else {
                    if self.false_since.is_none() {
                        self.false_since = Some(now);
                        out = Transition::Updated;
                    }
                    let since = self.false_since.unwrap_or(now);
                    if elapsed(since, now) >= t.keep_firing_for {
                        self.state = AlertState::Resolved;
                        self.resolved_at = Some(now);
                        self.last_notified_at = Some(now);
                        return Transition::Resolved;
                    }
                }
                // Firing (or kept firing): remind every repeat_interval.
                let last = self.last_notified_at.or(self.fired_at).unwrap_or(now);
                if elapsed(last, now) >= t.repeat_interval {
                    self.last_notified_at = Some(now);
                    return Transition::Repeated;
                }
                out
            }
        }
    }

    fn pending_true(&mut self, now: DateTime<Utc>, t: Timing) -> Transition {
        if elapsed(self.active_since, now) >= t.for_duration {
            self.state = AlertState::Firing;
            self.fired_at = Some(now);
            self.last_notified_at = Some(now);
            self.false_since = None;
            Transition::Fired
        } else {
            Transition::Unchanged
        }
    }

    /// Resolves an instance at once (its rule was removed from the config). Returns whether a
    /// resolved notification is due (it was firing).
    pub fn retire(&mut self, now: DateTime<Utc>) -> Transition {
        self.last_eval_at = now;
        match self.state {
            AlertState::Firing => {
                self.state = AlertState::Resolved;
                self.resolved_at = Some(now);
                self.last_notified_at = Some(now);
                Transition::Resolved
            }
            AlertState::Pending => Transition::Inactive,
            AlertState::Resolved => self.step(
                false,
                now,
                Timing {
                    for_duration: Duration::ZERO,
                    keep_firing_for: Duration::ZERO,
                    repeat_interval: Duration::MAX,
                },
            ),
        }
    }

    /// When the instance entered its current state.
    pub fn since(&self) -> DateTime<Utc> {
        match self.state {
            AlertState::Pending => self.active_since,
            AlertState::Firing => self.fired_at.unwrap_or(self.active_since),
            AlertState::Resolved => self.resolved_at.unwrap_or(self.last_eval_at),
        }
    }
}

/// The persisted file.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(with = "time_text")]
    saved_at: DateTime<Utc>,
    instances: Vec<Instance>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a valid alert state file: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// `<state_dir>/state.json`.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

pub const STATE_FILE: &str = "state.json";

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the file without touching it. A missing file is an empty state.
    pub fn read(&self) -> Result<Vec<Instance>, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: path.clone(),
            message,
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != STATE_FORMAT_VERSION {
            return Err(corrupt(format!(
                "unsupported version {} (expected {STATE_FORMAT_VERSION})",
                file.version
            )));
        }
        Ok(file.instances)
    }

    /// Reads the state for the engine at start. Never fails: a corrupt file is logged and
    /// renamed to `state.json.corrupt-<YYYYMMDDTHHMMSSZ>` (so it can be inspected and is not
    /// read again), an unreadable one is logged, and the engine starts empty.
    pub fn load(&self, now: DateTime<Utc>) -> Vec<Instance> {
        match self.read() {
            Ok(instances) => instances,
            Err(err @ StateError::Corrupt { .. }) => {
                let path = self.path();
                let aside = self.dir.join(format!(
                    "{STATE_FILE}.corrupt-{}",
                    now.format("%Y%m%dT%H%M%S%.3fZ")
                ));
                match fs::rename(&path, &aside) {
                    Ok(()) => tracing::error!(error = %err, moved_to = %aside.display(),
                        "alert state file is corrupt; set it aside and starting with no alert state"),
                    Err(e) => tracing::error!(error = %err, rename_error = %e,
                        "alert state file is corrupt and could not be set aside; starting with no alert state"),
                }
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot read alert state; starting with no alert state");
                Vec::new()
            }
        }
    }

    /// Atomically replaces the file: write `state.json.tmp`, fsync, rename over `state.json`,
    /// fsync the directory. Creates the directory if needed.
    pub fn save(&self, instances: &[Instance], now: DateTime<Utc>) -> Result<(), StateError> {
        let file = StateFile {
            version: STATE_FORMAT_VERSION,
            saved_at: now,
            instances: instances.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Write {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        self.write_bytes(&bytes)
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let write_err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(write_err)?;
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            // A write cut short (disk full) is not left holding the space.
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        // Make the rename itself durable. Not possible (nor needed) on every platform.
        #[cfg(unix)]
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}
