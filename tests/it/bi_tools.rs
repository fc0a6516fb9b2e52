//! What DBeaver, Grafana, Metabase and pgAdmin send when they connect and
//! look at the schema, replayed over the wire as an organisation's analyst.
//!
//! The transcripts are the ones datafusion-postgres records in its own test
//! suite (`tests/{dbeaver,grafana,metabase,pgadmin}.rs` of the exact version
//! we build with). They are read from that crate's source in the cargo
//! registry, not copied here, so they follow the dependency.

use std::path::PathBuf;
use std::process::Command;

use crate::clients::{CLIENTS, run};
use crate::harness::{Server, add_user, venv_bin};

/// Where the source of the datafusion-postgres we build with lies: its
/// version from Cargo.lock, its sources in cargo's registry (where building
/// put them; `cargo metadata` would want every platform's crates too).
fn datafusion_postgres_dir() -> PathBuf {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let entry = lock.split("[[package]]").find(|p| p.contains("name = \"datafusion-postgres\"")).expect("locked");
    let version = entry.split("version = \"").nth(1).and_then(|v| v.split('"').next()).expect("a version");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let wanted = format!("datafusion-postgres-{version}");
    std::fs::read_dir(cargo_home.join("registry/src"))
        .unwrap()
        .map(|index| index.unwrap().path().join(&wanted))
        .find(|dir| dir.join("Cargo.toml").exists())
        .unwrap_or_else(|| panic!("{wanted} is not in {}/registry/src", cargo_home.display()))
}

/// The string literals of the `…_QUERIES: &[&str] = &[ … ];` array of a Rust
/// test file: raw (`r#"…"#`) and ordinary ones, with their escapes.
fn transcript(source: &str) -> Vec<String> {
    let start = source.find("_QUERIES: &[&str] = &[").expect("a _QUERIES array");
    let body = &source[start..];
    let body = &body[body.find("&[").unwrap() + 2..body.find("\n];").expect("the end of the array")];
    let mut queries = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(['"', '/']) {
        let (before, from) = rest.split_at(at);
        if from.starts_with("//") {
            rest = from.find('\n').map_or("", |end| &from[end..]);
        } else if let Some(after) = from.strip_prefix('/') {
            rest = after;
        } else if before.ends_with("r#") {
            let end = from[1..].find("\"#").expect("raw string end") + 1;
            queries.push(from[1..end].to_string());
            rest = &from[end + 2..];
        } else {
            let mut query = String::new();
            let mut chars = from[1..].char_indices();
            let end = loop {
                match chars.next().expect("string end") {
                    (i, '"') => break i + 2,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => query.push('\n'),
                        't' => query.push('\t'),
                        '\n' => {
                            // A line continuation: skip the next line's indentation.
                            let mut peek = chars.clone();
                            while peek.next().is_some_and(|(_, c)| c.is_whitespace()) {
                                chars = peek.clone();
                            }
                        }
                        other => query.push(other),
                    },
                    (_, c) => query.push(c),
                }
            };
            queries.push(query);
            rest = &from[end..];
        }
    }
    queries
}

#[test]
fn transcripts_are_read_whole() {
    let source = "const X_QUERIES: &[&str] = &[\n    // a comment with \"quotes\"\n    \"SET a = 'b'\",\n    \
                  r#\"SELECT \"x\"\n FROM t\"#,\n    \"SELECT \\\"y\\\" \\\n      FROM u\",\n];\n";
    assert_eq!(transcript(source), ["SET a = 'b'", "SELECT \"x\"\n FROM t", "SELECT \"y\" FROM u"]);
}

/// An empty server and the client of acme's analyst `analyst`, as whom
/// the tools connect (the directory lives as long as the server).
async fn analyst_of_acme() -> (tempfile::TempDir, Server, tokio_postgres::Client) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "analyst", &["--org", "acme"]);
    let server = Server::start(&data, &[]);
    let client = server.pg_as("analyst").await.unwrap();
    (dir, server, client)
}

