//! What DBeaver, Grafana, Metabase and pgAdmin send when they connect and
//! look at the schema, replayed over the wire as an organisation's analyst.
//!
//! The transcripts are the ones datafusion-postgres records in its own test
//! suite (`tests/{dbeaver,grafana,metabase,pgadmin}.rs` of the exact version
//! we build with). They are read from that crate's source in the cargo
//! registry, not copied here, so they follow the dependency.

use std::path::PathBuf;

use crate::harness::{Server, add_user};

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

#[tokio::test]
async fn bi_tool_start_up_and_introspection_sql_answers_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "analyst", &["--org", "acme"]);
    let server = Server::start(&data, &[]);
    let client = server.pg_as("analyst").await.unwrap();
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
}
