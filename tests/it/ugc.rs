//! Per-organisation UGC policy, checked on the bytes on disk: what an
//! organisation hashes or drops is in no WAL file and no segment, and
//! `ugc_hash()` still finds its events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

use crate::harness::{Server, bearer_client, create_token, event, post, run_cli};

/// UGC values made to be found: each names its organisation.
fn ugc(org: &str) -> [String; 4] {
    ["PAGE", "TITLE", "SPACE", "ATTR"].map(|what| format!("{what}-of-{org}-7f3a9c"))
}

fn ugc_event(id: &str, org: &str) -> Value {
    let [page, title, space, attr] = ugc(org);
    let mut e = event(id, org, "u1", "confluence.page.viewed", 0);
    e["content_id"] = json!(page);
    e["content_title"] = json!(title);
    e["container_id"] = json!(space);
    e["attributes"] = json!({"title": attr, "kept": "visible-attribute"});
    e
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

/// The raw bytes of every file, and every text value of every segment
/// decoded (segment pages are compressed, so raw bytes alone prove little).
fn on_disk(data: &Path) -> (Vec<u8>, Vec<String>) {
    let mut raw = Vec::new();
    let mut values = Vec::new();
    for path in files(&data.join("wal")).into_iter().chain(files(&data.join("segments"))) {
        raw.extend(std::fs::read(&path).unwrap());
        if path.extension().is_some_and(|e| e == "parquet") {
            let file = std::fs::File::open(&path).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
                let batch = batch.unwrap();
                for column in batch.columns().iter().filter(|c| c.data_type() == &DataType::Utf8) {
                    let text = column.as_string::<i32>();
                    values.extend((0..text.len()).filter(|&i| text.is_valid(i)).map(|i| text.value(i).to_string()));
                }
            }
        }
    }
    (raw, values)
}

fn setup(data: &Path, key: &Path) {
    run_cli(&["keygen", "--ugc-key", key.to_str().unwrap()]);
    let dir = ["--data-dir", data.to_str().unwrap()];
    run_cli(&[&["org", "policy", "acme", "--ugc", "hash", "--attribute-key", "title"][..], &dir].concat());
    run_cli(&[&["org", "policy", "globex", "--ugc", "drop", "--attribute-key", "title"][..], &dir].concat());
}