#[tokio::test]
async fn bi_tool_start_up_and_introspection_sql_answers_without_error() {
    let (_dir, _server, client) = analyst_of_acme().await;
    let tests = datafusion_postgres_dir().join("tests");
    let mut replayed = 0;
    let mut failed = Vec::new();
    for tool in ["dbeaver", "grafana", "metabase", "pgadmin"] {
        let source = std::fs::read_to_string(tests.join(format!("{tool}.rs"))).unwrap();
        let queries = transcript(&source);
        assert!(queries.len() >= 2, "{tool}: {queries:?}");
        for query in queries {
            if let Err(e) = client.simple_query(&query).await {
                let error = e.as_db_error().map_or(e.to_string(), |d| d.to_string());
                failed.push(format!("{tool} sent:\n{query}\nand got: {error}"));
            }
            replayed += 1;
        }
    }
    assert!(replayed >= 20, "replayed {replayed} statements");
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));

    // Answering is not enough: DBeaver's test for array types (a regproc
    // compared with a function name) must tell them apart as PostgreSQL does.
    let rows = client
        .query(
            "SELECT typname, typinput = 'pg_catalog.array_in'::regproc AS is_array FROM pg_catalog.pg_type \
             WHERE oid IN (23, 1007) ORDER BY oid",
            &[],
        )
        .await
        .unwrap();
    let answers: Vec<(String, bool)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(answers, [("int4".to_string(), false), ("_int4".to_string(), true)]);

    // Grafana's query builder offers a column as the time column by its
    // `information_schema` type, which must be PostgreSQL's name for it.
    let rows = client
        .query(
            "SELECT column_name, data_type FROM information_schema.columns c WHERE c.table_name = 'audit_events' \
             AND column_name IN ('time', 'seq', 'actor_id', 'attributes') ORDER BY column_name",
            &[],
        )
        .await
        .unwrap();
    let types: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let expected =
        [("actor_id", "text"), ("attributes", "text"), ("seq", "bigint"), ("time", "timestamp with time zone")];
    assert_eq!(types, expected.map(|(c, t)| (c.to_string(), t.to_string())));
}

/// Tools read a column's type from the description, not from the values:
/// JDBC maps `name` to a string and `"char"` to a character, tokio-postgres
/// and Npgsql decode `"char"` as one byte. PostgreSQL's types where the Arrow
/// type alone says `text` or `int4`.
#[tokio::test]
async fn catalog_columns_and_functions_are_described_by_postgresqls_types() {
    use tokio_postgres::types::Type;
    let (_dir, _server, client) = analyst_of_acme().await;
    let sql = "SELECT c.oid, c.relname, c.relkind, c.relfrozenxid, c.reltuples, n.nspname, current_database(), \
               current_schema(), NULL AS nothing FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
               ON n.oid = c.relnamespace WHERE c.relname = 'audit_events'";
    let statement = client.prepare(sql).await.unwrap();
    let described: Vec<(&str, &Type)> = statement.columns().iter().map(|c| (c.name(), c.type_())).collect();
    assert_eq!(
        described,
        [
            ("oid", &Type::OID),
            ("relname", &Type::NAME),
            ("relkind", &Type::CHAR),
            ("relfrozenxid", &Type::XID),
            ("reltuples", &Type::FLOAT4),
            ("nspname", &Type::NAME),
            ("current_database", &Type::NAME),
            ("current_schema", &Type::NAME),
            ("nothing", &Type::TEXT),
        ]
    );
    // The values decode as those types (binary results): a `"char"` is its byte.
    let row = client.query_one(&statement, &[]).await.unwrap();
    let (relname, relkind, nspname): (String, i8, String) = (row.get(1), row.get(2), row.get(5));
    assert_eq!((relname.as_str(), relkind as u8, nspname.as_str()), ("audit_events", b'r', "public"));
    let (database, nothing): (String, Option<String>) = (row.get(6), row.get(8));
    assert_eq!((database.as_str(), nothing), ("auditlake", None));

    // The session's user is the one who logged in (tools show it, and pass
    // it to `has_table_privilege`).
    let users = client.query_one("SELECT current_user, session_user, user, CURRENT_ROLE", &[]).await.unwrap();
    let named: Vec<&str> = users.columns().iter().map(|c| c.name()).collect();
    assert_eq!(named, ["current_user", "session_user", "user", "current_role"]);
    let users: Vec<String> = (0..4).map(|i| users.get(i)).collect();
    assert_eq!(users, ["analyst"; 4]);

    // Columns in PostgreSQL 15's order, holding its values and its arrays.
    let database = client.query_one("SELECT * FROM pg_catalog.pg_database WHERE datname = 'auditlake'", &[]).await;
    let database = database.unwrap();
    let names: Vec<&str> = database.columns().iter().map(|c| c.name()).collect();
    let pg15 = "oid datname datdba encoding datlocprovider datistemplate datallowconn datconnlimit datfrozenxid \
                datminmxid dattablespace datcollate datctype daticulocale datcollversion datacl";
    assert_eq!(names, pg15.split(' ').collect::<Vec<_>>());
    assert_eq!(database.get::<_, i8>("datlocprovider") as u8, b'c');
    let acl = client
        .query_one(
            "SELECT proacl FROM pg_catalog.pg_proc WHERE proname = 'pg_stat_file' AND proacl IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(acl.columns()[0].type_(), &Type::ACLITEM_ARRAY);

    // `SELECT n.oid, n.*` names both columns `oid`, as PostgreSQL does.
    let statement = client.prepare("SELECT n.oid, n.* FROM pg_catalog.pg_namespace n").await.unwrap();
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).take(3).collect();
    assert_eq!(names, ["oid", "oid", "nspname"]);
}

