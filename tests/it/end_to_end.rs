//! Events in over HTTP, read back over the Postgres wire by real clients.

use serde_json::{Value, json};

use crate::harness::{APP, Server, add_user, demo_data_dir, event, post};

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

#[tokio::test]
async fn posted_events_are_queryable_over_both_query_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let http = server.http();

    let first = vec![
        event("e1", "acme", "alice", "confluence.page.viewed", 0),
        event("e2", "acme", "bob", "jira.issue.deleted", 1),
    ];
    let (status, body) = post(&http, &server.events_url(), ndjson(&first)).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"accepted": 2, "stored": 2, "duplicates": 0, "first_seq": 1, "last_seq": 2}))
    );

    // A client retrying after a timeout: acknowledged again, not stored again.
    let (status, body) = post(&http, &server.events_url(), ndjson(&first)).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"accepted": 2, "stored": 0, "duplicates": 2, "first_seq": null, "last_seq": null}))
    );

    let mut third = event("e3", "globex", "alice", "admin.role.granted", 2);
    third["attributes"] = json!({"role": "admin"});
    third["content_title"] = json!("Payroll ☃");
    let (status, body) = post(&http, &server.events_url(), Value::Array(vec![third]).to_string()).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"accepted": 1, "stored": 1, "duplicates": 0, "first_seq": 3, "last_seq": 3}))
    );

    // Extended protocol with a bound parameter, typed results.
    let pg = server.pg().await;
    let rows = pg
        .query(
            "select id, org_id, action, seq, time, attributes, content_title from audit_events \
             where actor_id = $1 order by seq",
            &[&"alice"],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        vec![
            ("e1".into(), "acme".into(), "confluence.page.viewed".into(), 1),
            ("e3".into(), "globex".into(), "admin.role.granted".into(), 3),
        ]
    );
    let time: chrono::DateTime<chrono::Utc> = rows[1].get(4);
    assert_eq!(time.to_rfc3339(), "2026-11-20T08:02:00+00:00");
    assert_eq!(rows[1].get::<_, Option<String>>(5).as_deref(), Some(r#"{"role":"admin"}"#));
    assert_eq!(rows[1].get::<_, Option<String>>(6).as_deref(), Some("Payroll ☃"));
    assert_eq!(rows[0].get::<_, Option<String>>(5), None);

    // The simple query protocol, as psql sends it.
    assert_eq!(server.sql(&format!("select count(*) from audit_events where {APP}")).unwrap().trim(), "3");
    assert_eq!(
        server.sql("select actor_id || ':' || action from audit_events where org_id = 'acme' order by time").unwrap(),
        "alice:confluence.page.viewed\nbob:jira.issue.deleted\n"
    );
}

/// Batch `batch` of the restart test: 60 events of seven actors.
fn sixty_events(batch: usize) -> Vec<Value> {
    (0..60).map(|i| event(&format!("b{batch}-{i}"), "acme", &format!("u{}", i % 7), "page.viewed", i)).collect()
}

#[tokio::test]
async fn sealed_and_buffered_events_are_seen_exactly_once_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // Seal every 100 rows, so the data ends up split over segments and buffer.
        let server = Server::start(&data, &["--seal-max-buffered-rows", "100"]);
        let http = server.http();
        for batch in 0..5 {
            let (status, _) = post(&http, &server.events_url(), ndjson(&sixty_events(batch))).await;
            assert_eq!(status, 200);
        }
        let pg = server.pg().await;
        let sql = format!("select count(*), count(distinct id), max(seq) from audit_events where {APP}");
        let row = pg.query_one(&sql, &[]).await.unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (300, 300, 300));
        // The sealer runs in the background: wait for its first segment
        // (killing before it once left none, and nothing to test).
        let segments = data.join("segments");
        crate::harness::wait_until("a seal before the kill", || {
            let segments = segments.clone();
            async move { std::fs::read_dir(&segments).map(|d| d.count() >= 1).unwrap_or(false) }
        })
        .await;
        server.kill();
    }

    let server = Server::start(&data, &[]);
    let pg = server.pg().await;
    let row = pg
        .query_one(
            "select count(*), count(distinct id), min(seq), max(seq) from audit_events where org_id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3)),
        (300, 300, 1, 300)
    );
    let per_actor = pg.query_one("select count(*) from audit_events where actor_id = $1", &[&"u3"]).await.unwrap();
    assert_eq!(per_actor.get::<_, i64>(0), 45);
    // Every batch sent again after the kill, sealed or still in the WAL, is
    // recognised and not stored twice.
    for batch in 0..5 {
        let (status, body) = post(&server.http(), &server.events_url(), ndjson(&sixty_events(batch))).await;
        assert_eq!((status, &body["duplicates"]), (200, &json!(60)), "{body}");
    }
    let count = pg.query_one("select count(*) from audit_events where org_id = 'acme'", &[]).await.unwrap();
    assert_eq!(count.get::<_, i64>(0), 300);
    // Sequence numbers continue after recovery (the server's own records of
    // these queries took some of them).
    let (status, body) =
        post(&server.http(), &server.events_url(), event("after", "acme", "u1", "x", 0).to_string()).await;
    assert_eq!(status, 200);
    assert!(body["first_seq"].as_i64().unwrap() > 300, "{body}");
}

