//! Scale-out reads (`query::engine`, `query::fragment`, `cluster`): a
//! coordinator and two workers, real processes on loopback, over segments
//! in an S3-compatible bucket (moto's server). Whatever the engine, a
//! statement answers the same rows, and an organisation's user reads only
//! its own.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use auditlake::cluster::ClusterKey;
use auditlake::query::Scope;
use auditlake::query::engine::Choice;
use auditlake::query::fragment::{FragmentScanExec, ScanFragment, SegmentFile};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use rand::{Rng, SeedableRng};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Server, add_user, post, process_cpu_ticks, wait_until};
use crate::object_storage::S3Server;
use crate::tenancy;

const BUCKET_PREFIX: &str = "cluster/eu";
/// Working memory of a query on each node: the saved reports over a million
/// events and all time need more than the default.
const MEMORY_BYTES: &str = "2147483648";

/// A table that hands out one scan fragment as it is: what a process that
/// talks to the workers directly, without the coordinator, would send.
#[derive(Debug)]
struct HandMade(ScanFragment);

#[async_trait::async_trait]
impl TableProvider for HandMade {
    fn schema(&self) -> SchemaRef {
        self.0.schema().unwrap()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(FragmentScanExec::new(self.0.clone())?))
    }
}

/// Counts the rows of `fragment` on `workers` from this process, as a
/// coordinator holding `key` would.
async fn count_on_workers(workers: &str, key: ClusterKey, fragment: ScanFragment) -> Result<i64, String> {
    let cluster = auditlake::cluster::Cluster::new(workers, key).unwrap();
    let state = cluster.coordinate(SessionStateBuilder::new().with_default_features()).unwrap().build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_table("stolen", Arc::new(HandMade(fragment))).unwrap();
    let batches = async { ctx.sql("select count(*) from stolen").await?.collect().await };
    let batches = tokio::time::timeout(Duration::from_secs(60), batches).await.map_err(|e| e.to_string())?;
    let batches = batches.map_err(|e| e.to_string())?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

/// An `auditlake worker` process, stopped on drop.
struct Worker {
    child: Child,
    address: String,
}

impl Worker {
    fn start(s3: &S3Server, key: &Path) -> Worker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditlake"))
            .args(["worker", "--listen", &address, "--segments-url", &s3.url(BUCKET_PREFIX)])
            .args(["--query-memory-bytes", MEMORY_BYTES, "--total-query-memory-bytes", MEMORY_BYTES])
            .arg("--cluster-key-file")
            .arg(key)
            .envs(s3.env())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start auditlake worker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("worker listening"), "the worker said {line:?}");
        Worker { child, address }
    }

    /// CPU time the worker has used (user and system, clock ticks).
    fn cpu_ticks(&self) -> u64 {
        process_cpu_ticks(self.child.id())
    }
}

/// The CPU time `workers` have used together (clock ticks).
fn total_ticks(workers: &[Worker]) -> u64 {
    workers.iter().map(Worker::cpu_ticks).sum()
}

/// The CPU time `workers` use over the next `period`.
async fn ticks_over(workers: &[Worker], period: Duration) -> u64 {
    let before = total_ticks(workers);
    tokio::time::sleep(period).await;
    total_ticks(workers) - before
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator over `events` demo events whose segments lie in the
/// bucket, and two workers.
struct Cluster {
    workers: Vec<Worker>,
    coordinator: Server,
    _s3: S3Server,
}

fn cluster_key(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    std::fs::write(&path, "3f9a1c0b7e5d2a4f8c6b1e0d9a7f5c3b2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b\n").unwrap();
    path
}

async fn cluster(dir: &Path, events: usize, extra: &[&str]) -> Cluster {
    let s3 = S3Server::start().await;
    let key = cluster_key(dir);
    let data = dir.join("data");
    let url = s3.url(BUCKET_PREFIX);
    let demo = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["demo", "--no-serve", "--events", &events.to_string(), "--segments-url", &url, "--data-dir"])
        .arg(&data)
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    let workers = vec![Worker::start(&s3, &key), Worker::start(&s3, &key)];
    let addresses = workers.iter().map(|w| w.address.as_str()).collect::<Vec<_>>().join(",");
    let key = key.display().to_string();
    let mut flags = vec!["--segments-url", &url, "--workers", &addresses, "--cluster-key-file", &key];
    flags.extend(["--query-memory-bytes", MEMORY_BYTES, "--total-query-memory-bytes", MEMORY_BYTES]);
    flags.extend_from_slice(extra);
    add_user(&data, "acme-analyst", &["--org", "acme"]);
    let coordinator = Server::start_with_env(&data, &flags, &s3.env());
    Cluster { workers, coordinator, _s3: s3 }
}

