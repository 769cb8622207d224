//! Integration tests: one binary, one module per behaviour.

mod aggregate;
mod alerts;
mod auth;
mod backpressure;
mod bad_input;
mod binary;
mod crash;
mod damaged;
mod data_dir_lock;
mod disk_full;
mod fixtures;
mod hostile_clients;
mod hostile_sql;
mod loadgen;
mod one_call;
mod otlp_json;
mod query;
mod reports;
mod sdk_exporters;
mod server;
mod shutdown;
mod support;
