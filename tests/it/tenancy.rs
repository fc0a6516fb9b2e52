//! An organisation's analyst who wants another organisation's events, tried
//! as an attacker would, against the real binary: through values in error
//! messages, yes/no oracles in errors and in `EXPLAIN`, metadata in
//! `EXPLAIN ANALYZE`, settings that change the engine, and writes past the
//! read-only gate. Each probe runs with the other organisation's events in
//! sealed segments and in the buffer, over the simple and the extended
//! protocol; no planted marker may appear in any answer, error, notice or
//! plan, nor in the attacker's own records of access.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use crate::harness::{Server, add_user, event, post};

/// Planted in globex's events and in an admin's statement.
const NAME: &str = "Gx Name Q7Z1";
const TITLE: &str = "Gx Title K8W2";
const ATTR: &str = "Gx Attr P3M9";
const ADMIN_SQL: &str = "Adm Sql V5N4";
pub const MARKERS: [&str; 4] = [NAME, TITLE, ATTR, ADMIN_SQL];

/// The values an attacker's probes read from other organisations' rows.
const COLUMNS: [&str; 5] =
    ["actor_name", "content_title", "attributes", "json_get_str(attributes, 'k')", "json_get_str(attributes, 'sql')"];

/// A conjunct true on globex's planted rows and on no row of acme, and one
/// true nowhere: an oracle's two questions.
const PLANTED_TRUE: &str = "actor_name like 'Gx Name Q7%'";
const PLANTED_FALSE: &str = "actor_name like 'Gx Name Q8%'";

pub const ACME_EVENTS: i64 = 6;

/// [`ACME_EVENTS`] events of acme's, and as many of globex's carrying the
/// markers, as one NDJSON body.
pub fn planted_events() -> String {
    let mut lines = Vec::new();
    for i in 0..ACME_EVENTS {
        lines.push(event(&format!("a{i}"), "acme", &format!("acme-u{i}"), "jira.issue.viewed", i));
        let mut secret = event(&format!("g{i}"), "globex", &format!("globex-u{i}"), "confluence.page.viewed", i);
        secret["actor_name"] = json!(NAME);
        secret["content_title"] = json!(TITLE);
        secret["content_id"] = json!(format!("globex-c{i}"));
        secret["attributes"] = json!({ "k": ATTR });
        lines.push(secret);
    }
    lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
}

/// A server whose data directory holds acme's and globex's events (globex's
/// with the markers) and an admin's statement naming [`ADMIN_SQL`]; with
/// `sealed`, they lie in segments, else in the buffer.
pub async fn planted(dir: &std::path::Path, sealed: bool) -> Server {
    let data = dir.join(if sealed { "sealed" } else { "buffered" });
    add_user(&data, "acme-analyst", &["--org", "acme"]);
    let seal_rows = if sealed { "4" } else { "1000000" };
    let server = Server::start(&data, &["--seal-max-buffered-rows", seal_rows, "--statement-timeout-ms", "20000"]);
    assert_eq!(post(&server.http(), &server.events_url(), planted_events()).await.0, 200);
    let admin = server.pg().await;
    admin.simple_query(&format!("select '{ADMIN_SQL}' as probe")).await.unwrap();
    // The admin's record is stored (and, with small seals, sealed) before the attack.
    let recorded = format!(
        "select count(*) from audit_events where org_id = '_auditlake' and attributes like '%{ADMIN_SQL}%' \
         and position('count(*)' in attributes) = 0"
    );
    assert_eq!(server.sql_until(&recorded, "1\n"), "1\n");
    server
}

/// An analyst's connection whose notices are kept.
struct Attacker {
    client: tokio_postgres::Client,
    notices: Arc<Mutex<Vec<String>>>,
}

