//! Real Postgres clients against the real binary, each running an
//! investigation with a bound parameter as an organisation's analyst:
//! psql (meta-commands, `\copy`), psycopg 3 + SQLAlchemy + pandas, node `pg`,
//! and the PostgreSQL JDBC driver with the metadata calls BI tools make.
//! `scripts/setup.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Server, TEST_PASSWORD, add_user, post, venv_bin};

const FIXTURE: &str = include_str!("../fixtures/incidents.ndjson");
pub const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
/// The account under investigation, and what it did (from the fixture).
pub const ACTOR: &str = "acme-u1";
pub const BY_ACTION: [(&str, u32, &str); 4] = [
    ("auth.login.failed", 3, "2026-11-03T02:02:00Z"),
    ("auth.login.succeeded", 2, "2026-11-03T02:03:00Z"),
    ("confluence.page.exported", 5, "2026-11-03T02:09:00Z"),
    ("confluence.page.viewed", 1, "2026-10-05T09:10:00Z"),
];

/// A server holding the fixture (27 events of acme, 1 of globex), with the
/// analyst `analyst` of org acme.
pub async fn server(data: &Path) -> Server {
    add_user(data, "analyst", &["--org", "acme"]);
    let server = Server::start(data, &[]);
    let (status, body) = post(&server.http(), &server.events_url(), FIXTURE.to_owned()).await;
    assert_eq!(status, 200, "{body}");
    server
}

pub fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command:?}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn cache_dir(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache").join(name)
}

#[tokio::test]
#[ignore = "tier 2: needs the real psql (scripts/test.sh runs it)"]
async fn psql_meta_commands_and_copy_to_a_client_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let psql = |commands: &[&str]| {
        let mut psql = Command::new("psql");
        psql.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &server.url_as("analyst")]);
        for command in commands {
            psql.args(["-c", command]);
        }
        run(&mut psql)
    };
    let tables = psql(&["\\dt"]);
    assert!(tables.contains("public | audit_events | table"), "{tables}");
    let described = psql(&["\\d audit_events"]);
    for column in ["time          | timestamp with time zone |           | not null", "attributes    | text"] {
        assert!(described.contains(column), "{column:?} in\n{described}");
    }
    assert!(psql(&["\\l"]).contains("auditlake"));
    assert!(psql(&["\\dn"]).contains("public"));
    let expanded = psql(&[
        "\\x",
        &format!("select actor_id, count(*) as n from audit_events where actor_id = '{ACTOR}' group by actor_id"),
    ]);
    assert!(expanded.contains("actor_id | acme-u1") && expanded.contains("n        | 11"), "{expanded}");

    // \copy runs COPY ... TO STDOUT and writes on the client's side.
    let csv = dir.path().join("timeline.csv");
    let copy = format!(
        "\\copy (select time, action, source_ip from audit_events where actor_id = '{ACTOR}' and action like 'auth.%' \
         order by time) to '{}' csv header",
        csv.display()
    );
    assert_eq!(psql(&[&copy]), "COPY 5\n");
    // COPY is scoped like any statement: the fixture's globex event stays out.
    let orgs = dir.path().join("orgs.csv");
    let copy = format!("\\copy (select distinct org_id from audit_events) to '{}' csv", orgs.display());
    assert_eq!(psql(&[&copy]), "COPY 1\n");
    assert_eq!(std::fs::read_to_string(&orgs).unwrap(), "acme\n");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "time,action,source_ip\n\
         2026-10-05 09:00:00.000000+00,auth.login.succeeded,10.0.0.1\n\
         2026-11-03 02:00:00.000000+00,auth.login.failed,203.0.113.50\n\
         2026-11-03 02:01:00.000000+00,auth.login.failed,203.0.113.50\n\
         2026-11-03 02:02:00.000000+00,auth.login.failed,203.0.113.50\n\
         2026-11-03 02:03:00.000000+00,auth.login.succeeded,203.0.113.50\n"
    );

    // What psql's tab completion asks for table and column names.
    let completion = psql(&[
        "SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'S', 'v', 'm', \
         'f', 'p') AND substring(pg_catalog.quote_ident(c.relname),1,3)='aud' AND \
         pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000",
        "SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute a, pg_catalog.pg_class c WHERE c.oid = \
         a.attrelid AND a.attnum > 0 AND NOT a.attisdropped AND substring(pg_catalog.quote_ident(attname),1,5)='actor' \
         AND (pg_catalog.quote_ident(relname)='audit_events' OR '\"' || relname || '\"'='audit_events') AND \
         pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000",
    ]);
    for name in ["audit_events", "actor_id", "actor_name", "actor_type"] {
        assert!(completion.contains(name), "{name} in\n{completion}");
    }
}

