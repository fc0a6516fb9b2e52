//! auditlake: a self-hosted audit log.
//!
//! Applications post events over HTTP; each accepted batch is made durable in a
//! write-ahead log before it is acknowledged, becomes visible to queries at once
//! from an in-memory Arrow buffer, and is later sealed into sorted, compressed
//! Parquet segments. Investigators query the table `audit_events` in plain SQL
//! over the Postgres wire protocol.
//!
//! The modules follow the layers of that path (see ARCHITECTURE.md):
//!
//! - [`model`]: the event, its one Arrow schema, and validation of incoming JSON.
//! - [`storage`]: WAL, in-memory buffer, Parquet segments, manifest, recovery.
//! - [`query`]: the DataFusion `audit_events` table provider and session setup.
//! - [`server`]: the Postgres wire endpoint (read-only, one session per connection).
//! - [`http`]: the HTTP API: ingest, reads of one organisation's events, proofs, policy admin.
//! - [`integrity`]: tamper evidence: Merkle roots, signed checkpoints, `auditlake verify`.
//! - [`policy`]: per-organisation policy: what is kept of user-generated content.
//! - [`client`]: SQL from the command line, in-process or against a server.
//! - [`exporter`]: `auditlake export`, one organisation's events to a JSONL or Parquet file.
//! - [`import`]: `auditlake import`, other products' audit logs mapped onto the event schema.
//! - [`reports`]: the saved compliance SQL of `sql/` and its psql variables.
//! - [`demo`]: deterministic demo activity with planted incidents, for `auditlake demo` and benchmarks.
//! - [`digest`]: SHA-256, for tokens, SCRAM keys and checkpoint files.
//! - [`cli`]: the command line (`serve`, `demo`, `query`, `report`, `export`, `import`, admin).

pub mod cli;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod digest;
pub mod exporter;
pub mod http;
pub mod import;
pub mod integrity;
pub mod model;
pub mod policy;
pub mod query;
pub mod reports;
pub mod server;
pub mod storage;

/// How many cases a property test runs: `in_suite` in the test suite, or
/// `PROPTEST_CASES` for a long fuzzing run (README, "Fuzzing").
#[cfg(test)]
pub(crate) fn proptest_cases(in_suite: u32) -> proptest::prelude::ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(in_suite);
    proptest::prelude::ProptestConfig::with_cases(cases)
}
