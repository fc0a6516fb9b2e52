//! Tamper evidence: a log sealed with a signing key verifies `ok`, and each
//! kind of tampering an auditor must catch makes `auditlake verify` name it
//! and exit with 2.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use auditlake::integrity::{Integrity, SigningKey};
use auditlake::model::Event;
use auditlake::storage::packed;
use auditlake::storage::{Storage, StorageConfig, StorageError};
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader;
use serde_json::Value;

const SEGMENTS: usize = 3;
const EVENTS_PER_SEGMENT: usize = 600;

fn event(i: usize) -> Event {
    Event {
        time_us: 1_790_000_000_000_000 + i as i64 * 1_000_000,
        received_at_us: 1_790_000_000_000_000,
        id: format!("ev-{i}"),
        org_id: ["acme", "globex"][i % 2].into(),
        actor_id: format!("user-{}", i % 7),
        action: "confluence.page.viewed".into(),
        content_id: Some(format!("page-{}", i % 50)),
        content_title: Some(format!("Page {}", i % 50)),
        source_ip: Some("10.0.0.1".into()),
        ..Event::default()
    }
}

fn config(dir: &Path, key: Option<&Path>) -> StorageConfig {
    let witness = key.map(|key| {
        let key = Arc::new(SigningKey::load(key, dir).unwrap());
        Arc::new(Integrity::open(key, dir).unwrap()) as Arc<dyn auditlake::storage::SealWitness>
    });
    StorageConfig { witness, ..StorageConfig::new(dir) }
}

/// Opens the directory a storage of this test just shut down. Its `LOCK`
/// (flock) goes with the last descriptor of the file, and another test's
/// process being spawned in between (fork, then exec closes the copy) can
/// hold a copy for a moment: open again until the lock is free.
fn open(dir: &Path, key: Option<&Path>) -> Storage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Storage::open(config(dir, key)) {
            Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            opened => return opened.unwrap(),
        }
    }
}

/// Appends `segments` batches of events after `from`, sealing each.
fn seal_batches(storage: &Storage, from: usize, segments: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for s in 0..segments {
        let start = from + s * EVENTS_PER_SEGMENT;
        runtime.block_on(storage.append((start..start + EVENTS_PER_SEGMENT).map(event).collect())).unwrap();
        storage.seal_now().unwrap().expect("a segment");
    }
}

/// A key outside any data directory, and a data directory of three sealed,
/// checkpointed segments.
fn sealed_log(root: &Path) -> (PathBuf, PathBuf) {
    let key = root.join("keys/signing.key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    SigningKey::create(&key).unwrap();
    let data = root.join("data");
    let storage = open(&data, Some(&key));
    seal_batches(&storage, 0, SEGMENTS);
    storage.shutdown();
    (data, key)
}

/// `auditlake verify`: its exit code and stdout.
fn verify(data: &Path, key: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["verify", "--data-dir"])
        .arg(data)
        .arg("--signing-key")
        .arg(key)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    eprintln!("verify {}: {}", data.display(), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout)
}