impl Attacker {
    async fn connect(server: &Server) -> Attacker {
        let (client, mut connection) = tokio_postgres::connect(&server.url_as("acme-analyst"), NoTls).await.unwrap();
        let notices = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&notices);
        tokio::spawn(async move {
            while let Some(message) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notice(notice)) => kept.lock().unwrap().push(notice.message().to_string()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Attacker { client, notices }
    }

    /// Everything the server said to `sql` over the simple protocol: rows,
    /// or the error's code, message, detail and hint.
    async fn simple(&self, sql: &str) -> String {
        match self.client.simple_query(sql).await {
            Ok(messages) => messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(error) => error_text(&error),
        }
    }
}

fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "ERROR {}: {} {} {}",
            db.code().code(),
            db.message(),
            db.detail().unwrap_or_default(),
            db.hint().unwrap_or_default()
        ),
        None => format!("ERROR {error}"),
    }
}

/// What leaked through `what`, if any marker is in `text`.
pub fn leaked(what: &str, text: &str) -> Option<String> {
    MARKERS.iter().find(|m| text.contains(*m)).map(|marker| format!("{marker:?} leaked through {what}:\n{text}"))
}

/// Probes whose errors would carry a value of the row they failed on.
pub fn value_probes() -> Vec<String> {
    let mut probes = Vec::new();
    for c in COLUMNS {
        let other = |fallback: &str| format!("case when org_id <> 'acme' then {c} else '{fallback}' end");
        probes.extend([
            format!("select count(*) from audit_events where cast({} as int) = 1", other("1")),
            format!("select count(*) from audit_events where arrow_cast({}, 'Int64') > 0", other("1")),
            format!(
                "select count(*) from audit_events where to_timestamp({}) is not null",
                other("2026-01-01T00:00:00Z")
            ),
            format!("select count(*) from audit_events where regexp_like('x', {} || '(')", other("x")),
            format!("select max(cast({} as int)) from audit_events", other("1")),
            format!("select sum(cast({} as int)) over (order by seq) from audit_events", other("1")),
            format!(
                "select count(*) from audit_events where 1 in (select cast({} as int) from audit_events)",
                other("1")
            ),
            format!("select count(*) from audit_events group by cast({} as int)", other("1")),
            // Lookups take a road of their own (`query::lookup_path`): the
            // same traps in its select list and in the filters above its scan.
            format!(
                "select cast({} as int) from audit_events where actor_id in ('acme-u1', 'globex-u1') \
                 order by seq limit 5",
                other("1")
            ),
            format!(
                "select seq from audit_events where content_id in ('globex-c1', 'globex-c2') \
                 and cast({} as int) = 1 order by time desc limit 3",
                other("1")
            ),
        ]);
    }
    probes.push(
        "select count(*) from audit_events a join audit_events b \
         on a.seq = cast(case when b.org_id <> 'acme' then b.actor_name else '1' end as bigint)"
            .into(),
    );
    probes
}

/// Pairs of probes that differ only in a condition true on globex's rows or
/// on none: an error, a count or a plan that differs answers the question.
pub fn oracle_pairs() -> Vec<(String, String)> {
    let shapes = [
        "select count(*) from audit_events where 1 / (case when org_id <> 'acme' and COND then 0 else 1 end) = 1",
        "select count(*) from audit_events where substr('x', 1, case when org_id <> 'acme' and COND then -1 else 1 end) = 'x'",
        "select count(*) from audit_events where (case when org_id <> 'acme' and (COND) then cast(org_id as int) \
         when org_id = 'acme' then 0 else 1 end) = 0",
        "explain select * from audit_events where (case when org_id <> 'acme' and (COND) then cast(org_id as int) \
         when org_id = 'acme' then 0 else 1 end) = 1",
        "explain analyze select * from audit_events where (case when org_id <> 'acme' and (COND) then \
         cast(org_id as int) when org_id = 'acme' then 0 else 1 end) = 1",
        "explain analyze select * from audit_events where COND",
        "explain analyze select count(*) from audit_events where COND or actor_id = 'acme-u1'",
        "explain select * from audit_events where COND",
        "explain verbose select * from audit_events where COND",
    ];
    // Only the applications' events: the attacker's own records of access
    // grow with every statement.
    let shapes =
        shapes.map(|shape| shape.replacen(" where ", " where (category is distinct from 'audit_access') and ", 1));
    let mut pairs: Vec<(String, String)> = shapes
        .iter()
        .map(|shape| (shape.replace("COND", PLANTED_TRUE), shape.replace("COND", PLANTED_FALSE)))
        .collect();
    // What the manifest, bloom filters and content indexes know of others.
    for (yes, no) in [
        ("org_id > 'globew'", "org_id > 'globex'"),
        ("actor_id = 'globex-u1'", "actor_id = 'nobody-u1'"),
        ("content_id = 'globex-c1'", "content_id = 'nobody-c1'"),
        ("actor_id > 'globex-u4'", "actor_id > 'zzzzzz'"),
    ] {
        for shape in [
            "explain analyze select * from audit_events where (category is distinct from 'audit_access') and COND",
            "explain select count(*) from audit_events where COND",
        ] {
            pairs.push((shape.replace("COND", yes), shape.replace("COND", no)));
        }
    }
    pairs
}