#[tokio::test]
async fn the_sql_endpoint_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let pg = server.pg().await;
    for (sql, code) in [
        ("drop table audit_events", "25006"),
        ("create table t (a int)", "25006"),
        ("insert into audit_events (id) values ('x')", "25006"),
        ("delete from audit_events", "25006"),
        ("update audit_events set org_id = 'x'", "25006"),
        ("truncate audit_events", "25006"),
        ("alter table audit_events add column x int", "25006"),
        ("create view v as select 1", "25006"),
        ("grant select on audit_events to public", "25006"),
        ("copy audit_events from stdin", "25006"),
        ("create external table t stored as parquet location '/etc'", "25006"),
        // Server files, as PostgreSQL refuses them to unprivileged users.
        ("copy audit_events to '/tmp/auditlake-copy.csv'", "42501"),
        ("copy audit_events from '/etc/passwd'", "42501"),
        ("copy (select 1) to program 'id'", "42501"),
    ] {
        let err = pg.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        let err = pg.prepare(sql).await.expect_err(sql);
        assert_eq!(err.as_db_error().unwrap().code().code(), code, "{sql} (extended)");
    }
    assert!(!std::path::Path::new("/tmp/auditlake-copy.csv").exists());
    // Files cannot be read by other routes either: paths are not tables and
    // file-reading table functions do not exist; unknown names get their class;
    // what cannot be answered right is refused, not answered wrong.
    for (sql, code) in [
        ("create external table t stored as csv location '/etc/passwd'", "42601"),
        ("select * from '/etc/passwd'", "42P01"),
        ("select * from read_csv('/etc/passwd')", "42883"),
        ("select * from no_such_table", "42P01"),
        ("select no_such_function(1)", "42883"),
        ("select no_such_column from audit_events", "42703"),
        // Would silently answer NULL (datafusion-postgres' rewriting): refused.
        (
            "select a.id, (select count(*) from audit_events b where b.actor_id = a.actor_id) from audit_events a",
            "0A000",
        ),
    ] {
        let err = pg.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
    }
    let rows = pg.query(&format!("select count(*) from audit_events where {APP}"), &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0, "the table is still there");
}

#[test]
fn a_query_over_its_memory_limit_fails_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 20_000, 3);
    let server = Server::start(&data, &["--query-memory-bytes", "65536"]);
    let join = server.sql("select count(*) from audit_events a join audit_events b on a.id = b.id");
    let error = join.unwrap_err();
    assert!(error.contains("query memory limit of 65536 bytes reached"), "{error}");
    assert!(error.contains("--query-memory-bytes"), "the error says what to change: {error}");
    assert_eq!(server.sql(&format!("select count(*) from audit_events where {APP}")).unwrap(), "20000\n");
}

