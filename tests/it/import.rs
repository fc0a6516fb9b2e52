//! `auditlake import`: our fixtures (written from each format's public
//! documentation) with exact counts and mapped rows, and the real public
//! samples in `../shared/samples/` checked against an independent parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::run_cli;

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import/").to_string() + name
}

/// Runs `auditlake import`: exit code, and each file's `(imported, duplicates, rejected)`.
fn import(
    data: &Path,
    format: &str,
    org: Option<&str>,
    files: &[String],
) -> (i32, BTreeMap<String, [usize; 3]>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditlake"));
    command.args(["import", "--format", format, "--data-dir"]).arg(data).args(files);
    if let Some(org) = org {
        command.args(["--org", org]);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut reports = BTreeMap::new();
    for line in stdout.lines() {
        // "PATH: 2 imported (0 already stored), 1 rejected"
        let Some((path, rest)) = line.rsplit_once(": ") else { continue };
        let numbers: Vec<usize> =
            rest.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|n| n.parse().unwrap()).collect();
        if let [imported, duplicates, rejected] = numbers[..] {
            reports.insert(path.to_string(), [imported, duplicates, rejected]);
        }
    }
    (out.status.code().unwrap_or(-1), reports, stderr)
}

fn query(data: &Path, sql: &str) -> Vec<Value> {
    let out = run_cli(&["query", "--format", "json", "--data-dir", data.to_str().unwrap(), sql]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn each_format_maps_onto_the_event_schema_and_names_what_it_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected = [
        ("cloudtrail", "cloudtrail.json", [2, 0, 1], "record 3: eventName is missing"),
        ("k8s", "k8s.jsonl", [3, 0, 1], "record 4: kind is \"EventList\", not \"Event\""),
        ("github", "github.jsonl", [2, 0, 1], "record 3: action is missing"),
        ("okta", "okta.jsonl", [2, 0, 1], "record 3: published is not a time: \"redacted\""),
        ("atlassian", "atlassian.json", [2, 0, 0], ""),
        ("ocsf", "ocsf.jsonl", [2, 0, 1], "record 3: class_uid is missing"),
        ("ndjson", "ndjson.jsonl", [2, 0, 2], "record 4: org_id \"globex\" is not \"acme\""),
    ];
    for (format, file, counts, reason) in expected {
        let (code, reports, stderr) = import(&data, format, Some("acme"), &[fixture(file)]);
        assert_eq!(reports.get(&fixture(file)), Some(&counts), "{format}: {reports:?} {stderr}");
        assert_eq!(code, if counts[2] > 0 { 2 } else { 0 }, "{format}: exit code");
        assert!(stderr.contains(reason), "{format}: {stderr}");
    }
    let (_, _, stderr) = import(&data, "ndjson", Some("acme"), &[fixture("ndjson.jsonl")]);
    assert!(stderr.contains("record 3: actor_id"), "validation names the field: {stderr}");

    // Importing again stores nothing twice.
    let (code, reports, _) = import(&data, "cloudtrail", Some("acme"), &[fixture("cloudtrail.json")]);
    assert_eq!((code, reports[&fixture("cloudtrail.json")]), (2, [2, 2, 1]));

    let rows = query(
        &data,
        "select action, actor_id, actor_type, outcome, content_id, container_id, source_ip, location, product \
         from audit_events order by time, action",
    );
    let row =
        |action: &str| rows.iter().find(|r| r["action"] == action).unwrap_or_else(|| panic!("{action}: {rows:?}"));
    assert_eq!(rows.len(), 15);
    let bob = row("aws.s3.DeleteBucket");
    assert_eq!(bob["actor_id"], "arn:aws:sts::111122223333:assumed-role/Ops/bob");
    assert_eq!((&bob["outcome"], &bob["content_id"]), (&"failure".into(), &"arn:aws:s3:::payroll-exports".into()));
    assert_eq!((&bob["location"], &bob["container_id"]), (&"eu-west-1".into(), &"111122223333".into()));
    let exec = row("k8s.pods.exec.create");
    assert_eq!((&exec["actor_type"], &exec["outcome"]), (&"serviceaccount".into(), &"failure".into()));
    assert_eq!(row("github.repo.destroy")["content_id"], "acme-corp/payroll");
    assert_eq!(row("github.repo.destroy")["location"], "DE");
    let okta: Vec<&Value> = rows.iter().filter(|r| r["action"] == "okta.user.session.start").collect();
    assert_eq!(okta.iter().map(|r| r["outcome"].as_str().unwrap()).collect::<Vec<_>>(), ["failure", "success"]);
    assert_eq!(okta[0]["source_ip"], "92.55.146.245");
    assert_eq!(row("atlassian.user_granted_role")["content_id"], "557058:f3b7");
    assert_eq!(row("ocsf.authentication.Logon")["actor_id"], "AIDAIVAN");
    assert_eq!(row("ocsf.network_activity.Traffic")["actor_id"], "10.0.0.5", "no actor: the source endpoint");

    // The source event is kept whole, and the time is the source's.
    let kept =
        query(&data, "select time, attributes from audit_events where id = '3fcfb9ef-0d0a-4c43-9b4e-2c8a1d1c0002'");
    let source: Value = serde_json::from_str(kept[0]["attributes"].as_str().unwrap()).unwrap();
    assert_eq!(source["requestParameters"]["bucketName"], "payroll-exports");
    assert!(kept[0]["time"].as_str().unwrap().starts_with("2026-11-20T08:05:00"), "{kept:?}");
}

/// `../shared/samples`, where the real public samples are (CI has it).
fn samples() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/samples");
    dir.join("PROVENANCE.md").exists().then_some(dir)
}

