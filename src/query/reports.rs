//! Canned reports: the SQL files in `queries/`, built into the binary. Each
//! starts with a comment saying what it answers and is bounded in time by
//! `{since}` and `{until}`, filled in by `llmtrace report NAME --since 24h`,
//! and by the same range on the `date` partition column (`{since_date}`,
//! `{until_date}`), so only the partitions of the range are read.

use std::time::SystemTime;

/// (name, SQL) of every report.
pub const REPORTS: &[(&str, &str)] = &[
    (
        "latency_by_model",
        include_str!("../../queries/latency_by_model.sql"),
    ),
    (
        "cost_by_model_day",
        include_str!("../../queries/cost_by_model_day.sql"),
    ),
    (
        "prompt_versions",
        include_str!("../../queries/prompt_versions.sql"),
    ),
    (
        "errors_by_provider",
        include_str!("../../queries/errors_by_provider.sql"),
    ),
    (
        "top_spenders",
        include_str!("../../queries/top_spenders.sql"),
    ),
    (
        "unpriced_models",
        include_str!("../../queries/unpriced_models.sql"),
    ),
    (
        "cache_savings",
        include_str!("../../queries/cache_savings.sql"),
    ),
    (
        "slowest_traces",
        include_str!("../../queries/slowest_traces.sql"),
    ),
];

/// The header comment of a report: what it answers.
pub fn description(sql: &str) -> String {
    sql.lines()
        .take_while(|l| l.starts_with("--"))
        .map(|l| l.trim_start_matches("--").trim())
        .collect::<Vec<_>>()
        .join(" ")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The SQL of report `name` for the time range [since, until).
pub fn sql(name: &str, since: SystemTime, until: SystemTime) -> Option<String> {
    let (_, text) = REPORTS.iter().find(|(n, _)| *n == name)?;
    let day = |t: SystemTime| {
        chrono::DateTime::<chrono::Utc>::from(t)
            .format("%Y-%m-%d")
            .to_string()
    };
    Some(
        text.replace("{since_date}", &day(since))
            .replace("{until_date}", &day(until))
            .replace("{since}", &rfc3339(since))
            .replace("{until}", &rfc3339(until)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_says_what_it_answers_and_is_time_bounded() {
        assert!(REPORTS.len() >= 8);
        for (name, text) in REPORTS {
            assert!(description(text).len() > 20, "{name} has a header comment");
            assert!(
                text.contains("{since}") && text.contains("{until}"),
                "{name} is time-bounded"
            );
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_768_471_200);
        let s = sql("cost_by_model_day", t, t).unwrap();
        assert!(s.contains("TIMESTAMP '2026-01-15T10:00:00"), "{s}");
        assert!(
            s.contains("date BETWEEN '2026-01-15' AND '2026-01-15'"),
            "{s}"
        );
        assert!(sql("nope", t, t).is_none());
    }
}
