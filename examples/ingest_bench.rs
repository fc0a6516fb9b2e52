//! Ingest, size and query-latency benchmark against the real binary.
//!
//! Starts `auditlake serve` (release build) on a fresh data directory, posts
//! demo events in NDJSON batches from concurrent clients (durable ingest: each
//! `200` means fsynced), waits until everything is sealed, then measures bytes
//! per event on disk and the latency of `count(*)` and a one-actor lookup over
//! the Postgres wire. Prints one JSON object.
//!
//! With `--heavy-clients N`, the events are posted in `2 × --rounds` parts
//! after a first, unmeasured one (so that there is something to query), and
//! in every other part N Postgres clients run heavy aggregations over the
//! whole log back to back: ingest throughput with and without them,
//! alternating, in one run.
//!
//! `bash bench/ingest.sh` runs it and the DuckDB size comparison; see BENCHMARKS.md.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use auditlake::demo;
use serde_json::json;

struct Options {
    events: usize,
    batch: usize,
    clients: usize,
    binary: PathBuf,
    data_dir: PathBuf,
    repetitions: usize,
    /// Serve with checkpoints signed by this key (`auditlake keygen --signing-key`).
    signing_key: Option<PathBuf>,
    /// Post the events of this NDJSON file instead of generated ones
    /// (`bench/run.py` posts the events the other systems load).
    ndjson: Option<PathBuf>,
    /// Postgres clients running heavy queries during every other part.
    heavy_clients: usize,
    /// Pairs of parts (without, with heavy clients).
    rounds: usize,
    /// Extra flags for `auditlake serve`, comma-separated.
    serve_flags: Vec<String>,
}