/// `text` with the differing literals of an oracle pair and every duration
/// masked: what may legitimately differ between two runs.
pub fn masked(text: &str) -> String {
    let mut text = text.to_string();
    for literal in ["Gx Name Q7%", "Gx Name Q8%", "globew", "globex-u1", "nobody-u1", "globex-c1", "nobody-c1"] {
        text = text.replace(literal, "?");
    }
    text = text.replace("globex-u4", "?").replace("zzzzzz", "?").replace("globex", "?");
    text.split_inclusive([' ', ',', '[', ']', '\n'])
        .map(|token| {
            let (body, end) = token.split_at(token.len() - token.chars().last().map_or(0, char::len_utf8));
            let value = body.rsplit('=').next().unwrap_or(body);
            let number = value.trim_end_matches(|c: char| c.is_alphabetic() || c == 'µ');
            let is_duration = body.contains('=')
                && !number.is_empty()
                && number.chars().all(|c| c.is_ascii_digit() || c == '.')
                && ["ns", "µs", "ms", "s"].contains(&&value[number.len()..]);
            if is_duration { format!("{}T{end}", &body[..body.len() - value.len()]) } else { token.to_string() }
        })
        .collect()
}

/// Every leak the probes find, described.
async fn attack(server: &Server, label: &str) -> Vec<String> {
    let mut leaks = Vec::new();
    let attacker = Attacker::connect(server).await;
    let acme_count = format!("{ACME_EVENTS}");
    let app = "(category is distinct from 'audit_access')";

    for probe in value_probes() {
        let answer = attacker.simple(&probe).await;
        leaks.extend(leaked(&format!("{label}: {probe}"), &answer));
    }
    // The same over the extended protocol, with bound parameters.
    let bound =
        "select count(*) from audit_events where cast(case when org_id <> $1 then actor_name else '1' end as int) = $2";
    let statement = attacker.client.prepare(bound).await.unwrap();
    for _ in 0..2 {
        let answer = match attacker.client.query(&statement, &[&"acme", &1i32]).await {
            Ok(rows) => format!("{}", rows[0].get::<_, i64>(0)),
            Err(error) => error_text(&error),
        };
        leaks.extend(leaked(&format!("{label}: extended {bound}"), &answer));
    }
    let attributes = "select count(*) from audit_events where cast(json_get_str(case when org_id <> $1 then attributes \
                      else '{\"k\": \"1\"}' end, $2) as int) = 1";
    let answer = match attacker.client.query(attributes, &[&"acme", &"k"]).await {
        Ok(rows) => format!("{}", rows[0].get::<_, i64>(0)),
        Err(error) => error_text(&error),
    };
    leaks.extend(leaked(&format!("{label}: extended {attributes}"), &answer));

    for (yes, no) in oracle_pairs() {
        let (a, b) = (attacker.simple(&yes).await, attacker.simple(&no).await);
        leaks.extend(leaked(&format!("{label}: {yes}"), &a));
        if masked(&a) != masked(&b) {
            leaks.push(format!("{label}: the answers tell globex's rows apart:\n{yes}\n{a}\n{no}\n{b}"));
        } else if a.starts_with("ERROR") {
            leaks.push(format!("{label}: {yes}: {a}"));
        }
    }
    // The division probe counts acme's rows: nothing else was evaluated.
    let division = format!(
        "select count(*) from audit_events where {app} and 1 / (case when org_id <> 'acme' and {PLANTED_TRUE} then 0 else 1 end) = 1"
    );
    let counted = attacker.simple(&division).await;
    if counted != acme_count {
        leaks.push(format!("{label}: {division}: {counted}, not acme's {acme_count}"));
    }

    // Settings that would move the scope's filter are refused, and the
    // probes fail the same way after trying them.
    for set in ["set datafusion.execution.parquet.pushdown_filters = false", "set datafusion.optimizer.max_passes = 0"]
    {
        let answer = attacker.simple(set).await;
        if !answer.starts_with("ERROR 42501") {
            leaks.push(format!("{label}: {set} was not refused: {answer}"));
        }
    }
    let again = attacker.simple(&value_probes()[0]).await;
    leaks.extend(leaked(&format!("{label}: after SET"), &again));

    // No table comes into being.
    for write in [
        "select * into stolen from audit_events",
        "copy (select 1 as x into copied) to stdout",
        "with t as (select actor_name from audit_events) select * into kept from t",
    ] {
        let answer = attacker.simple(write).await;
        if !answer.starts_with("ERROR 25006") {
            leaks.push(format!("{label}: {write} was not refused: {answer}"));
        }
    }
    if !attacker.simple("select count(*) from stolen").await.starts_with("ERROR 42P01") {
        leaks.push(format!("{label}: a session table `stolen` exists"));
    }

    let notices = attacker.notices.lock().unwrap().join("\n");
    leaks.extend(leaked(&format!("{label}: notices"), &notices));

    // The attacker's own records of access carry none of it either.
    attacker.simple("select 'attack over'").await;
    let records = "select count(*) from audit_events where org_id = 'acme' and category = 'audit_access' \
                   and attributes like '%attack over%'";
    assert_eq!(server.sql_until(records, "1\n"), "1\n", "{label}");
    let stored = server
        .sql("select coalesce(attributes, '') from audit_events where org_id = 'acme' and category = 'audit_access'")
        .unwrap();
    assert!(stored.lines().count() > 40, "{label}: {stored}");
    leaks.extend(leaked(&format!("{label}: the attacker's records"), &stored));
    leaks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisations_user_learns_nothing_of_another_organisations_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut leaks = Vec::new();
    for sealed in [false, true] {
        let server = planted(dir.path(), sealed).await;
        // The markers are there to be found: the admin reads them.
        let admin = server.sql("select count(*) from audit_events where actor_name = 'Gx Name Q7Z1'").unwrap();
        assert_eq!(admin, format!("{ACME_EVENTS}\n"));
        // Where globex's rows lie, as the admin's plan tells.
        let plan = "explain analyze select * from audit_events where org_id = 'globex'";
        let wanted = if sealed { "buffered_batches=0" } else { "segments_read=0" };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.sql(plan).unwrap().contains(wanted) {
            assert!(Instant::now() < deadline, "never {wanted}: {}", server.sql(plan).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        leaks.extend(attack(&server, if sealed { "sealed" } else { "buffered" }).await);
    }
    assert!(leaks.is_empty(), "{} leaks:\n\n{}", leaks.len(), leaks.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisation_users_may_set_what_clients_send_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "acme-analyst", &["--org", "acme"]);
    let server = Server::start(&data, &["--statement-timeout-ms", "3000"]);
    let body = (0..20).map(|i| event(&format!("e{i}"), "acme", "u", "a.b", i).to_string()).collect::<Vec<_>>();
    assert_eq!(post(&server.http(), &server.events_url(), body.join("\n")).await.0, 200);
    let acme = Attacker::connect(&server).await;
    let admin = server.pg().await;

    // What psql, JDBC, psycopg, node pg, SQLAlchemy, DBeaver, Grafana,
    // Metabase and pgAdmin send when they connect.
    for set in [
        "SET extra_float_digits = 3",
        "SET extra_float_digits = 2",
        "SET application_name = 'PostgreSQL JDBC Driver'",
        "SET application_name = 'DBeaver 25.1.5 - Main <postgres>'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "set time zone 'UTC'",
        "SET TimeZone = 'UTC'",
        "SET DateStyle = 'ISO'",
        "SET DateStyle = 'ISO, MDY'",
        "SET intervalstyle = 'postgres'",
        "SET bytea_output = 'hex'",
        "SET search_path = public",
        "SET client_encoding = 'UTF8'",
        "SET client_encoding TO 'UNICODE'",
        "SET NAMES 'UTF8'",
        "SET client_min_messages = notice",
        "SET standard_conforming_strings = on",
        "SET statement_timeout = 2000",
        "SET lock_timeout = 0",
        "SET default_transaction_read_only = on",
    ] {
        let answer = acme.simple(set).await;
        assert!(!answer.starts_with("ERROR"), "{set}: {answer}");
    }
    for (set, code) in [
        ("set datafusion.execution.parquet.pushdown_filters = false", "42501"),
        ("set datafusion.execution.target_partitions = 64", "42501"),
        ("set auditlake.lookup_path = false", "42501"),
        ("set datafusion.runtime.memory_limit = '8G'", "42501"),
        ("set datafusion.runtime.temp_directory = '/tmp/x'", "42501"),
        ("set work_mem = '1GB'", "42501"),
        ("set no_such_setting = 1", "42501"),
        ("set role tester", "42501"),
        ("set session authorization tester", "42501"),
        ("set client_encoding = 'LATIN1'", "0A000"),
        ("set standard_conforming_strings = off", "42501"),
        ("set statement_timeout = 'soon'", "22023"),
    ] {
        let answer = acme.simple(set).await;
        assert!(answer.starts_with(&format!("ERROR {code}")), "{set}: {answer}");
    }
    // Also over the extended protocol.
    let error = acme.client.execute("set datafusion.execution.target_partitions = 64", &[]).await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("42501"), "{error}");
    // Admins keep DataFusion's settings, but not the server's limits.
    admin.batch_execute("set datafusion.execution.target_partitions = 4").await.unwrap();
    admin.batch_execute("set auditlake.lookup_path = false").await.unwrap();
    // A mistyped engine setting is an error, not a silent `SET`.
    for wrong in ["set auditlake.lookup_path = banana", "set datafusion.execution.no_such_option = 1"] {
        let error = admin.batch_execute(wrong).await.unwrap_err();
        assert_eq!(error.code().map(|c| c.code()), Some("22023"), "{wrong}: {error}");
    }
    let error = admin.batch_execute("set datafusion.runtime.memory_limit = '8G'").await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("42501"), "{error}");

    // statement_timeout lowers the session's limit and never raises it.
    let runaway = "select count(*) from audit_events a, generate_series(1, 1000000000) g where a.seq + g.value > 0";
    let show = "show statement_timeout";
    assert_eq!(acme.simple(show).await, "2000ms");
    acme.simple("set statement_timeout = '300ms'").await;
    assert_eq!(acme.simple(show).await, "300ms");
    let started = Instant::now();
    let answer = acme.simple(runaway).await;
    assert!(answer.starts_with("ERROR 57014") && answer.contains("300 ms"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    for raise in ["set statement_timeout = '1h'", "set statement_timeout = 0", "set statement_timeout to default"] {
        acme.simple(raise).await;
        assert_eq!(acme.simple(show).await, "3000ms", "{raise}");
    }
    let started = Instant::now();
    let answer = acme.simple(runaway).await;
    assert!(answer.starts_with("ERROR 57014") && answer.contains("3000 ms"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
