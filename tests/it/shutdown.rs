//! The real binary under load: SIGTERM mid-stream drains in-flight requests,
//! exits 0, and every span it acknowledged is on disk exactly once.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::binary::{spawn_senders, start, terminate, Acked};
use crate::support::{now_nanos, read_rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_nothing_acknowledged() {
    llmtrace::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, http, _api) = start(&data);
    let url = format!("http://{http}/v1/traces");

    let acked: Acked = Default::default();
    // Senders stop on their own once the draining server refuses them.
    let never = Arc::new(AtomicBool::new(false));
    let senders = spawn_senders(&url, &acked, 0, now_nanos() - 1_000_000_000, &never);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clean = terminate(server).await;
    for s in senders {
        s.await.unwrap();
    }
    assert!(clean, "exited with an error");

    let acked = acked.lock().unwrap();
    assert!(
        acked.len() >= 1000,
        "the load ran: {} spans acknowledged",
        acked.len()
    );
    let rows = read_rows(&data);
    let mut stored = HashSet::new();
    for r in &rows {
        assert!(
            stored.insert(r.s("span_id").unwrap().to_owned()),
            "span stored twice"
        );
    }
    let missing: Vec<_> = acked.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}