fn options() -> Options {
    let mut o = Options {
        events: 1_000_000,
        batch: 1_000,
        clients: 8,
        binary: PathBuf::from("target/release/auditlake"),
        data_dir: PathBuf::from("bench-out/data"),
        repetitions: 30,
        signing_key: None,
        ndjson: None,
        heavy_clients: 0,
        rounds: 1,
        serve_flags: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).unwrap_or_else(|| panic!("{} needs a value", pair[0]));
        match pair[0].as_str() {
            "--events" => o.events = value.parse().expect("--events N"),
            "--batch" => o.batch = value.parse().expect("--batch N"),
            "--clients" => o.clients = value.parse().expect("--clients N"),
            "--binary" => o.binary = value.into(),
            "--data-dir" => o.data_dir = value.into(),
            "--repetitions" => o.repetitions = value.parse().expect("--repetitions N"),
            "--signing-key" => o.signing_key = Some(value.into()),
            "--ndjson" => o.ndjson = Some(value.into()),
            "--heavy-clients" => o.heavy_clients = value.parse().expect("--heavy-clients N"),
            "--rounds" => o.rounds = value.parse().expect("--rounds N"),
            "--serve-flags" => o.serve_flags = value.split(',').map(String::from).collect(),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// What the heavy clients run, in turn: aggregations over the whole log.
const HEAVY_QUERIES: [&str; 2] = [
    "select actor_id, count(*), count(distinct content_id) from audit_events group by actor_id order by 2 desc limit 20",
    "select action, product, count(*), min(time), max(time) from audit_events group by action, product order by 3 desc",
];

fn lines_in(bodies: &[String]) -> usize {
    bodies.iter().map(|b| b.matches('\n').count()).sum()
}

/// Posts `bodies[range]` from `clients` concurrent clients, each body until
/// it is acknowledged (waiting out 503 backpressure).
async fn post_all(
    bodies: &Arc<Vec<String>>,
    range: std::ops::Range<usize>,
    clients: usize,
    http_url: &str,
    authorization: &str,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            let (bodies, next, url) = (Arc::clone(bodies), Arc::clone(&next), format!("{http_url}/v1/events"));
            let (authorization, end) = (authorization.to_string(), range.end);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    loop {
                        let response = http
                            .post(&url)
                            .header("authorization", &authorization)
                            .body(bodies[i].clone())
                            .send()
                            .await
                            .expect("POST");
                        match response.status().as_u16() {
                            200 => break,
                            503 => tokio::time::sleep(Duration::from_millis(100)).await,
                            other => panic!("ingest failed with {other}: {}", response.text().await.unwrap()),
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mut o = options();
    if o.data_dir.exists() {
        std::fs::remove_dir_all(&o.data_dir).unwrap();
    }
    std::fs::create_dir_all(&o.data_dir).unwrap();

    // Bodies are prepared before the clock starts: we time the server, not serde.
    let lines: Vec<String> = match &o.ndjson {
        Some(path) => std::fs::read_to_string(path).unwrap().lines().map(|l| format!("{l}\n")).collect(),
        None => {
            let end_us = 1_795_600_000_000_000;
            let events = demo::generate(42, o.events, end_us, 30);
            events.iter().map(|e| e.to_ingest_json().to_string() + "\n").collect()
        }
    };
    o.events = lines.len();
    let bodies: Arc<Vec<String>> = Arc::new(lines.chunks(o.batch).map(|chunk| chunk.concat()).collect());
    let actor = demo::INCIDENT_ACTOR;

    // Ingest is timed with a token, as applications send it; the Postgres
    // side trusts loopback (a benchmark, not a deployment).
    let token = Command::new(&o.binary)
        .args(["token", "create", "--any-org", "--data-dir"])
        .arg(&o.data_dir)
        .output()
        .expect("auditlake token create");
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let authorization = format!("Bearer {}", String::from_utf8(token.stdout).unwrap().trim());
    let mut child = Command::new(&o.binary)
        .args(["serve", "--pg-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--seal-after-ms", "1000"])
        .arg("--insecure-trust-loopback")
        .arg("--data-dir")
        .arg(&o.data_dir)
        .args(&o.serve_flags)
        .args(o.signing_key.iter().flat_map(|key| [std::ffi::OsStr::new("--signing-key"), key.as_os_str()]))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the release binary (cargo build --release first)");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut ready).unwrap();
    let field = |name: &str| ready.split_whitespace().find_map(|kv| kv.strip_prefix(name)).unwrap().to_string();
    let http_url = format!("http://{}", field("http="));
    let pg_addr: std::net::SocketAddr = field("pg=").parse().unwrap();

    let pg_connect = move || async move {
        let (pg, connection) = tokio_postgres::connect(
            &format!("host={} port={} dbname=auditlake user=bench", pg_addr.ip(), pg_addr.port()),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        pg
    };

    let started = Instant::now();
    let mut alternating = serde_json::Map::new();
    if o.heavy_clients == 0 {
        post_all(&bodies, 0..bodies.len(), o.clients, &http_url, &authorization).await;
    } else {
        let parts = 2 * o.rounds + 1;
        let per_part = bodies.len().div_ceil(parts);
        let part = |i: usize| i * per_part..((i + 1) * per_part).min(bodies.len());
        post_all(&bodies, part(0), o.clients, &http_url, &authorization).await;
        let (mut idle, mut loaded, mut heavy_done) = (Vec::new(), Vec::new(), 0);
        for i in 1..parts {
            let with_queries = i % 2 == 0;
            let running = Arc::new(std::sync::atomic::AtomicBool::new(with_queries));
            let done = Arc::new(AtomicUsize::new(0));
            let heavy: Vec<_> = (0..if with_queries { o.heavy_clients } else { 0 })
                .map(|c| {
                    let (running, done) = (Arc::clone(&running), Arc::clone(&done));
                    let pg = pg_connect();
                    tokio::spawn(async move {
                        let pg = pg.await;
                        while running.load(Ordering::Relaxed) {
                            pg.simple_query(HEAVY_QUERIES[c % HEAVY_QUERIES.len()]).await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let range = part(i);
            let events: usize = lines_in(&bodies[range.clone()]);
            let t = Instant::now();
            post_all(&bodies, range, o.clients, &http_url, &authorization).await;
            let rate = events as f64 / t.elapsed().as_secs_f64();
            running.store(false, Ordering::Relaxed);
            for h in heavy {
                h.await.unwrap();
            }
            heavy_done += done.load(Ordering::Relaxed);
            if with_queries { loaded.push(rate) } else { idle.push(rate) }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (idle_median, loaded_median) = (median(&mut idle.clone()), median(&mut loaded.clone()));
        alternating.insert("idle_events_per_second".into(), json!(idle));
        alternating.insert("with_heavy_queries_events_per_second".into(), json!(loaded));
        alternating.insert("heavy_clients".into(), json!(o.heavy_clients));
        alternating.insert("heavy_queries_completed".into(), json!(heavy_done));
        alternating.insert("loaded_over_idle_median".into(), json!(loaded_median / idle_median));
    }
    let ingest_secs = started.elapsed().as_secs_f64();

    // Wait until the sealer has written everything to Parquet.
    let http = reqwest::Client::new();
    let seal_wait = Instant::now();
    loop {
        let health: serde_json::Value =
            http.get(format!("{http_url}/healthz")).send().await.unwrap().json().await.unwrap();
        // The heavy clients' statements are events too (self-audit records).
        let last_seq = health["last_seq"].as_u64().unwrap_or(0);
        if health["sealed_seq"] == health["last_seq"] && last_seq >= o.events as u64 {
            break;
        }
        assert!(seal_wait.elapsed() < Duration::from_secs(300), "sealing did not finish: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sealed_after_ingest_secs = seal_wait.elapsed().as_secs_f64();
    // ...and until no merge is running or due, so that sizes count only
    // published segments and queries are timed on a quiet server.
    let segments = loop {
        let health: serde_json::Value =
            http.get(format!("{http_url}/healthz")).send().await.unwrap().json().await.unwrap();
        if health["compacting"] == false {
            break health["segments"].clone();
        }
        assert!(seal_wait.elapsed() < Duration::from_secs(600), "compaction did not settle: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let segment_bytes: u64 =
        std::fs::read_dir(o.data_dir.join("segments")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();

    let pg = pg_connect().await;
    let mut timings = serde_json::Map::new();
    let queries = [
        ("count_all", "select count(*) from audit_events".to_string()),
        (
            "one_actor_timeline",
            format!(
                "select time, action, source_ip, content_id from audit_events where actor_id = '{actor}' order by time"
            ),
        ),
    ];
    for (name, sql) in &queries {
        let mut ms = Vec::new();
        let mut rows = 0;
        for _ in 0..o.repetitions {
            let t = Instant::now();
            rows = pg.simple_query(sql).await.unwrap().len();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        timings.insert(
            (*name).into(),
            json!({"p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99), "messages": rows}),
        );
    }
    // Peak resident memory of the server over the whole run (ingest, seal, queries).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_rss_mib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    let _ = child.kill();
    let _ = child.wait();

    let result = json!({
        "events": o.events,
        "batch": o.batch,
        "clients": o.clients,
        "ingest_seconds": ingest_secs,
        "ingest_events_per_second": o.events as f64 / ingest_secs,
        "signed_checkpoints": o.signing_key.is_some(),
        "sealed_after_ingest_seconds": sealed_after_ingest_secs,
        "segment_bytes": segment_bytes,
        "segments": segments,
        "bytes_per_event": segment_bytes as f64 / o.events as f64,
        "server_peak_rss_mib": peak_rss_mib,
        "queries": timings,
        "ingest_with_and_without_heavy_queries": alternating,
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}
