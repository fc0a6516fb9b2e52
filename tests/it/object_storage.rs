//! Segments and manifest in an S3-compatible bucket (moto's S3 server from
//! PyPI, on loopback), the WAL on local disk: sealing, compaction, queries and
//! a kill -9 restart all go through the object store.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{APP, Server, event, post, run_cli_with_env, venv_bin};

const BUCKET: &str = "audit-archive";
const PREFIX: &str = "logs/eu";

/// A moto S3 server on a free loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let started = Instant::now();
        // Creating the bucket doubles as the readiness probe.
        loop {
            match http.put(format!("{}/{BUCKET}", server.endpoint)).send().await {
                Ok(r) if r.status().is_success() => return server,
                _ if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => panic!("moto_server did not come up: {other:?}"),
            }
        }
    }

    /// The `s3://` URL of `prefix` in the test bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// Keys under the log's prefix, as the bucket lists them.
    async fn keys(&self) -> Vec<String> {
        self.keys_under(&format!("{PREFIX}/")).await
    }

    /// Keys under `prefix` with their sizes in bytes.
    pub async fn objects_under(&self, prefix: &str) -> Vec<(String, u64)> {
        let url = format!("{}/{BUCKET}?list-type=2&prefix={prefix}", self.endpoint);
        let xml = reqwest::get(url).await.unwrap().text().await.unwrap();
        let field = |object: &str, name: &str| {
            object.split(&format!("<{name}>")).nth(1).unwrap().split(&format!("</{name}>")).next().unwrap().to_owned()
        };
        xml.split("<Contents>").skip(1).map(|o| (field(o, "Key"), field(o, "Size").parse().unwrap())).collect()
    }

    async fn keys_under(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/{BUCKET}?list-type=2&prefix={prefix}", self.endpoint);
        let xml = reqwest::get(url).await.unwrap().text().await.unwrap();
        xml.split("<Key>").skip(1).map(|rest| rest.split("</Key>").next().unwrap().to_owned()).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, s3: &S3Server) -> Server {
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let flags = [
        "--segments-url",
        &url,
        "--seal-max-buffered-rows",
        "200",
        "--compaction-target-rows",
        "10000",
        "--compaction-min-segments",
        "2",
    ];
    Server::start_with_env(data, &flags, &s3.env())
}

async fn health(server: &Server) -> Value {
    reqwest::get(format!("{}/healthz", server.http_url)).await.unwrap().json().await.unwrap()
}

async fn count(server: &Server, sql: &str) -> i64 {
    server.pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn segments_and_manifest_live_in_the_bucket_and_survive_kill_9() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &s3);
    let http = server.http();
    for batch in 0..5 {
        let body: String = (0..200)
            .map(|i| {
                event(&format!("b{batch}-{i}"), "acme", &format!("u{}", i % 7), "page.viewed", i).to_string() + "\n"
            })
            .collect();
        let (status, answer) = post(&http, &server.events_url(), body).await;
        assert_eq!(status, 200, "{answer}");
    }

    // Every 200 rows seal; the sealer then merges the segments into one.
    let started = Instant::now();
    loop {
        let h = health(&server).await;
        if h["sealed_seq"] == 1000 && h["segments"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never sealed and compacted: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("compacted segments"), "compaction ran against the bucket");

    // Retired inputs are deleted in the background once no query holds
    // them: wait for it rather than race it.
    let mut keys = s3.keys().await;
    while keys.len() > 2 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        keys = s3.keys().await;
    }
    assert!(keys.contains(&format!("{PREFIX}/manifest.json")), "{keys:?}");
    assert!(keys.contains(&format!("{PREFIX}/segments/{:020}-{:020}.parquet", 1, 1000)), "{keys:?}");
    assert_eq!(keys.len(), 2, "compacted inputs are deleted from the bucket: {keys:?}");
    assert!(!data.join("manifest.json").exists() && !data.join("segments").exists(), "nothing sealed is local");

    assert_eq!(count(&server, &format!("select count(distinct id) from audit_events where {APP}")).await, 1000);
    // A filtered scan: row-group pruning reads through the object store.
    let u3 = 5 * (0..200).filter(|i| i % 7 == 3).count() as i64;
    assert_eq!(count(&server, "select count(*) from audit_events where actor_id = 'u3'").await, u3);

    let (status, _) =
        post(&http, &server.events_url(), event("late", "acme", "u3", "page.viewed", 9).to_string()).await;
    assert_eq!(status, 200);
    server.kill();

    let server = start(&data, &s3);
    assert_eq!(
        count(&server, &format!("select count(*) from audit_events where {APP}")).await,
        1001,
        "bucket plus local WAL"
    );
    assert_eq!(count(&server, "select count(*) from audit_events where actor_id = 'u3'").await, u3 + 1);
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn auditlake_export_uploads_a_complete_file_to_a_bucket() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let body: String =
        (0..30).map(|i| event(&format!("x{i}"), "acme", "u1", "page.viewed", i).to_string() + "\n").collect();
    assert_eq!(post(&server.http(), &server.events_url(), body).await.0, 200);
    let key = "exports/acme/2026-11.jsonl";
    let out = run_cli_with_env(
        &["export", "--org", "acme", "--server", &server.url(), "--out", &format!("s3://{BUCKET}/{key}")],
        &s3.env(),
    );
    assert!(out.starts_with("30 events of acme"), "{out}");
    assert_eq!(s3.keys_under("exports/").await, [key]);
    let mut bucket = object_store::aws::AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (name, value) in s3.env() {
        bucket = bucket.with_config(name.to_lowercase().parse().unwrap(), value);
    }
    let bucket = object_store::ObjectStoreExt::get(&bucket.build().unwrap(), &key.into()).await.unwrap();
    let object = String::from_utf8(bucket.bytes().await.unwrap().to_vec()).unwrap();
    let ids: Vec<String> =
        object.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, (0..30).map(|i| format!("x{i}")).collect::<Vec<_>>());
}