#[tokio::test]
async fn runaway_statements_are_stopped_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 3_000, 3);
    let server = Server::start(&data, &["--statement-timeout-ms", "500", "--max-result-rows", "2500"]);
    let runaway = "select count(*) from audit_events a, generate_series(1, 10000000) g where a.seq + g.value > 0";
    let error = server.sql(runaway).unwrap_err();
    assert!(error.contains("statement timeout of 500 ms"), "{error}");
    assert!(error.contains("--statement-timeout-ms"), "the error says what to change: {error}");

    let error = server.sql("select * from audit_events").unwrap_err();
    assert!(error.contains("more than 2500 rows"), "{error}");
    assert!(error.contains("--max-result-rows"), "the error says what to change: {error}");
    assert_eq!(server.sql("select count(*) from (select id from audit_events limit 2500) t").unwrap(), "2500\n");

    // A user's own statement timeout replaces the server's, for that user only.
    drop(server);
    add_user(&data, "patient", &["--admin", "--statement-timeout-ms", "60000"]);
    add_user(&data, "hasty", &["--admin", "--statement-timeout-ms", "200"]);
    let server = Server::start(&data, &["--statement-timeout-ms", "500", "--max-result-rows", "2500"]);
    let error = server.sql_as("hasty", runaway).unwrap_err();
    assert!(error.contains("statement timeout of 200 ms"), "{error}");
    let explain = "explain select count(*) from audit_events";
    assert!(server.sql_as("patient", explain).unwrap().contains("timeout_ms=60000"));
    assert!(server.sql_as("hasty", explain).unwrap().contains("timeout_ms=200"));
    assert!(server.sql(explain).unwrap().contains("timeout_ms=500"), "others keep the server's");

    // The server still takes events and answers while and after queries were stopped.
    let http = server.http();
    let after = event("after-runaway", "acme", "u1", "page.viewed", 0).to_string();
    let (status, body) = post(&http, &server.events_url(), after).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.sql("select count(*) from audit_events where id = 'after-runaway'").unwrap(), "1\n");
}

/// What the server logs when a cancel request names one of its connections.
/// A statement that runs far longer than any test waits.
const RUNAWAY: &str = "select count(*) from audit_events a, generate_series(1, 100000000) g where a.seq + g.value > 0";

/// Runs [`RUNAWAY`] on `client`, sends a cancel request for it half a second
/// in, and returns the statement's error.
async fn cancelled_runaway(client: &tokio_postgres::Client) -> tokio_postgres::Error {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let error = client.query_one(RUNAWAY, &[]).await.unwrap_err();
    canceller.await.unwrap();
    error
}

const HANDLED_CANCEL: &str = "canceling the running statement on request";

#[tokio::test]
async fn a_cancel_request_stops_the_running_statement_and_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 3_000, 3);
    let server = Server::start(&data, &[]);
    let client = server.pg().await;

    // A cancel before any statement runs cancels nothing later. The protocol
    // never answers a cancel request, so wait for the server to have handled
    // it: otherwise it may arrive during the next statement and rightly
    // cancel that one.
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    server.wait_for_log(HANDLED_CANCEL, 1);
    let count = format!("select count(*) from audit_events where {APP}");
    let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 3_000);

    // Cancel requests name a connection: a second one opened later must not
    // take over the first one's pid.
    let bystander = server.pg().await;
    let started = std::time::Instant::now();
    let error = cancelled_runaway(&client).await;
    let message = error.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| error.to_string());
    assert!(message.contains("canceling statement due to user request"), "{message}");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "query_canceled, as PostgreSQL answers");
    // Well before the 60 s statement timeout: execution stopped, not only planning.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());

    // Another connection's cancel request reaches only its own statements.
    let other = server.pg().await;
    other.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    server.wait_for_log(HANDLED_CANCEL, 3);
    drop(other);

    // The connection goes on; the next statement is not canceled.
    let n: i64 = client.query_one("select count(*) from audit_events where org_id = 'acme'", &[]).await.unwrap().get(0);
    assert!(n > 0);
    let n: i64 = bystander.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 3_000);
}

#[tokio::test]
async fn clients_past_the_connection_limit_are_told_why_and_cancel_requests_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 3_000, 5);
    let server = Server::start(&data, &["--max-pg-connections", "2"]);
    let first = server.pg().await;
    let second = server.pg().await;

    // As PostgreSQL answers, to drivers and to psql.
    let error = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.err().expect("refused");
    let db = error.as_db_error().unwrap_or_else(|| panic!("a server error, not {error}"));
    assert_eq!((db.code().code(), db.message()), ("53300", "sorry, too many clients already"));
    let refused = server.sql("select 1").unwrap_err();
    assert!(refused.contains("sorry, too many clients already"), "{refused}");

    // A cancel request is no session: it reaches its statement while the
    // server is full.
    let error = cancelled_runaway(&first).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");

    // The sessions that are in go on, and a closed one frees its slot.
    let count = format!("select count(*) from audit_events where {APP}");
    let n: i64 = second.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 3_000);
    drop(first);
    let third = loop {
        match tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                break client;
            }
            // The closed session's slot is given back once the server saw it go.
            Err(e) if e.code().map(|c| c.code()) == Some("53300") => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let n: i64 = third.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 3_000);
}