#[tokio::test]
#[ignore = "tier 2: needs psycopg, SQLAlchemy and pandas from the venv (scripts/test.sh runs it)"]
async fn python_psycopg_sqlalchemy_and_pandas() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let out = run(Command::new(venv_bin("python"))
        .arg(format!("{CLIENTS}/python_client.py"))
        .args([&server.url_as("analyst").replace("postgres://", "postgresql://"), ACTOR]));
    let mut expected = String::from("psycopg types [25, 20, 1184]\n");
    for (action, n, last) in BY_ACTION {
        expected += &format!("psycopg {action} {n} {last}\n");
    }
    expected += "psycopg other orgs 0\n\
                 psycopg pg_attribute key [(1, 0), (5, 1)]\n\
                 sqlalchemy tables ['audit_events']\n\
                 sqlalchemy schemas ['public']\n\
                 sqlalchemy columns 22 ['time', 'received_at', 'id']\n\
                 sqlalchemy column time TIMESTAMP(timezone=True) not null None\n\
                 sqlalchemy column actor_id TEXT() not null None\n\
                 sqlalchemy column actor_name TEXT() null None\n\
                 sqlalchemy column seq BIGINT() not null None\n\
                 sqlalchemy primary key {'name': None, 'constrained_columns': []}\n\
                 sqlalchemy count 11\n\
                 pandas ['action', 'n', 'last'] ['auth.login.failed', 'auth.login.succeeded', \
                 'confluence.page.exported', 'confluence.page.viewed'] [3, 2, 5, 1]\n\
                 pandas last datetime64[ns, UTC] 2026-11-03T02:09:00Z\n";
    assert_eq!(out, expected);
}

#[tokio::test]
#[ignore = "tier 2: needs node and its `pg` package (scripts/test.sh runs it)"]
async fn node_pg() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let modules = cache_dir("auditlake-node").join("node_modules");
    assert!(modules.join("pg").exists(), "node pg is missing: run `bash scripts/setup.sh`");
    let out = run(Command::new("node")
        .arg(format!("{CLIENTS}/node_client.js"))
        .args([&server.url_as("analyst"), ACTOR])
        .env("NODE_PATH", &modules));
    let mut expected = String::from("node types 25,20,1184\n");
    for (action, n, last) in BY_ACTION {
        expected += &format!("node {action} {n} {last}\n");
    }
    assert_eq!(out, expected);
}

#[tokio::test]
#[ignore = "tier 2: needs a JDK and the PostgreSQL JDBC driver (scripts/test.sh runs it)"]
async fn jdbc_metadata_and_prepared_statements() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir.path().join("data")).await;
    let jar = "/usr/share/java/postgresql.jar";
    assert!(Path::new(jar).exists(), "the JDBC driver is missing: run `bash scripts/setup.sh`");
    let classes = dir.path().join("classes");
    run(Command::new("javac").arg("-d").arg(&classes).arg(format!("{CLIENTS}/JdbcClient.java")));
    let url = format!("jdbc:postgresql://127.0.0.1:{}/auditlake", server.pg_port);
    let out = run(Command::new("java").arg("-cp").arg(format!("{}:{jar}", classes.display())).args([
        "JdbcClient",
        &url,
        "analyst",
        TEST_PASSWORD,
        ACTOR,
    ]));
    let mut expected = String::from(
        "jdbc product PostgreSQL\n\
         jdbc table public.audit_events\n\
         jdbc column time timestamptz 93 nullable=NO\n\
         jdbc column actor_id text 12 nullable=NO\n\
         jdbc column seq int8 -5 nullable=NO\n",
    );
    for (action, n, last) in BY_ACTION {
        expected += &format!("jdbc {action} {n} {last}\n");
    }
    assert_eq!(out, expected);
}