/// The rows of `sql` as text, sorted (both engines return the same rows,
/// not always in the same order where `ORDER BY` leaves ties), or the error.
async fn answer(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    })?;
    let mut rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).unwrap_or("<null>")).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect();
    rows.sort();
    Ok(rows)
}

async fn with_engine(server: &Server, user: Option<&str>, engine: &str) -> tokio_postgres::Client {
    let client = match user {
        Some(user) => server.pg_as(user).await.unwrap(),
        None => server.pg().await,
    };
    client.simple_query(&format!("set auditlake.engine = '{engine}'")).await.unwrap();
    client
}

/// The plan `sql` gets, as one text.
async fn plan(client: &tokio_postgres::Client, sql: &str) -> String {
    answer(client, &format!("explain {sql}")).await.unwrap().join("\n")
}

/// The saved reports of `sql/`, with parameters that find rows in the demo.
fn saved_reports() -> Vec<(String, String)> {
    let mut params = std::collections::BTreeMap::new();
    for (name, value) in [("since", "'2000-01-01'"), ("actor", "'acme-u007'"), ("content", "'acme-p001'")] {
        params.insert(name.to_owned(), value.to_owned());
    }
    auditlake::reports::SAVED
        .iter()
        .map(|(name, script)| (name.to_string(), auditlake::reports::render(script, &params).unwrap()))
        .collect()
}

/// The investigation benchmark's queries and the scale-out benchmark's.
fn benchmark_queries(anchor: &str) -> Vec<String> {
    [
        "select time, action, source_ip, content_id from audit_events \
         where actor_id = 'acme-u007' and time > ANCHOR - interval '7 days' order by time, seq",
        "select time, actor_id, action from audit_events \
         where content_id = 'acme-p001' and time > ANCHOR - interval '90 days' order by time, seq",
        "select action, count(*) as n from audit_events \
         where time > ANCHOR - interval '1 day' and time <= ANCHOR group by action order by action",
        "select time, action from audit_events where actor_id = 'acme-u007' order by time desc, seq desc limit 20",
        "select org_id, date_trunc('day', time) as day, action, count(*) from audit_events \
         where time > ANCHOR - interval '180 days' and time <= ANCHOR group by 1, 2, 3",
        "select org_id, actor_id, count(*) as downloads from audit_events \
         where action like '%download%' and time <= ANCHOR group by 1, 2 having count(*) > 3",
    ]
    .iter()
    .map(|q| q.replace("ANCHOR", anchor))
    .collect()
}