/// Per file, an independent count in Python: `[records, events]`, where
/// records are the JSON documents (list elements, lines) and lines that are
/// not JSON, and events those that are events of the format as
/// PROVENANCE.md counts them.
fn independent_counts(files: &[String], format: &str) -> BTreeMap<String, [usize; 2]> {
    let script = r#"
import gzip, json, sys
fmt, files = sys.argv[1], sys.argv[2:]
out = {}
for f in files:
    if f.endswith('.parquet'):
        import duckdb
        rows = duckdb.execute(f"select count(*) from read_parquet('{f}')").fetchall()[0][0]
        out[f] = [rows, rows]
        continue
    text = (gzip.open if f.endswith('.gz') else open)(f, 'rt').read()
    try:
        doc = json.loads(text)
        items = [doc]
        if isinstance(doc, list):
            items = doc
        elif isinstance(doc, dict):
            for key in ('Records', 'items', 'data'):
                if key in doc:
                    items = doc[key] if isinstance(doc[key], list) else [doc[key]]
                    break
        records, parsed = len(items), items
    except ValueError:
        lines = [l for l in text.splitlines() if l.strip()]
        parsed = []
        for l in lines:
            try:
                parsed.append(json.loads(l))
            except ValueError:
                pass
        records = len(lines)
    events = [p for p in parsed if isinstance(p, dict) and (fmt != 'k8s' or p.get('kind') == 'Event')]
    out[f] = [records, len(events)]
print(json.dumps(out))
"#;
    // The venv's Python: it has DuckDB, which counts Parquet rows.
    let out =
        Command::new(crate::harness::venv_bin("python")).args(["-c", script, format]).args(files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else if [".json", ".jsonl", ".gz", ".parquet"].iter().any(|e| path.to_string_lossy().ends_with(e)) {
            files.push(path.to_string_lossy().into_owned());
        }
    }
    files.sort();
    files
}

#[test]
#[ignore = "tier 2: needs DuckDB from the venv (scripts/test.sh runs it)"]
fn the_public_samples_import_as_an_independent_parse_counts_them() {
    let Some(samples) = samples() else {
        eprintln!("../shared/samples is not beside the repository: only the fixtures were imported");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut stored = 0;
    for format in ["cloudtrail", "k8s", "github", "okta", "atlassian", "ocsf"] {
        let files = files_under(&samples.join(format));
        assert!(!files.is_empty(), "{format}: no sample files");
        let counts = independent_counts(&files, format);
        let (_, reports, stderr) = import(&data, format, Some(format), &files);
        assert_eq!(reports.len(), files.len(), "{format}: a report per file: {stderr}");
        for file in &files {
            let [imported, duplicates, rejected] = reports[file];
            let [records, events] = counts[file];
            assert_eq!(imported + rejected, records, "{file}: every record imported or rejected");
            assert!(imported <= events, "{file}: {imported} imported of {events} events");
            // Vendor files byte for byte (not abbreviated test fixtures): every event imports.
            if file.contains("security-lake-ocsf-validation")
                || file.contains("/falco/")
                || file.contains("go-atlassian")
            {
                assert_eq!(imported, events, "{file}: {stderr}");
            }
            stored += imported - duplicates;
        }
        let imported: usize = reports.values().map(|r| r[0]).sum();
        assert!(imported > 0, "{format}: nothing imported: {stderr}");
    }
    let total = query(&data, "select count(*) as n from audit_events");
    assert_eq!(total[0]["n"].as_u64(), Some(stored as u64), "every stored event once");
}