fn assert_tampered(data: &Path, key: &Path, expected: &[&str]) -> String {
    let (code, stdout) = verify(data, key);
    assert_eq!(code, Some(2), "verify must fail: {stdout}");
    for line in expected {
        assert!(stdout.contains(line), "expected {line:?} in:\n{stdout}");
    }
    stdout
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

fn manifest(data: &Path) -> Value {
    serde_json::from_slice(&fs::read(data.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(data: &Path, manifest: &Value) {
    fs::write(data.join("manifest.json"), serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
}

/// The file of the `n`th segment, and the rows in it (segment schema).
fn segment_rows(data: &Path, n: usize) -> (String, RecordBatch) {
    let file = manifest(data)["segments"][n]["file"].as_str().unwrap().to_string();
    let reader = ParquetRecordBatchReader::try_new(fs::File::open(data.join("segments").join(&file)).unwrap(), 8192);
    let batches: Vec<RecordBatch> = reader.unwrap().map(Result::unwrap).collect();
    (file.clone(), concat_batches(&packed::segment_schema(), &batches).unwrap())
}

/// What someone with write access to the files would do: replace a
/// segment's rows with `rows`, as plain Parquet, and fix up the manifest so
/// that the server would read the file.
fn replace_segment(data: &Path, n: usize, file: &str, rows: &RecordBatch) {
    let path = data.join("segments").join(file);
    let mut writer = ArrowWriter::try_new(fs::File::create(&path).unwrap(), packed::segment_schema(), None).unwrap();
    writer.write(rows).unwrap();
    writer.close().unwrap();
    let mut manifest = manifest(data);
    let segment = &mut manifest["segments"][n];
    segment["size_bytes"] = fs::metadata(&path).unwrap().len().into();
    segment["rows"] = rows.num_rows().into();
    segment.as_object_mut().unwrap().remove("content_index");
    segment.as_object_mut().unwrap().remove("actor_index");
    write_manifest(data, &manifest);
}

fn seqs(rows: &RecordBatch) -> Vec<i64> {
    rows.column_by_name("seq").unwrap().as_primitive::<Int64Type>().values().to_vec()
}

/// `rows` with the `column` value of row `at` replaced by `value`.
fn with_value(rows: &RecordBatch, column: &str, at: usize, value: &str) -> RecordBatch {
    let index = rows.schema().index_of(column).unwrap();
    let old = rows.column(index).as_string::<i32>();
    let new: StringArray =
        (0..old.len()).map(|i| if i == at { Some(value) } else { old.is_valid(i).then(|| old.value(i)) }).collect();
    let mut columns = rows.columns().to_vec();
    columns[index] = Arc::new(new);
    RecordBatch::try_new(rows.schema(), columns).unwrap()
}

fn reorder(rows: &RecordBatch, order: Vec<u32>) -> RecordBatch {
    take_record_batch(rows, &datafusion::arrow::array::UInt32Array::from(order)).unwrap()
}

#[test]
fn a_sealed_log_verifies_and_a_key_given_later_checkpoints_what_came_before() {
    let root = tempfile::tempdir().unwrap();
    let (data, key) = sealed_log(root.path());
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));
    let lines = fs::read_to_string(data.join("integrity/checkpoints.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), SEGMENTS, "one checkpoint per seal");

    // Sealed without a key, then opened with one: the gap is checkpointed
    // from the segments at start, and the chain goes on from there.
    for (key, from, segments) in [(None, SEGMENTS, 2), (Some(key.as_path()), SEGMENTS + 2, 1)] {
        let storage = open(&data, key);
        seal_batches(&storage, from * EVENTS_PER_SEGMENT, segments);
        storage.shutdown();
    }
    let lines = fs::read_to_string(data.join("integrity/checkpoints.jsonl")).unwrap();
    let last: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(lines.lines().count(), SEGMENTS + 3);
    assert_eq!((last["index"].as_u64(), last["last_seq"].as_u64()), (Some(5), Some(3600)));
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));

    // Another key vouches for nothing here.
    let other = root.path().join("keys/other.key");
    SigningKey::create(&other).unwrap();
    assert_tampered(&data, &other, &["bad signature: checkpoint 0 (line 1, seqs 1..=600) is not signed by key"]);
}

#[test]
fn each_kind_of_tampering_is_detected_and_named() {
    let root = tempfile::tempdir().unwrap();
    let (pristine, key) = sealed_log(root.path());
    let case = |name: &str| {
        let dir = root.path().join(name);
        copy_dir(&pristine, &dir);
        dir
    };

    // A value edited inside a Parquet file: the block holding it is named.
    let data = case("edited");
    let (file, rows) = segment_rows(&data, 1);
    let at = 100;
    let seq = seqs(&rows)[at];
    replace_segment(&data, 1, &file, &with_value(&rows, "action", at, "confluence.page.exported"));
    let block_start = 601 + (seq - 601) / 256 * 256;
    let block_end = (block_start + 255).min(1200);
    let stdout = assert_tampered(
        &data,
        &key,
        &[&format!(
            "modified: an event among seqs {block_start}..={block_end} (segment {file}) differs from checkpoint 1"
        )],
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("modified")).count(), 1, "{stdout}");

    // UGC edited is caught as well: it enters through its digest.
    let data = case("edited-ugc");
    let (file, rows) = segment_rows(&data, 0);
    replace_segment(&data, 0, &file, &with_value(&rows, "content_title", 3, "Nothing to see"));
    assert_tampered(&data, &key, &["modified: an event among seqs", "differs from checkpoint 0"]);

    // A row deleted: its seq is named.
    let data = case("deleted");
    let (file, rows) = segment_rows(&data, 2);
    let gone = seqs(&rows)[42];
    let kept: Vec<u32> = (0..rows.num_rows() as u32).filter(|&i| i != 42).collect();
    replace_segment(&data, 2, &file, &reorder(&rows, kept));
    assert_tampered(&data, &key, &[&format!("missing: segment {file} lacks seqs {gone}..={gone}")]);

    // Two rows swapped.
    let data = case("swapped");
    let (file, rows) = segment_rows(&data, 1);
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.swap(10, 11);
    let (a, b) = (seqs(&rows)[10], seqs(&rows)[11]);
    replace_segment(&data, 1, &file, &reorder(&rows, order));
    assert_tampered(
        &data,
        &key,
        &[&format!(
            "reordered: segment {file}: the row of seq {a} comes after the row of seq {b}, out of segment order"
        )],
    );

    // A segment dropped, file and manifest entry.
    let data = case("dropped");
    let mut m = manifest(&data);
    let file = m["segments"][1]["file"].as_str().unwrap().to_string();
    m["segments"].as_array_mut().unwrap().remove(1);
    write_manifest(&data, &m);
    fs::remove_file(data.join("segments").join(&file)).unwrap();
    assert_tampered(&data, &key, &["missing: no segment holds seqs 601..=1200 (the manifest lists none)"]);

    // A segment file deleted behind the manifest's back.
    let data = case("file-gone");
    let file = manifest(&data)["segments"][2]["file"].as_str().unwrap().to_string();
    fs::remove_file(data.join("segments").join(&file)).unwrap();
    assert_tampered(&data, &key, &[&format!("missing: segment file {file} (seqs 1201..=1800) is gone")]);

    // The manifest replaced by an older one, without the last segment.
    let data = case("old-manifest");
    let mut m = manifest(&data);
    m["segments"].as_array_mut().unwrap().pop();
    m["sealed_seq"] = 1200.into();
    write_manifest(&data, &m);
    assert_tampered(
        &data,
        &key,
        &["missing: the manifest says seqs up to 1200 are sealed, but checkpoints cover up to 1800"],
    );

    // A checkpoint forged: its root changed; the chain after it breaks too.
    let data = case("forged");
    let path = data.join("integrity/checkpoints.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines[1]["root"] = "00".repeat(32).into();
    let forged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    fs::write(&path, forged.join("\n") + "\n").unwrap();
    assert_tampered(
        &data,
        &key,
        &[
            "bad signature: checkpoint 1 (line 2, seqs 601..=1200) is not signed by key",
            "broken chain: checkpoint 2 (line 3) does not follow checkpoint 1",
        ],
    );

    // A checkpoint dropped from the middle of the log.
    let data = case("cut");
    let path = data.join("integrity/checkpoints.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l).collect();
    fs::write(&path, kept.join("\n") + "\n").unwrap();
    assert_tampered(&data, &key, &["broken chain: checkpoint 2 (line 2) does not follow checkpoint 0"]);

    // A row added under a seq the segment already holds.
    let data = case("extra");
    let (file, rows) = segment_rows(&data, 0);
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.insert(1, 0);
    let dup = seqs(&rows)[0];
    replace_segment(&data, 0, &file, &reorder(&rows, order));
    assert_tampered(&data, &key, &[&format!("extra: segment {file} holds seq {dup} more than once")]);

    // A content or actor index that still parses but names other rows.
    for (index, what) in [("content_index", "content"), ("actor_index", "actor")] {
        let data = case(index);
        let segment = &manifest(&data)["segments"][0];
        let file = segment["file"].as_str().unwrap().to_string();
        let end = segment[index]["offset"].as_u64().unwrap() + segment[index]["length"].as_u64().unwrap();
        let path = data.join("segments").join(&file);
        let mut bytes = fs::read(&path).unwrap();
        bytes[end as usize - 1] ^= 1;
        fs::write(&path, bytes).unwrap();
        let stdout = assert_tampered(
            &data,
            &key,
            &[&format!("modified: segment {file}: its {what} index is not the one its rows make")],
        );
        assert_eq!(stdout.lines().count(), 2, "the events themselves are intact: {stdout}");
    }

    // The manifest's runs of organisations moved: filters by org_id (which
    // read an organisation's run exactly) would select another's rows.
    let data = case("org-runs");
    let mut m = manifest(&data);
    let orgs = m["segments"][0]["orgs"].as_array_mut().expect("the segment lists its organisations");
    assert_eq!(orgs.len(), 2, "{orgs:?}");
    let (first, second) = (orgs[0][1].as_u64().unwrap(), orgs[1][1].as_u64().unwrap());
    (orgs[0][1], orgs[1][1]) = ((first + 1).into(), (second - 1).into());
    let file = m["segments"][0]["file"].as_str().unwrap().to_string();
    write_manifest(&data, &m);
    assert_tampered(
        &data,
        &key,
        &[&format!("modified: segment {file}: the manifest's rows per organisation are not the ones its rows make")],
    );

    // And the untouched copy still verifies.
    let (code, stdout) = verify(&pristine, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));
}

fn cli(args: &[&str], data: &Path, key: Option<&Path>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditlake"));
    command.args(args).arg("--data-dir").arg(data);
    if let Some(key) = key {
        command.arg("--signing-key").arg(key);
    }
    let out = command.output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn query(data: &Path, sql: &str) -> String {
    let (ok, stdout, stderr) = cli(&["query", "--format", "csv", sql], data, None);
    assert!(ok, "{sql}: {stderr}");
    stdout
}

#[test]
fn erasing_an_actors_ugc_and_rewriting_an_org_keep_the_log_verifying() {
    let root = tempfile::tempdir().unwrap();
    let (data, key) = sealed_log(root.path());
    let ugc_of = |actor: &str| {
        query(
            &data,
            &format!(
                "select count(*) as n from audit_events where org_id = 'acme' and actor_id = '{actor}' and content_title is not null"
            ),
        )
    };
    assert_eq!(ugc_of("user-3"), "n\n128\n");

    // Refused without the key: the changed rows could not keep their digests.
    let (ok, _, stderr) = cli(&["org", "erase", "acme", "--actor", "user-3"], &data, None);
    assert!(!ok && stderr.contains("is checkpointed: give --signing-key"), "{stderr}");
    assert_eq!(ugc_of("user-3"), "n\n128\n", "nothing changed");

    let (ok, stdout, stderr) = cli(&["org", "erase", "acme", "--actor", "user-3"], &data, Some(&key));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("acme: UGC of actor user-3 erased"), "{stdout}");
    assert_eq!(ugc_of("user-3"), "n\n0\n");
    assert_eq!(ugc_of("user-4"), "n\n129\n", "other actors keep theirs");
    assert_eq!(
        query(&data, "select count(*) as n from audit_events where actor_id = 'user-3' and content_id is not null"),
        "n\n129\n",
        "globex's user-3 is another person"
    );
    let erased = query(&data, "select actor_type, attributes from audit_events where action = 'auditlake.ugc.erased'");
    assert!(erased.contains("operator,") && erased.contains(r#"""erased_actor"":""user-3"""#), "{erased}");
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));

    // A whole organisation rewritten to a stricter policy verifies too.
    let (ok, _, stderr) = cli(&["org", "policy", "globex", "--ugc", "drop"], &data, None);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&["org", "rewrite", "globex"], &data, Some(&key));
    assert!(ok, "{stderr}");
    assert_eq!(query(&data, "select count(content_id) as n from audit_events where org_id = 'globex'"), "n\n0\n");
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));

    // The digests a rewrite keeps are covered like any value.
    let (file, rows) = segment_rows(&data, 0);
    let digests = rows.column_by_name("ugc_digest").unwrap();
    let at = (0..rows.num_rows()).find(|&i| digests.is_valid(i)).expect("a kept digest");
    let mut forged = digests.as_fixed_size_binary().iter().map(|d| d.map(<[u8]>::to_vec)).collect::<Vec<_>>();
    forged[at] = Some(vec![0; 32]);
    let forged = datafusion::arrow::array::FixedSizeBinaryArray::try_from_sparse_iter_with_size(forged.into_iter(), 32);
    let mut columns = rows.columns().to_vec();
    columns[rows.schema().index_of("ugc_digest").unwrap()] = Arc::new(forged.unwrap());
    let index = manifest(&data)["segments"].as_array().unwrap().iter().position(|s| s["file"] == file.as_str());
    replace_segment(&data, index.unwrap(), &file, &RecordBatch::try_new(rows.schema(), columns).unwrap());
    assert_tampered(&data, &key, &["modified: an event among seqs"]);
}

