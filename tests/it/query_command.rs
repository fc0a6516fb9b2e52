//! `auditlake query`: the same statement over a data directory in-process and
//! against the running server gives the same rows, in each output format.

use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{Server, demo_data_dir};

const PER_ORG: &str =
    "select org_id, count(*) as n from audit_events where org_id <> '_auditlake' group by org_id order by org_id";

fn query(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditlake")).arg("query").args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn stdout(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn query_reads_a_data_directory_or_a_server_and_prints_table_csv_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 20_000, 3);
    let data_dir = data.to_str().unwrap();

    // In-process, while no server holds the directory.
    let csv = stdout(query(&["--data-dir", data_dir, "--format", "csv", PER_ORG]));
    let table = stdout(query(&["--data-dir", data_dir, PER_ORG]));
    assert!(
        refused(&query(&["--data-dir", data_dir, "delete from audit_events"])).contains("read-only"),
        "a write is refused before anything is opened"
    );
    let missing = dir.path().join("missing");
    assert!(refused(&query(&["--data-dir", missing.to_str().unwrap(), PER_ORG])).contains("no data directory"));
    assert!(!missing.exists(), "a query never creates a data directory");

    let server = Server::start(&data, &[]);
    let over_wire = server.sql(PER_ORG).unwrap();
    let expected_csv = format!("org_id,n\n{}", over_wire.replace('|', ","));
    assert_eq!(csv, expected_csv);
    assert_eq!(csv.lines().count(), 5, "a header and four demo orgs: {csv}");
    for line in over_wire.lines() {
        let (org, n) = line.split_once('|').unwrap();
        assert!(table.lines().any(|l| l.contains(org) && l.contains(n)), "{org} {n} in\n{table}");
    }
    assert!(
        refused(&query(&["--data-dir", data_dir, PER_ORG])).contains("--server"),
        "the server holds the directory: the error says what to do instead"
    );

    // Against the server, typed: counts are JSON numbers, times strings.
    let url = server.url();
    let json = stdout(query(&["--server", &url, "--format", "json", PER_ORG]));
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    let from_json: Vec<String> =
        rows.iter().map(|r| format!("{}|{}", r["org_id"].as_str().unwrap(), r["n"].as_i64().unwrap())).collect();
    assert_eq!(from_json, over_wire.lines().collect::<Vec<_>>());
    let typed = stdout(query(&[
        "--server",
        &url,
        "--format",
        "json",
        "select max(time) as last, count(*) > 0 as any, min(seq) as first_seq from audit_events",
    ]));
    let typed: Vec<Value> = serde_json::from_str(&typed).unwrap();
    assert_eq!(typed[0]["any"], Value::Bool(true));
    assert_eq!(typed[0]["first_seq"], Value::from(1));
    assert!(typed[0]["last"].as_str().unwrap().starts_with("20"), "{typed:?}");
    assert!(refused(&query(&["--server", &url, "drop table audit_events"])).contains("read-only"));
    let empty = stdout(query(&["--server", &url, "--format", "json", "select id from audit_events where false"]));
    assert_eq!(empty, "[]\n");

    // A saved report, against the server and over the directory.
    let report = |target: &[&str]| {
        let mut args = vec!["report", "actor_timeline", "--param", "actor=acme-u007", "--param", "since=2000-01-01"];
        args.extend_from_slice(&["--format", "json"]);
        args.extend_from_slice(target);
        let out = Command::new(env!("CARGO_BIN_EXE_auditlake")).args(&args).env("RUST_BACKTRACE", "0").output();
        let rows: Vec<Value> = serde_json::from_str(&stdout(out.unwrap())).unwrap();
        rows.iter()
            .map(|r| format!("{} {}", r["action"].as_str().unwrap(), r["source_ip"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    let from_server = report(&["--server", &url]);
    assert!(from_server.len() > 100, "the phished account's month: {}", from_server.len());
    assert!(from_server.iter().any(|r| r == "auth.login.failed 203.0.113.50"), "the planted attack is in it");
    let unknown = Command::new(env!("CARGO_BIN_EXE_auditlake")).args(["report", "nope"]).output().unwrap();
    assert!(refused(&unknown).contains("actor_timeline"), "the error lists the saved reports");
    let missing = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["report", "actor_timeline", "--server", &url])
        .output()
        .unwrap();
    assert!(refused(&missing).contains("--param actor="));

    // And in-process over the directory, once the server is gone.
    drop(server);
    assert_eq!(report(&["--data-dir", data_dir]), from_server);
}
