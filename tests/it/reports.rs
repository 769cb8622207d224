//! Golden tests of the canned reports: a seeded loadgen data set on a fixed
//! timeline, every report in queries/ run over it and compared with the
//! checked-in result in queries/golden/. After an intended change (a new
//! report, new prices), regenerate with LLMTRACE_UPDATE_GOLDEN=1 and review
//! the diff.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use llmtrace::pricing::PriceBook;
use llmtrace::query::{format, reports, QueryEngine, QueryLimits};

use crate::support::{load, TestServer};

/// 2026-01-15T10:00:00Z
const START_SECS: u64 = 1_768_471_200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_matches_its_golden_result() {
    let server = TestServer::start().await;
    load(&server, 6000, 42, Some(START_SECS * 1_000_000_000)).await;
    let (_rows, dir) = server.stop().await;

    let engine = QueryEngine::open(
        &dir.path().join("data"),
        &PriceBook::default_book(),
        QueryLimits::default(),
    )
    .await
    .unwrap();
    let since = UNIX_EPOCH + Duration::from_secs(START_SECS - 3600);
    let until = UNIX_EPOCH + Duration::from_secs(START_SECS + 86_400);
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries/golden");
    let update = std::env::var_os("LLMTRACE_UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (name, _) in reports::REPORTS {
        let sql = reports::sql(name, since, until).unwrap();
        let result = engine
            .run(&sql)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!result.truncated, "{name}");
        let csv = String::from_utf8(format::to_csv(&result).unwrap()).unwrap();
        let path = golden.join(format!("{name}.csv"));
        if update {
            std::fs::write(&path, &csv).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (LLMTRACE_UPDATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        // Every loadgen model is in the shipped book, so only unpriced_models is empty.
        assert!(
            csv.lines().count() > 1 || *name == "unpriced_models",
            "{name} has rows"
        );
        if csv != want {
            mismatches.push(format!("{name}:\n--- golden\n{want}\n--- got\n{csv}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
