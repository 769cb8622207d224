//! llmtrace: an OpenTelemetry trace collector for LLM applications.
//!
//! Data flows one way: [`ingest`] decodes OTLP and normalises each span once
//! ([`genai`] reads the LLM facts, [`record`] holds the typed row), the [`wal`]
//! seam makes accepted requests durable, and [`store`] buffers rows and writes
//! them to Parquet. [`serve`] wires the daemon together; [`api`] serves health.

pub mod aggregate;
pub mod alert;
pub mod api;
pub mod auth;
pub mod config;
pub mod demo;
pub mod genai;
pub mod ingest;
pub mod ledger;
pub mod loadgen;
pub mod metrics;
pub mod pricing;
pub mod quarantine;
pub mod query;
pub mod record;
pub mod replay;
pub mod rollup_sink;
pub mod serve;
pub mod store;
pub mod wal;

/// Keeps the process off transparent huge pages. mimalloc asks the kernel for
/// them on its arenas (`madvise(MADV_HUGEPAGE)`), so a span buffer, WAL
/// record or request touched in a fresh 2 MiB region makes all of it resident:
/// measured under loadgen (BENCHMARKS.md, "Resident memory and huge pages"),
/// 35 MiB more RSS after 4,000 spans, and at full load enough more to reach the
/// `ingest.memory_limit` guard and refuse requests. The flag is checked at each
/// page fault, so it covers the arenas mapped before `main` too.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%error, "could not turn transparent huge pages off");
    }
}

/// Installs rustls' `ring` crypto provider for the process, once. reqwest is
/// built without a default provider (its own default, aws-lc-rs, needs cmake
/// to build), and building any reqwest client before a provider is installed
/// panics: every entry point that makes HTTP clients calls this first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