#[test]
fn retention_removes_old_events_unless_on_hold_and_verify_tells_it_from_tampering() {
    let root = tempfile::tempdir().unwrap();
    let (data, key) = sealed_log(root.path());
    let acme = "select count(*) as n from audit_events where org_id = 'acme'";
    // The events are about two months old.
    let policy = |args: &[&str]| {
        let (ok, stdout, stderr) = cli(&[&["org", "policy", "acme"], args].concat(), &data, None);
        assert!(ok, "{stderr}");
        stdout
    };
    assert!(policy(&["--retention-days", "30", "--legal-hold", "on"]).contains("retention=30d\tlegal_hold=on"));

    // Without the key, nothing may be removed from a checkpointed directory.
    let (ok, _, stderr) = cli(&["org", "expire"], &data, None);
    assert!(!ok && stderr.contains("give --signing-key"), "{stderr}");
    // On hold: nothing removed, nothing erased, whatever the retention.
    let (ok, stdout, stderr) = cli(&["org", "expire"], &data, Some(&key));
    assert!(ok && stdout.starts_with("0 event(s) removed"), "{stdout}{stderr}");
    let (ok, _, stderr) = cli(&["org", "erase", "acme", "--actor", "user-3"], &data, Some(&key));
    assert!(!ok && stderr.contains("is under legal hold"), "{stderr}");
    assert_eq!(query(&data, acme), "n\n900\n");

    policy(&["--legal-hold", "off"]);
    let mut untouched = root.path().join("before-expiry");
    copy_dir(&data, &untouched);
    let (ok, stdout, stderr) = cli(&["org", "expire"], &data, Some(&key));
    assert!(ok && stdout.starts_with("900 event(s) removed"), "{stdout}{stderr}");
    assert_eq!(query(&data, acme), "n\n0\n");
    assert_eq!(query(&data, "select count(*) as n from audit_events where org_id = 'globex'"), "n\n900\n");
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"), "removals by policy are not tampering");

    // What retention did not remove is still covered: a globex row deleted
    // by hand is missing.
    let tampered = root.path().join("after-expiry");
    copy_dir(&data, &tampered);
    let (file, rows) = segment_rows(&tampered, 1);
    let gone = seqs(&rows)[0];
    replace_segment(&tampered, 1, &file, &reorder(&rows, (1..rows.num_rows() as u32).collect()));
    assert_tampered(&tampered, &key, &[&format!("missing: segment {file} lacks seqs {gone}..={gone}")]);
    // And a removal record changed after signing is caught.
    let removals = data.join("integrity/removals");
    let record = fs::read_dir(&removals).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&record).unwrap();
    bytes[10] ^= 1;
    fs::write(&record, bytes).unwrap();
    assert_tampered(&data, &key, &["modified: removal record of checkpoint"]);

    // A server applies retention on its own, with the same record.
    untouched = {
        let (ok, _, stderr) = cli(&["org", "policy", "acme", "--retention-days", "30"], &untouched, None);
        assert!(ok, "{stderr}");
        untouched
    };
    let key_arg = key.to_str().unwrap();
    let server = crate::harness::Server::start(
        &untouched,
        &["--signing-key", key_arg, "--retention-interval-ms", "200", "--insecure-trust-loopback"],
    );
    let left = server.sql_until(&format!("{acme} and category is distinct from 'audit_access'"), "0\n");
    assert_eq!(left, "0\n", "see {}", untouched.with_extension("log").display());
    server.kill();
    let (code, stdout) = verify(&untouched, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));
}