#[tokio::test]
async fn hashed_and_dropped_ugc_is_in_no_wal_or_segment_byte_and_ugc_hash_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key) = (dir.path().join("data"), dir.path().join("ugc.key"));
    std::fs::create_dir_all(&data).unwrap();
    setup(&data, &key);
    let key_flag = ["--ugc-key-file", key.to_str().unwrap()];
    let server = Server::start(&data, &key_flag);
    let body: String = ["acme", "globex", "initech"]
        .iter()
        .flat_map(|org| (0..3).map(move |i| ugc_event(&format!("{org}-{i}"), org).to_string() + "\n"))
        .collect();
    let (status, answer) = post(&server.http(), &server.events_url(), body).await;
    assert_eq!((status, &answer["stored"]), (200, &json!(9)), "{answer}");

    // In the WAL: initech stores UGC, so its values are there to be found.
    let (raw, _) = on_disk(&data);
    for value in ugc("initech") {
        assert!(contains(&raw, &value), "{value} (stored as sent) is in the WAL");
    }
    for value in ugc("acme").iter().chain(&ugc("globex")) {
        assert!(!contains(&raw, value), "{value} reached the WAL");
    }
    assert!(contains(&raw, "visible-attribute"), "attributes not named by the policy are kept");

    // Over SQL: hashed values match ugc_hash, dropped ones are NULL.
    let pg = server.pg().await;
    let rows = pg
        .query(
            "select org_id, count(*) filter (where content_id = ugc_hash($1, org_id)), \
             count(content_title), count(container_id), min(attributes->>'title') = ugc_hash($2, org_id) \
             from audit_events where action = 'confluence.page.viewed' group by org_id order by org_id",
            &[&"PAGE-of-acme-7f3a9c", &"ATTR-of-acme-7f3a9c"],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, i64, i64, Option<bool>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(
        got,
        vec![
            ("acme".into(), 3, 3, 3, Some(true)),
            ("globex".into(), 0, 0, 0, None),
            ("initech".into(), 0, 3, 3, Some(false)),
        ]
    );

    // The export API takes the value as the application knows it.
    let reader = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let url = format!("{}/v1/orgs/acme/events?content=PAGE-of-acme-7f3a9c", server.http_url);
    let page: Value = reader.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(3), "{page}");
    // So does the search language's `content:`, negated too.
    let events = format!("{}/v1/orgs/acme/events", server.http_url);
    let found = |search: &str| {
        let url = reqwest::Url::parse_with_params(&events, [("search", search)]).unwrap();
        let reader = reader.clone();
        async move {
            let page: Value = reader.get(url).send().await.unwrap().json().await.unwrap();
            page["events"].as_array().map(Vec::len).unwrap_or_else(|| panic!("{page}"))
        }
    };
    let mut other = event("acme-other", "acme", "u2", "confluence.page.viewed", 5);
    other["content_id"] = json!("PAGE-of-acme-other");
    assert_eq!(post(&server.http(), &server.events_url(), other.to_string()).await.0, 200);
    assert_eq!(found("content:PAGE-of-acme-7f3a9c").await, 3);
    assert_eq!(found("-content:PAGE-of-acme-7f3a9c").await, 1);
    assert_eq!(found("content:PAGE-of-acme-other").await, 1);

    // An organisation's own user hashes with its own key, and no other.
    crate::harness::add_user(&data, "acme-analyst", &["--org", "acme"]);
    let acme = server.pg_as("acme-analyst").await.unwrap();
    let viewed = acme
        .query_one("select count(*) from audit_events where content_id = ugc_hash('PAGE-of-acme-7f3a9c')", &[])
        .await
        .unwrap();
    assert_eq!(viewed.get::<_, i64>(0), 3);
    let message = |e: tokio_postgres::Error| e.as_db_error().map_or(e.to_string(), |d| d.message().to_string());
    let other = message(acme.query_one("select ugc_hash('x', 'globex')", &[]).await.unwrap_err());
    assert!(other.contains("permission denied"), "{other}");
    let admin_without_org = message(pg.query_one("select ugc_hash('x')", &[]).await.unwrap_err());
    assert!(admin_without_org.contains("ugc_hash(value, org)"), "{admin_without_org}");

    // The log's own record of that search keeps the statement, not the value.
    let recorded = "select attributes->>'sql' from audit_events where category = 'audit_access' \
                    and actor_id = 'acme-analyst' and attributes->>'sql' like '%ugc_hash(%'";
    let mut statements = Vec::new();
    for _ in 0..100 {
        statements = pg.query(recorded, &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect();
        if !statements.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hashed = pg.query_one("select ugc_hash('PAGE-of-acme-7f3a9c', 'acme')", &[]).await.unwrap().get::<_, String>(0);
    assert!(statements.iter().any(|sql| sql.contains(&hashed)), "{statements:?}");
    assert!(!statements.iter().any(|sql| sql.contains("PAGE-of-acme")), "{statements:?}");

    // Sealed: the segment holds neither, decoded or raw.
    server.kill();
    let server = Server::start(&data, &[&key_flag[..], &["--seal-after-ms", "100"]].concat());
    let health = server.http_url.clone() + "/healthz";
    for _ in 0..200 {
        let h: Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
        if h["buffered_rows"] == 0 && h["segments"].as_u64() > Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (raw, values) = on_disk(&data);
    assert!(values.iter().any(|v| ugc("initech").contains(v)), "initech's values are in the segment");
    for value in ugc("acme").iter().chain(&ugc("globex")) {
        assert!(!contains(&raw, value), "{value} is in the raw files");
        assert!(!values.iter().any(|v| v.contains(value.as_str())), "{value} is in a segment");
    }
    let pg = server.pg().await;
    let found = pg
        .query_one("select count(*) from audit_events where content_id = ugc_hash('PAGE-of-acme-7f3a9c', 'acme')", &[])
        .await
        .unwrap();
    assert_eq!(found.get::<_, i64>(0), 3, "the hash survives sealing");
}

#[tokio::test]
async fn policies_are_set_over_http_by_admin_tokens_of_the_organisation() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key) = (dir.path().join("data"), dir.path().join("ugc.key"));
    std::fs::create_dir_all(&data).unwrap();
    run_cli(&["keygen", "--ugc-key", key.to_str().unwrap()]);
    let admin_token = create_token(&data, &["--org", "acme", "--scope", "admin"]);
    let admin = bearer_client(&admin_token);
    let reader = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let server = Server::start(&data, &["--ugc-key-file", key.to_str().unwrap()]);
    let url = |server: &Server, org: &str| format!("{}/v1/orgs/{org}/policy", server.http_url);
    let put = |client: &reqwest::Client, org: &str, body: Value| client.put(url(&server, org)).json(&body).send();

    let answer = admin.get(url(&server, "acme")).send().await.unwrap();
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"org": "acme", "ugc": "store", "ugc_attribute_keys": [], "embed_origins": []})
    );
    let answer = put(&admin, "acme", json!({"ugc": "drop", "ugc_attribute_keys": ["title"]})).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(put(&admin, "globex", json!({"ugc": "drop"})).await.unwrap().status(), 403, "another org");
    assert_eq!(put(&reader, "acme", json!({"ugc": "store"})).await.unwrap().status(), 403, "read scope");
    let bad = put(&admin, "acme", json!({"ugc": "shred"})).await.unwrap();
    assert_eq!(bad.status(), 400);

    // The next batch is already under the new policy.
    let mut e = event("x1", "acme", "u1", "page.viewed", 0);
    e["content_title"] = json!("Secret plan");
    let (status, _) = post(&server.http(), &server.events_url(), e.to_string()).await;
    assert_eq!(status, 200);
    let row = server.pg().await.query_one("select content_title from audit_events where id = 'x1'", &[]).await.unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    // The change is on record, with the token that made it.
    let token_id = admin_token.split('_').nth(1).unwrap();
    let changed = server
        .pg()
        .await
        .query(
            "select actor_id, attributes->>'ugc' from audit_events where action = 'audit_log.policy_changed' and org_id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    let changed: Vec<(String, String)> = changed.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(changed, [(format!("token:{token_id}"), "drop".to_string())]);
    let shown = run_cli(&["org", "policy", "acme", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(shown.trim(), "acme\tugc=drop\tattribute_keys=title\tretention=forever\tlegal_hold=off\tembed_origins=");
    server.kill();

    // Without a key, hashing cannot be chosen, and a server refuses to start
    // on a directory where an organisation hashes.
    let keyless = Server::start(&data, &[]);
    let refused = admin.put(url(&keyless, "acme")).json(&json!({"ugc": "hash"})).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    keyless.kill();
    run_cli(&["org", "policy", "acme", "--ugc", "hash", "--data-dir", data.to_str().unwrap()]);
    let err = Server::try_start_with_env(&data, &[], &[]).err().expect("refused");
    assert!(err.contains("--ugc-key-file"), "{err}");
}

#[tokio::test]
async fn a_stricter_policy_rewrites_what_was_stored_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key) = (dir.path().join("data"), dir.path().join("ugc.key"));
    std::fs::create_dir_all(&data).unwrap();
    run_cli(&["keygen", "--ugc-key", key.to_str().unwrap()]);
    let key_flag = ["--ugc-key-file", key.to_str().unwrap()];
    let data_flag = ["--data-dir", data.to_str().unwrap()];

    // Stored as sent, some sealed into a segment and some still in the WAL.
    let server = Server::start(&data, &key_flag);
    let send = |ids: std::ops::Range<usize>, org: &'static str| {
        ids.map(move |i| ugc_event(&format!("{org}-{i}"), org).to_string() + "\n").collect::<String>()
    };
    let (status, _) = post(&server.http(), &server.events_url(), send(0..3, "acme") + &send(0..3, "initech")).await;
    assert_eq!(status, 200);
    server.kill();
    let server = Server::start(&data, &[&key_flag[..], &["--seal-after-ms", "100"]].concat());
    let health = server.http_url.clone() + "/healthz";
    while reqwest::get(&health).await.unwrap().json::<Value>().await.unwrap()["buffered_rows"] != 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    let server = Server::start(&data, &key_flag);
    let (status, _) = post(&server.http(), &server.events_url(), send(3..5, "acme")).await;
    assert_eq!(status, 200);
    server.kill();
    let (raw, values) = on_disk(&data);
    assert!(contains(&raw, &ugc("acme")[0]) && values.contains(&ugc("acme")[0]), "stored as sent, WAL and segment");

    // Hash from now on, then rewrite what is there.
    run_cli(&[&["org", "policy", "acme", "--ugc", "hash", "--attribute-key", "title"][..], &data_flag].concat());
    let server = Server::start(&data, &key_flag);
    let (status, _) = post(&server.http(), &server.events_url(), send(5..6, "acme")).await;
    assert_eq!(status, 200);
    server.kill();
    let out = run_cli(&[&["org", "rewrite", "acme"][..], &key_flag, &data_flag].concat());
    assert!(out.contains("rewritten"), "{out}");
    let (raw, values) = on_disk(&data);
    for value in ugc("acme") {
        assert!(!contains(&raw, &value), "{value} is still on disk");
        assert!(!values.iter().any(|v| v.contains(value.as_str())), "{value} is still in a segment");
    }
    assert!(values.iter().any(|v| ugc("initech").contains(v)), "other organisations are untouched");

    // Every event is still there once, and hashed once: rows that arrived
    // under the policy were not hashed again.
    let server = Server::start(&data, &key_flag);
    let row = server
        .pg()
        .await
        .query_one(
            "select count(*), count(distinct id), count(*) filter (where content_id = ugc_hash('PAGE-of-acme-7f3a9c', 'acme')), \
             count(*) filter (where action = 'auditlake.org.rewritten' and attributes->>'ugc' = 'hash') \
             from audit_events where org_id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    // The six events, and the rewrite's own record.
    let counts: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert_eq!(counts, [7, 7, 6, 1]);
}

