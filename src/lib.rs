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