/// `scripts/verify_proof.py` on a proof: whether it accepted it, and what it said.
fn check_proof(dir: &Path, proof: &Value, extra: &[&std::ffi::OsStr]) -> (bool, String) {
    let path = dir.join("proof.json");
    fs::write(&path, proof.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_proof.py");
    let out = Command::new(crate::harness::venv_bin("python")).arg(script).arg(&path).args(extra).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
#[ignore = "tier 2: needs Python from the venv (scripts/test.sh runs it)"]
async fn an_events_inclusion_proof_verifies_with_the_standard_library_script() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("keys/signing.key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    SigningKey::create(&key).unwrap();
    let data = root.path().join("data");
    let key_arg = key.to_str().unwrap();
    let server = crate::harness::Server::start(&data, &["--signing-key", key_arg, "--seal-after-ms", "100"]);
    let events: Vec<String> = (0..300)
        .map(|i| {
            let mut e = crate::harness::event(
                &format!("e-{i}"),
                ["acme", "globex"][i % 2],
                "alice",
                "jira.issue.viewed",
                i as i64,
            );
            e["content_title"] = format!("Ünïcode title {i}").into();
            e.to_string()
        })
        .collect();
    let (status, body) = crate::harness::post(&server.http(), &server.events_url(), events.join("\n")).await;
    assert_eq!(status, 200, "{body}");

    let reader = crate::harness::bearer_client(&crate::harness::create_token(&data, &["--any-org", "--scope", "read"]));
    let url = format!("{}/v1/orgs/acme/events/e-42/proof", server.http_url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let proof: Value = loop {
        let response = reader.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == 200 || std::time::Instant::now() > deadline {
            assert_eq!(status, 200, "{body}");
            break body;
        }
        assert_eq!(status, 409, "not yet checkpointed is a conflict: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(proof["event"]["id"], "e-42");
    assert_eq!(proof["leaf"]["fields"]["org_id"], "acme");
    let status = reader.get(format!("{}/v1/orgs/globex/events/e-42/proof", server.http_url)).send().await;
    assert_eq!(status.unwrap().status().as_u16(), 404, "e-42 is acme's");
    server.kill();

    // Checked against the checkpoint line an auditor holds and the public key.
    let published = root.path().join("published.json");
    let lines = fs::read_to_string(data.join("integrity/checkpoints.jsonl")).unwrap();
    let line = lines.lines().find(|l| l.contains(&format!("\"index\":{}", proof["checkpoint"]["index"]))).unwrap();
    fs::write(&published, line).unwrap();
    let public = root.path().join("keys/signing.key.pub");
    let trusted =
        [std::ffi::OsStr::new("--checkpoint"), published.as_os_str(), "--public-key".as_ref(), public.as_os_str()];
    let (ok, said) = check_proof(root.path(), &proof, &trusted);
    assert!(ok && said.starts_with("ok: event seq"), "{said}");

    let mut edited = proof.clone();
    edited["leaf"]["fields"]["action"] = "jira.issue.deleted".into();
    let (ok, said) = check_proof(root.path(), &edited, &trusted);
    assert!(!ok && said.contains("does not lead to the root of checkpoint"), "{said}");
    let mut forged = proof.clone();
    forged["checkpoint"]["root"] = "00".repeat(32).into();
    let (ok, said) = check_proof(root.path(), &forged, &[]);
    assert!(!ok && said.contains("signature of checkpoint"), "{said}");
    let (ok, said) = check_proof(root.path(), &forged, &trusted);
    assert!(!ok && said.contains("not the one trusted"), "{said}");
    let other = root.path().join("keys/other.key");
    SigningKey::create(&other).unwrap();
    let other_public = root.path().join("keys/other.key.pub");
    let (ok, said) = check_proof(root.path(), &proof, &["--public-key".as_ref(), other_public.as_os_str()]);
    assert!(!ok && said.contains("is signed by"), "{said}");
}

#[test]
fn events_removed_before_a_directory_was_checkpointed_are_recorded_as_absent() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("keys/signing.key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    SigningKey::create(&key).unwrap();
    let data = root.path().join("data");
    let storage = open(&data, None);
    seal_batches(&storage, 0, 2);
    storage.shutdown();
    drop(storage);
    // Retention without a key, in a directory not checkpointed yet: allowed,
    // and nothing records what it removed.
    let (ok, _, stderr) = cli(&["org", "policy", "acme", "--retention-days", "30"], &data, None);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = cli(&["org", "expire"], &data, None);
    assert!(ok && stdout.starts_with("600 event(s) removed"), "{stdout}{stderr}");

    // The key arrives: the gaps are recorded as absent, the rest checkpointed.
    let storage = open(&data, Some(&key));
    seal_batches(&storage, 2 * EVENTS_PER_SEGMENT, 1);
    storage.shutdown();
    drop(storage);
    let lines: Vec<Value> = fs::read_to_string(data.join("integrity/checkpoints.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["removal", "removal", "events", "events", "events"], "{lines:?}");
    assert_eq!(lines[0]["removal"]["org"], "*");
    assert_eq!(lines[0]["removal"]["count"], 300);
    let (code, stdout) = verify(&data, &key);
    assert_eq!((code, stdout.trim()), (Some(0), "ok"));
}

fn checkpoint_lines(data: &Path) -> Vec<String> {
    fs::read_to_string(data.join("integrity/checkpoints.jsonl")).unwrap().lines().map(String::from).collect()
}

#[test]
fn events_missing_from_a_checkpointed_directory_are_not_signed_away_as_removed() {
    let root = tempfile::tempdir().unwrap();
    let (data, key) = sealed_log(root.path());
    // A range whose checkpoint did not happen (here: sealed without the key).
    let storage = open(&data, None);
    seal_batches(&storage, SEGMENTS * EVENTS_PER_SEGMENT, 1);
    storage.shutdown();
    drop(storage);
    let signed = checkpoint_lines(&data);
    // Someone deletes one event of it before the catch-up.
    let (file, rows) = segment_rows(&data, SEGMENTS);
    let gone = seqs(&rows)[17];
    let kept: Vec<u32> = (0..rows.num_rows() as u32).filter(|i| *i != 17).collect();
    replace_segment(&data, SEGMENTS, &file, &reorder(&rows, kept));

    let storage = open(&data, Some(&key));
    let health = storage.health();
    storage.shutdown();
    drop(storage);
    assert!(
        health.len() == 1
            && health[0].starts_with("checkpointing fails")
            && health[0].contains(&format!("(the first {gone}) are neither in segment")),
        "{health:?}"
    );
    assert_eq!(checkpoint_lines(&data), signed, "nothing signed, no removal invented");
}