#[test]
fn a_retention_no_year_count_can_mean_is_refused_where_it_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Someone meaning "keep for ever": it once overflowed into a cutoff in
    // the future, and retention removed every event of the organisation.
    let (ok, stderr) = crate::harness::run_cli_status(&[
        "org",
        "policy",
        "acme",
        "--retention-days",
        "4000000000",
        "--data-dir",
        data,
    ]);
    assert!(!ok && stderr.contains("4000000000") && stderr.contains("36525"), "{stderr}");
    assert!(!dir.path().join("policies.json").exists(), "nothing was written");
    let (ok, stderr) =
        crate::harness::run_cli_status(&["org", "policy", "acme", "--retention-days", "36525", "--data-dir", data]);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_policy_changes_are_each_kept_once_acknowledged() {
    const ORGS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let admin = bearer_client(&create_token(&data, &["--any-org", "--scope", "admin"]));
    let server = Server::start(&data, &[]);
    // An operator's retention, set beside the server while the PUTs run,
    // must survive them too.
    let data_arg = data.to_str().unwrap().to_owned();
    let operator = std::thread::spawn(move || {
        run_cli(&["org", "policy", "org-07", "--retention-days", "30", "--data-dir", &data_arg]);
    });
    let puts = (0..ORGS).map(|i| {
        let request = admin
            .put(format!("{}/v1/orgs/org-{i:02}/policy", server.http_url))
            .json(&json!({"ugc": "drop", "ugc_attribute_keys": [format!("key-{i}")]}));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(puts).await;
    operator.join().unwrap();
    assert_eq!(statuses, vec![200; ORGS], "every change is acknowledged");
    let kept: Value = serde_json::from_slice(&std::fs::read(data.join("policies.json")).unwrap()).unwrap();
    for i in 0..ORGS {
        let policy = &kept["orgs"][format!("org-{i:02}")];
        assert_eq!(policy["ugc"], "drop", "org-{i:02}: {kept}");
        assert_eq!(policy["ugc_attribute_keys"], json!([format!("key-{i}")]), "org-{i:02}: {kept}");
    }
    assert_eq!(kept["orgs"]["org-07"]["retention_days"], 30, "{kept}");
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
