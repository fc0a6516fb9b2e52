//! The integration suite: one binary (one link of the dependency graph), each
//! module driving the real `auditlake` binary through real clients.

mod access;
mod bench_smoke;
mod bi_tools;
mod browser;
mod clients;
mod crash;
mod distributed;
mod end_to_end;
mod export;
mod harness;
mod hostile;
mod import;
mod integrity;
mod object_storage;
mod open_layout;
mod query_command;
mod saved_reports;
mod self_audit;
mod tenancy;
mod tools;
mod ugc;
mod validation;
mod web_ui;