/// `count` filter, aggregate and join statements drawn from a fixed seed.
fn generated_queries(count: usize, anchor: &str) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    let filters = [
        "org_id = 'acme'",
        "org_id in ('globex', 'initech')",
        "action like 'jira.%'",
        "action like 'confluence.page.%'",
        "outcome = 'failure'",
        "actor_id in ('acme-u007', 'globex-u003', 'initech-u011')",
        "time > ANCHOR - interval '3 days'",
        "time between ANCHOR - interval '20 days' and ANCHOR - interval '10 days'",
        "source_ip like '10.%'",
        "content_id is not null",
        "seq % 7 = 3",
        "length(actor_id) > 9",
    ];
    let aggregates = ["count(*)", "count(distinct actor_id)", "min(time)", "max(seq)", "sum(seq % 13)"];
    let groups = ["org_id", "action", "outcome", "date_trunc('day', time)", "product"];
    (0..count)
        .map(|i| {
            let mut pick = |options: &[&str]| options[rng.random_range(0..options.len())].replace("ANCHOR", anchor);
            let condition = format!("{} and {}", pick(&filters), pick(&filters));
            match i % 5 {
                0 => format!("select seq, org_id, actor_id, action from audit_events where {condition}"),
                1 => format!("select {} from audit_events where {condition}", pick(&aggregates)),
                2 => {
                    let group = pick(&groups);
                    format!("select {group}, {} from audit_events where {condition} group by 1", pick(&aggregates))
                }
                3 => format!(
                    "select a.actor_id, count(*) from audit_events a join \
                     (select distinct actor_id from audit_events where action = 'admin.grant') g \
                     on a.actor_id = g.actor_id where {condition} group by 1"
                ),
                _ => format!(
                    "select org_id, {} from audit_events where {condition} group by org_id \
                     order by 1 limit 3",
                    pick(&aggregates)
                ),
            }
        })
        .collect()
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn statements_answer_the_same_on_the_workers_as_here() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1_000_000, &["--statement-timeout-ms", "300000"]).await;
    let server = &cluster.coordinator;
    let local = with_engine(server, None, "local").await;
    let distributed = with_engine(server, None, "distributed").await;

    // The engine is chosen and said so.
    let everything = "select org_id, count(*) from audit_events group by org_id";
    let shown = plan(&distributed, everything).await;
    assert!(shown.contains("AuditEventsFragmentExec: engine=distributed (set by the session)"), "{shown}");
    // An admin's EXPLAIN ANALYZE shows the stages and each worker's metrics.
    let analyzed = answer(&distributed, &format!("explain analyze {everything}")).await.unwrap().join("\n");
    assert!(analyzed.contains("DistributedExec") && analyzed.contains("Stage 1 ── tasks=2"), "{analyzed}");
    // So on a coordinator of one core (one partition): the workers still
    // do the scan, the partial aggregate and, shuffled between them, the
    // final one.
    let narrow = with_engine(server, None, "distributed").await;
    narrow.simple_query("set datafusion.execution.target_partitions = 1").await.unwrap();
    let analyzed = answer(&narrow, &format!("explain analyze {everything}")).await.unwrap().join("\n");
    assert!(analyzed.contains("Stage 1 ── tasks=2"), "{analyzed}");
    assert!(analyzed.contains("NetworkShuffleExec") && analyzed.contains("Stage 2 ── tasks=2"), "{analyzed}");
    let shown = plan(&local, everything).await;
    assert!(shown.contains("engine=local (set by the session)"), "{shown}");
    let auto = with_engine(server, None, "auto").await;
    let shown = plan(&auto, everything).await;
    assert!(shown.contains("engine=local (auto: ") && shown.contains("within 1.0 GiB"), "{shown}");
    auto.simple_query("set auditlake.distribute_above_bytes = 1").await.unwrap();
    let shown = plan(&auto, everything).await;
    assert!(shown.contains("engine=distributed (auto: ") && shown.contains("over 1 bytes"), "{shown}");
    let shown = plan(&auto, "select * from audit_events where actor_id = 'acme-u007'").await;
    assert!(shown.contains("engine=local (auto: a lookup"), "{shown}");

    let anchor = answer(&local, "select max(time) from audit_events where org_id <> '_auditlake'").await.unwrap();
    let anchor = format!("timestamptz '{}'", anchor[0]);
    let mut statements: Vec<(String, String)> = saved_reports();
    statements.extend(benchmark_queries(&anchor).into_iter().map(|q| ("benchmark".to_owned(), q)));
    statements.extend(generated_queries(50, &anchor).into_iter().map(|q| ("generated".to_owned(), q)));
    let mut rows_compared = 0;
    let worked_before = total_ticks(&cluster.workers);
    for (name, sql) in &statements {
        // The server's own records of these statements grow as they run.
        let sql =
            sql.replacen("from audit_events", "from (select * from audit_events where org_id <> '_auditlake')", 1);
        let here = answer(&local, &sql).await;
        let there = answer(&distributed, &sql).await;
        assert_eq!(here, there, "{name}: {sql}");
        rows_compared += here.map(|r| r.len()).unwrap_or(0);
    }
    assert!(rows_compared > 10_000, "the statements found rows to compare: {rows_compared}");
    // The workers did the distributed half of the work.
    let worked = total_ticks(&cluster.workers) - worked_before;
    assert!(worked > 100, "the workers used {worked} ticks of CPU");

    // What needs organisations' keys runs here, with the same answer.
    let hashing = "select count(*) from audit_events where content_id = ugc_hash(actor_id, org_id)";
    assert_eq!(answer(&distributed, hashing).await, answer(&local, hashing).await);

    // A distributed statement is recorded as a local one is.
    answer(&distributed, "select 'dist-marker-26' as marker, count(*) from audit_events").await.unwrap();
    let recorded = "select count(*) from audit_events where org_id = '_auditlake' \
                    and action = 'audit_log.query' and attributes like '%dist-marker' || '-26%'";
    assert_eq!(server.sql_until(recorded, "1\n"), "1\n");

    // Read your writes: an event acknowledged just before is in the answer.
    let event = crate::harness::event("ryw-1", "acme", "acme-u001", "jira.issue.viewed", 0);
    assert_eq!(post(&server.http(), &server.events_url(), event.to_string()).await.0, 200);
    let found = answer(&distributed, "select count(*) from audit_events where id = 'ryw-1'").await.unwrap();
    assert_eq!(found, ["1"]);
    let total_here = answer(&local, "select count(*) from audit_events where org_id <> '_auditlake'").await;
    let total_there = answer(&distributed, "select count(*) from audit_events where org_id <> '_auditlake'").await;
    assert_eq!(total_here, total_there);
    assert_eq!(total_here.unwrap(), ["1000001"]);
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn an_organisations_user_reads_only_its_own_rows_on_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 20_000, &["--seal-max-buffered-rows", "4"]).await;
    let server = &cluster.coordinator;
    // Another organisation's secrets, sealed into segments in the bucket.
    let (status, _) = post(&server.http(), &server.events_url(), tenancy::planted_events()).await;
    assert_eq!(status, 200);
    let sealed = "select count(*) from audit_events where org_id = 'globex' and actor_name like 'Gx Name%'";
    assert_eq!(server.sql_until(sealed, &format!("{}\n", tenancy::ACME_EVENTS)), format!("{}\n", tenancy::ACME_EVENTS));

    let attacker = with_engine(server, Some("acme-analyst"), "distributed").await;
    let refused = answer(&attacker, "set auditlake.engine = 'fast'").await.unwrap_err();
    assert!(refused.starts_with("22023") && refused.contains("local, distributed, auto"), "{refused}");
    let shown = plan(&attacker, "select count(*) from audit_events").await;
    assert!(shown.contains("AuditEventsFragmentExec: org_id=acme, engine=distributed"), "{shown}");
    // Its EXPLAIN ANALYZE runs here: no worker's metrics.
    let analyzed = answer(&attacker, "explain analyze select count(*) from audit_events").await.unwrap().join("\n");
    assert!(analyzed.contains("OrgScanExec: org_id=acme") && !analyzed.contains("Stage"), "{analyzed}");
    let own = answer(&attacker, "select count(distinct org_id), min(org_id) from audit_events").await.unwrap();
    assert_eq!(own, ["1|acme"]);
    for probe in tenancy::value_probes() {
        let text = format!("{:?}", answer(&attacker, &probe).await);
        assert!(tenancy::leaked(&probe, &text).is_none(), "{}", tenancy::leaked(&probe, &text).unwrap());
    }
    for (yes, no) in tenancy::oracle_pairs() {
        let (a, b) = (answer(&attacker, &yes).await, answer(&attacker, &no).await);
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        assert!(tenancy::leaked(&yes, &a).is_none(), "{}", tenancy::leaked(&yes, &a).unwrap());
        assert_eq!(
            tenancy::masked(&a),
            tenancy::masked(&b),
            "the oracle's two questions were told apart:\n{yes}\n{no}"
        );
    }
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn a_lost_worker_fails_its_query_clearly_and_a_timeout_stops_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 200_000, &[]).await;
    let server = &cluster.coordinator;
    // Slow on purpose, and on the workers: the log joined with itself on
    // the actor, about 300 million pairs, partitioned by actor.
    let slow = "select count(*), sum(a.seq % 7 + b.seq % 5) from audit_events a \
                join audit_events b on a.actor_id = b.actor_id \
                where a.org_id <> '_auditlake' and b.org_id <> '_auditlake'";

    // A timeout ends the query on the workers too: their CPU goes idle.
    let client = with_engine(server, None, "distributed").await;
    let started = Instant::now();
    let ticks_before = total_ticks(&cluster.workers);
    let full = answer(&client, slow).await;
    let full_run = started.elapsed();
    assert!(full.is_ok() && full_run > Duration::from_millis(800), "{full:?} in {full_run:?}");
    // The join itself ran there: the workers were busy (half a core or
    // more) while it ran, not only while they read.
    let worked = total_ticks(&cluster.workers) - ticks_before;
    let run_ticks = full_run.as_millis() as u64 / 10;
    assert!(worked * 2 >= run_ticks, "the workers worked {worked} ticks of the join's {run_ticks}");
    client.simple_query(&format!("set statement_timeout = {}", full_run.as_millis() / 4)).await.unwrap();
    let error = answer(&client, slow).await.unwrap_err();
    assert!(error.starts_with("57014"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worked = ticks_over(&cluster.workers, Duration::from_secs(2)).await;
    assert!(worked < 50, "the workers went on working after the timeout: {worked} ticks in 2 s");

    // So does a cancel request.
    let client = with_engine(server, None, "distributed").await;
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move { answer(&client, slow).await });
    tokio::time::sleep(full_run / 4).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let error = running.await.unwrap().unwrap_err();
    assert!(error.starts_with("57014"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let worked = ticks_over(&cluster.workers, Duration::from_secs(2)).await;
    assert!(worked < 50, "the workers went on working after the cancel: {worked} ticks in 2 s");

    // A worker killed mid-query: an error that says so, never a partial answer.
    let client = with_engine(server, None, "distributed").await;
    let running = tokio::spawn(async move { answer(&client, slow).await });
    tokio::time::sleep(full_run / 3).await;
    cluster.workers.remove(0);
    match running.await.unwrap() {
        Ok(rows) => assert_eq!(Ok(rows), full, "a partial answer"),
        Err(error) => assert!(error.starts_with("08006") || error.starts_with("57P01"), "{error}"),
    }
    // The next query runs on the worker left.
    let client = with_engine(server, None, "distributed").await;
    let started = Instant::now();
    wait_until("a query on the worker left", || async {
        answer(&client, "select count(*) from audit_events where org_id = 'acme' and seq >= 0")
            .await
            .is_ok_and(|rows| rows[0].parse::<u64>().unwrap() > 50_000)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    // On the worker left, not here: one worker still runs the statement's
    // stages (two tasks of it), rather than them all folding into the
    // coordinator.
    let analyzed = "explain analyze select count(*) from audit_events where org_id = 'acme' and seq >= 0";
    let analyzed = answer(&client, analyzed).await.unwrap().join("\n");
    assert!(analyzed.contains("DistributedExec") && analyzed.contains("Stage 1 ── tasks=2"), "{analyzed}");
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn a_worker_answers_only_its_cluster_and_runs_only_fragments_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 20_000, &[]).await;
    let workers = cluster.workers.iter().map(|w| w.address.as_str()).collect::<Vec<_>>().join(",");
    let key = ClusterKey::read(&dir.path().join("cluster.key")).unwrap();
    let segments: Vec<SegmentFile> = cluster
        ._s3
        .objects_under(&format!("{BUCKET_PREFIX}/segments/"))
        .await
        .into_iter()
        .map(|(key, size)| SegmentFile::named(key.rsplit('/').next().unwrap().to_owned(), size).unwrap())
        .collect();
    assert!(!segments.is_empty());
    // Each file twice: a fragment of one segment would run on one task,
    // here; two parts go to the workers.
    let segments: Vec<SegmentFile> = segments.iter().chain(&segments).cloned().collect();
    let fragment = |scope: Scope| ScanFragment {
        scope,
        segments: segments.clone(),
        projection: Some(vec![]),
        filters: vec![],
        limit: None,
        buffered: vec![],
        partitions: 2,
        engine: Choice { distributed: true, why: "hand-made".into() },
        _buffered_memory: None,
    };
    let sealed = cluster.coordinator.sql("select count(*) from audit_events where org_id <> '_auditlake'").unwrap();
    let sealed: i64 = sealed.trim().parse().unwrap();

    // With the cluster's key, a fragment runs: the way in works.
    assert_eq!(count_on_workers(&workers, key.clone(), fragment(Scope::All)).await, Ok(2 * sealed));
    // Without the token: refused before anything is read.
    let stranger = ClusterKey::from_secret(b"not this cluster's key, but long enough");
    let error = count_on_workers(&workers, stranger, fragment(Scope::All)).await.unwrap_err();
    assert!(error.contains("answers its cluster's coordinator only"), "{error}");
    // With the token read off the network but not the key: whatever scope
    // the fragment claims, its signature does not hold.
    let thief = key.with_foreign_signing(b"a guess at the signing key, long enough");
    for scope in [Scope::All, Scope::Org("globex".into())] {
        let error = count_on_workers(&workers, thief.clone(), fragment(scope)).await.unwrap_err();
        assert!(error.contains("scan fragment refused: its signature does not hold"), "{error}");
    }
}

#[tokio::test]
#[ignore = "tier 2: needs moto's S3 server from the venv (scripts/test.sh runs it)"]
async fn compaction_during_a_distributed_query_leaves_its_answer_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // Seals only when 1,000 rows wait (the server's own records of the
    // statements never reach that), merges any two segments.
    let flags = [
        "--seal-max-buffered-rows",
        "1000",
        "--seal-after-ms",
        "86400000",
        "--compaction-min-segments",
        "2",
        "--statement-timeout-ms",
        "300000",
    ];
    let cluster = cluster(dir.path(), 200_000, &flags).await;
    let server = &cluster.coordinator;
    // Segment files in the bucket (compaction's merged files are new names).
    let files = || async {
        let objects = cluster._s3.objects_under(&format!("{BUCKET_PREFIX}/segments/")).await;
        objects.into_iter().map(|(key, _)| key.rsplit('/').next().unwrap().to_owned()).collect::<Vec<_>>()
    };
    wait_until("the demo's segments compacted", || async { files().await.len() <= 2 }).await;
    let before = files().await;
    // The oldest segment: the query reads it; a merge that takes it in
    // writes a file named from the same first seq.
    let oldest = before.iter().min().unwrap().clone();
    let first_seq = oldest.split(['-', '.']).next().unwrap().to_owned();

    // Long on purpose: each actor's events paired with each other, and a
    // string made of each pair.
    let long = "select count(*), sum(length(concat(a.id, b.id))) from audit_events a \
                join audit_events b on a.actor_id = b.actor_id \
                where a.org_id in ('acme', 'globex', 'initech', 'umbrella') \
                and b.org_id in ('acme', 'globex', 'initech', 'umbrella')";
    let reference = answer(&with_engine(server, None, "local").await, long).await.unwrap();
    let client = with_engine(server, None, "distributed").await;
    let running = tokio::spawn(async move { answer(&client, long).await });
    // Two seals' worth of another organisation's events: the compactor
    // merges their segments with the ones the query is reading.
    for batch in 0..2 {
        let events: Vec<String> = (0..1000)
            .map(|i| crate::harness::event(&format!("late-{batch}-{i}"), "late-org", "late-u1", "jira.issue.viewed", 0))
            .map(|event| event.to_string())
            .collect();
        assert_eq!(post(&server.http(), &server.events_url(), events.join("\n")).await.0, 200);
    }
    let mut merged_while_running = None;
    while !running.is_finished() {
        let now = files().await;
        if running.is_finished() {
            // The listing may be of after the query ended.
            break;
        }
        if let Some(merged) = now.iter().find(|f| f.starts_with(&first_seq) && !before.contains(f)) {
            // The file the query reads is still there: the query holds it.
            assert!(now.contains(&oldest), "{oldest} was deleted under a running query: {now:?}");
            merged_while_running = Some(merged.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running.await.unwrap(), Ok(reference));
    assert!(merged_while_running.is_some(), "the compactor merged {oldest} while the query ran");
    // Once the query is done, the merged-away file goes.
    wait_until("the merged-away segment deleted", || async { !files().await.contains(&oldest) }).await;
}