/// A throwaway PostgreSQL 15 (the version the endpoint emulates) on
/// loopback, from `scripts/setup.sh`'s Debian package, run as `postgres`
/// when the tests run as root (PostgreSQL refuses root).
struct Postgres15 {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres15 {
    fn command(&self, program: &str) -> std::process::Command {
        let program = format!("{PG15_BIN}/{program}");
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--", &program]);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn start() -> Postgres15 {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres15 { dir, port, as_postgres };
        let data = pg.dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if as_postgres {
            let chown = std::process::Command::new("chown").args(["-R", "postgres"]).arg(pg.dir.path()).status();
            assert!(chown.unwrap().success());
        }
        let ok = |command: &mut std::process::Command| {
            let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
            assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ok(pg.command("initdb").arg("-D").arg(&data).args(["-U", "auditlake", "--auth=trust"]));
        ok(pg.command("pg_ctl").arg("-D").arg(&data).arg("-l").arg(pg.dir.path().join("log")).args([
            "-w",
            "start",
            "-o",
            &format!("-c listen_addresses=127.0.0.1 -p {port} -k {}", pg.dir.path().display()),
        ]));
        pg
    }

    fn url(&self, database: &str) -> String {
        format!("postgresql://auditlake@127.0.0.1:{}/{database}", self.port)
    }

    async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for Postgres15 {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

/// What a statement answers, in the terms compared: its columns' names and
/// types, or that it failed.
fn shape(statement: &Result<tokio_postgres::Statement, tokio_postgres::Error>) -> String {
    match statement {
        Ok(statement) => {
            let columns: Vec<String> =
                statement.columns().iter().map(|c| format!("{} {}", c.name(), c.type_().name())).collect();
            format!("[{}]", columns.join(", "))
        }
        Err(_) => "an error".to_string(),
    }
}

#[tokio::test]
#[ignore = "tier 2: needs the PostgreSQL 15 server (scripts/test.sh runs it)"]
async fn bi_tool_transcripts_answer_in_postgresqls_shapes_and_types() {
    let (_dir, server, auditlake) = analyst_of_acme().await;

    // The same table in PostgreSQL, column for column as auditlake describes it.
    let pg = Postgres15::start();
    pg.connect("postgres").await.simple_query("create database auditlake").await.unwrap();
    let postgres = pg.connect("auditlake").await;
    let columns = auditlake
        .query(
            "select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull from pg_catalog.pg_attribute a \
             join pg_catalog.pg_class c on a.attrelid = c.oid where c.relname = 'audit_events' and a.attnum > 0 \
             order by a.attnum",
            &[],
        )
        .await
        .unwrap();
    let definitions: Vec<String> = columns
        .iter()
        .map(|row| {
            let not_null = if row.get::<_, bool>(2) { " not null" } else { "" };
            format!("\"{}\" {}{not_null}", row.get::<_, String>(0), row.get::<_, String>(1))
        })
        .collect();
    assert_eq!(definitions.len(), 22, "{definitions:?}");
    postgres.simple_query(&format!("create table audit_events ({})", definitions.join(", "))).await.unwrap();

    let tests = datafusion_postgres_dir().join("tests");
    let mut compared = 0;
    let mut differences = Vec::new();
    for tool in ["dbeaver", "grafana", "metabase", "pgadmin"] {
        let source = std::fs::read_to_string(tests.join(format!("{tool}.rs"))).unwrap();
        for query in transcript(&source) {
            let (ours, theirs) = (auditlake.prepare(&query).await, postgres.prepare(&query).await);
            if ours.is_err() && theirs.is_err() {
                // Both refuse (several statements in one string cannot be
                // prepared): compare the simple protocol's column names.
                let names = |messages: Result<Vec<tokio_postgres::SimpleQueryMessage>, _>| match messages {
                    Ok(messages) => messages
                        .iter()
                        .find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(row) => {
                                Some(row.columns().iter().map(|c| c.name().to_string()).collect::<Vec<_>>())
                            }
                            _ => None,
                        })
                        .unwrap_or_default(),
                    Err(e) => vec![format!("error {e}")],
                };
                let (ours_named, theirs_named) =
                    (names(auditlake.simple_query(&query).await), names(postgres.simple_query(&query).await));
                if ours_named != theirs_named {
                    differences.push(format!(
                        "{tool} sent:\n{query}\nauditlake: {ours_named:?}\nPostgreSQL: {theirs_named:?}"
                    ));
                }
            } else if shape(&ours) != shape(&theirs) {
                differences.push(format!(
                    "{tool} sent:\n{query}\nauditlake: {}\nPostgreSQL: {}",
                    shape(&ours),
                    shape(&theirs)
                ));
            }
            compared += 1;
        }
    }
    assert!(compared >= 20, "compared {compared} statements");

    // Every catalog table auditlake serves, described on both protocols as
    // PostgreSQL 15 describes its own (psycopg 3 sends both).
    let tables: Vec<String> = postgres
        .query(
            "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = 'pg_catalog' and c.relkind in ('r', 'v') order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let described = |url: String| {
        let out =
            run(Command::new(venv_bin("python")).arg(format!("{CLIENTS}/catalog_types.py")).arg(url).args(&tables));
        out.lines()
            .map(|line| {
                line.split_once(" [")
                    .map_or((line.to_string(), String::new()), |(key, shape)| (key.to_string(), format!("[{shape}")))
            })
            .collect::<Vec<_>>()
    };
    let ours = described(server.url_as("analyst").replace("postgres://", "postgresql://"));
    let theirs = described(pg.url("auditlake"));
    assert_eq!(ours.len(), theirs.len());
    let mut tables_compared = 0;
    for ((key, ours), (_, theirs)) in ours.iter().zip(&theirs) {
        if key.ends_with(" an error") {
            continue;
        }
        tables_compared += 1;
        if ours != theirs {
            differences.push(format!("pg_catalog.{key}:\nauditlake: {ours}\nPostgreSQL: {theirs}"));
        }
    }
    assert!(tables_compared >= 2 * 60, "compared {tables_compared} tables' descriptions");

    // Where auditlake still answers otherwise, each difference is written
    // down (a ratchet: a new difference fails, and so does one that went
    // away without being struck from the list). `AUDITLAKE_BLESS=1` rewrites it.
    let known_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pg15_differences.txt");
    let found = differences.join("\n\n====\n\n");
    if std::env::var_os("AUDITLAKE_BLESS").is_some() {
        std::fs::write(known_path, format!("{found}\n")).unwrap();
    }
    let known = std::fs::read_to_string(known_path).unwrap();
    let known: Vec<&str> = known.trim_end().split("\n\n====\n\n").filter(|d| !d.is_empty()).collect();
    let new: Vec<&String> = differences.iter().filter(|d| !known.contains(&d.as_str())).collect();
    let gone: Vec<&&str> = known.iter().filter(|k| !differences.iter().any(|d| d == *k)).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "{} of {compared} statements differ from PostgreSQL 15.\nNew:\n{new:#?}\nNo longer (strike from {known_path}):\n{gone:#?}",
        differences.len()
    );
}
