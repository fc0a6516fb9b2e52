//! Who may connect and what they see: SCRAM logins with real clients, the
//! start-up refusals, organisation users scoped below SQL, and the API
//! tokens applications send events with.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{APP, Server, TEST_PASSWORD, TEST_USER, add_user, bearer_client, create_token, event, post};

fn ndjson(events: &[serde_json::Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

#[tokio::test]
async fn logins_need_the_password_and_an_org_user_sees_only_its_org() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "acme-analyst", &["--org", "acme"]);
    add_user(&data, "globex-analyst", &["--org", "globex"]);
    // Small seals: the organisations' events lie in segments and in the buffer.
    let server = Server::start(&data, &["--seal-max-buffered-rows", "4"]);
    let http = server.http();
    let orgs = ["acme", "globex", "acme", "initech", "acme", "globex", "acme"];
    for (i, org) in orgs.iter().enumerate() {
        let body = ndjson(&[event(&format!("e{i}"), org, &format!("{org}-u{i}"), "jira.issue.viewed", i as i64)]);
        assert_eq!(post(&http, &server.events_url(), body).await.0, 200);
    }
    let users = std::fs::read_to_string(data.join("users.json")).unwrap();
    assert!(users.contains("SCRAM-SHA-256$4096:") && !users.contains(TEST_PASSWORD), "{users}");

    // The admin sees everything.
    let admin = server.pg().await;
    let all: i64 =
        admin.query_one(&format!("select count(*) from audit_events where {APP}"), &[]).await.unwrap().get(0);
    assert_eq!(all, 7);

    // A wrong password and an unknown user get the same answer.
    for (user, password) in [("acme-analyst", "wrong-password"), ("nobody", TEST_PASSWORD)] {
        let url = format!("postgres://{user}:{password}@127.0.0.1:{}/auditlake", server.pg_port);
        let error = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.err().expect("login refused");
        let db = error.as_db_error().unwrap_or_else(|| panic!("a server error, not {error}"));
        assert_eq!(db.code().code(), "28P01", "{db}");
        assert_eq!(db.message(), format!("password authentication failed for user \"{user}\""));
    }

    // Whatever the SQL, acme's analyst reads acme's rows only: the
    // applications' events (counted) and its own records of access (not
    // counted: more come with every statement).
    let acme = server.pg_as("acme-analyst").await.unwrap();
    for (sql, expected) in [
        ("select count(*) from audit_events", 4),
        ("select count(*) from audit_events where org_id <> 'acme'", 0),
        ("select count(*) from audit_events a join audit_events b on a.actor_id <> b.actor_id", 12),
        ("select count(*) from (select * from audit_events where org_id = 'globex') t", 0),
        ("with o as (select distinct org_id from audit_events) select count(*) from o", 1),
        (
            "select count(*) from (select id from audit_events where org_id = 'globex' \
             union all select id from audit_events where org_id = 'initech') t",
            0,
        ),
        ("select max(n) from (select count(*) over () as n from audit_events) t", 4),
        ("select count(*) from (select * from audit_events limit 3) t", 3),
        ("select count(*) from audit_events where id in (select id from audit_events)", 4),
        (
            "select count(*) from audit_events e where (select o.org_id from audit_events o where o.id = e.id) = 'acme'",
            4,
        ),
        (
            "select count(*) from audit_events e where exists (select 1 from audit_events o \
             where o.actor_id = e.actor_id and o.org_id <> 'acme')",
            0,
        ),
    ] {
        let sql = sql.replace("audit_events", &format!("(select * from audit_events where {APP})"));
        let n: i64 = acme.query_one(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0);
        assert_eq!(n, expected, "{sql}");
    }
    // Session settings, cursors, EXPLAIN and the catalog do not widen it.
    let refused = acme.batch_execute("set datafusion.execution.parquet.pushdown_filters = false").await.unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
    let orgs = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .collect()
    };
    let all_orgs = format!("select distinct org_id from audit_events where {APP} order by 1");
    assert_eq!(orgs(acme.simple_query(&all_orgs).await.unwrap()), ["acme"]);
    let cursor = acme
        .simple_query(&format!("begin; declare c cursor for {all_orgs}; fetch all from c; close c; commit"))
        .await
        .unwrap();
    assert_eq!(orgs(cursor), ["acme"]);
    let explained: Vec<String> = acme
        .simple_query("explain select * from audit_events where org_id = 'globex'")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1).map(str::to_string),
            _ => None,
        })
        .collect();
    let plan = explained.join("\n");
    assert!(plan.contains("OrgScanExec: org_id=acme"), "the scope is in the plan: {plan}");
    assert!(!plan.contains("DataSourceExec"), "no file of the log shows in an organisation's plan: {plan}");
    let catalog = "select count(*) from information_schema.tables where table_name = 'audit_events'";
    assert_eq!(orgs(acme.simple_query(catalog).await.unwrap()), ["1"]);
    let actors: Vec<String> = acme
        .query(&format!("select actor_id from audit_events where {APP} order by seq"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actors, ["acme-u0", "acme-u2", "acme-u4", "acme-u6"]);

    // The simple query protocol logs in with SCRAM too; globex's analyst sees globex.
    let sql = format!("select id from audit_events where {APP} order by seq");
    assert_eq!(server.sql_as("globex-analyst", &sql).unwrap(), "e1\ne5\n");
    let orgs = server.sql_as("globex-analyst", "select distinct org_id from audit_events").unwrap();
    assert_eq!(orgs, "globex\n", "its own records of access are globex's too");
}

/// Runs `auditlake serve ARGS` and returns what it printed, expecting it to
/// exit by itself within a minute.
pub(crate) fn serve_refused(data: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["serve", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("auditlake serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn without_users_the_endpoint_starts_only_when_told_to_trust_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let error = serve_refused(&data, &["--pg-listen", "127.0.0.1:0"]);
    assert!(error.contains("no Postgres users") && error.contains("auditlake user add"), "{error}");
    let error = serve_refused(&data, &["--pg-listen", "0.0.0.0:0", "--insecure-trust-loopback"]);
    assert!(error.contains("only works on a loopback address"), "{error}");
    // A timeout of 0 ms would cancel every statement; it is refused by name.
    let error = serve_refused(&data, &["--insecure-trust-loopback", "--statement-timeout-ms", "0"]);
    assert!(error.contains("--statement-timeout-ms"), "{error}");

    let server = Server::start(&data, &["--insecure-trust-loopback"]);
    let url = format!("host=127.0.0.1 port={} dbname=auditlake user=anyone", server.pg_port);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // Trusting loopback covers ingest too: events without a token.
    let (status, body) =
        post(&reqwest::Client::new(), &server.events_url(), event("t1", "acme", "u1", "x", 0).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let n: i64 = client.query_one(&format!("select count(*) from audit_events where {APP}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    drop(server);
    // ... and only on a loopback HTTP address.
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["serve", "--insecure-trust-loopback", "--pg-listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && error.contains("--http-listen is 0.0.0.0:0"), "{error}");
}

/// A CA and a certificate for `localhost` it signed, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, "auditlake test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    let server = server_params.signed_by(&key, &ca, &ca_key).unwrap();
    let path = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    };
    (path("ca.pem", ca.pem()), path("server.pem", server.pem()), path("server.key", key.serialize_pem()))
}

fn psql_with(conninfo: &str) -> Result<String, String> {
    psql_sql_with(conninfo, &format!("select count(*) from audit_events where {APP}"))
}

fn psql_sql_with(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, conninfo])
        .env("PGPASSWORD", TEST_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
#[ignore = "tier 2: drives the real psql, libpq's TLS (scripts/test.sh runs it)"]
async fn tls_clients_verify_the_server_and_plaintext_is_refused_when_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tls-cert", &cert, "--tls-key", &key, "--require-tls"]);
    let base = format!("hostaddr=127.0.0.1 port={} dbname=auditlake user=tester", server.pg_port);

    for sslmode in
        [format!("sslmode=verify-full host=localhost sslrootcert={ca}"), "host=127.0.0.1 sslmode=require".into()]
    {
        assert_eq!(psql_with(&format!("{base} {sslmode}")), Ok("0\n".into()), "{sslmode}");
    }
    let plaintext = psql_with(&format!("{base} sslmode=disable")).unwrap_err();
    assert!(plaintext.contains("accepts only TLS connections"), "{plaintext}");
    // verify-full checks the name: the certificate is not for 127.0.0.1.
    let wrong_name = psql_with(&format!("{base} host=127.0.0.1 sslmode=verify-full sslrootcert={ca}")).unwrap_err();
    assert!(wrong_name.contains("127.0.0.1"), "{wrong_name}");
    // The refused plaintext login is on record, with its reason.
    let verified = format!("{base} sslmode=verify-full host=localhost sslrootcert={ca}");
    let refusals = "select actor_id, outcome, attributes->>'sqlstate', json_get_bool(attributes, 'tls') from audit_events \
                    where action = 'audit_log.login_failed'";
    let deadline = Instant::now() + Duration::from_secs(30);
    let recorded = loop {
        let out = psql_sql_with(&verified, refusals).unwrap();
        if !out.is_empty() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(recorded, "tester|failure|28000|f\n");
}

#[tokio::test]
async fn tls_that_cannot_be_used_stops_the_start_and_a_plaintext_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tls-cert", &cert, "--tls-key", &key, "--require-tls"]);
    let error = server.pg_as(TEST_USER).await.expect_err("a plaintext login is refused");
    let db = error.as_db_error().unwrap_or_else(|| panic!("a server error, not {error}"));
    assert!(db.message().contains("accepts only TLS connections"), "{db}");
    drop(server);

    // A key that cannot be loaded stops the start; there is no plaintext fallback.
    let error = serve_refused(&data, &["--pg-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &ca]);
    assert!(error.contains("TLS is not usable with"), "{error}");
    let error = serve_refused(&data, &["--pg-listen", "127.0.0.1:0", "--require-tls"]);
    assert!(error.contains("--require-tls needs --tls-cert"), "{error}");
}

#[tokio::test]
async fn sending_events_takes_an_ingest_token_for_their_organisation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let acme = create_token(&data, &["--org", "acme"]);
    let reader = create_token(&data, &["--org", "acme", "--scope", "read"]);
    let url = server.events_url();
    let one = |id: &str, org: &str| event(id, org, "u1", "page.viewed", 0).to_string();

    // No token, a forged one, a token not for sending: refused, nothing stored.
    let response = reqwest::Client::new().post(&url).body(one("n1", "acme")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let forged = format!("{}0", &acme[..acme.len() - 1]);
    let forged = if forged == acme { format!("{}1", &acme[..acme.len() - 1]) } else { forged };
    assert_eq!(post(&bearer_client(&forged), &url, one("n2", "acme")).await.0, 401);
    let (status, answer) = post(&bearer_client(&reader), &url, one("n3", "acme")).await;
    assert_eq!(status, 403, "{answer}");

    // acme's token sends acme's events; a batch holding another org's event
    // is refused whole, naming the line.
    let acme_http = bearer_client(&acme);
    assert_eq!(post(&acme_http, &url, one("a1", "acme")).await.0, 200);
    let mixed = format!("{}\n{}\n{}\n", one("a2", "acme"), one("g1", "globex"), one("a3", "acme"));
    let (status, answer) = post(&acme_http, &url, mixed).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["errors"][0]["line"], 2, "{answer}");
    assert_eq!(answer["errors"][0]["field"], "org_id", "{answer}");
    assert_eq!(answer["errors"].as_array().unwrap().len(), 1, "{answer}");

    let pg = server.pg().await;
    let ids: Vec<String> = pg
        .query(&format!("select id from audit_events where {APP} order by id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, ["a1"]);

    // Revoked while the server runs: refused at once.
    let id = acme.strip_prefix("alk_").unwrap().split('_').next().unwrap();
    let revoke = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["token", "revoke", id, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    assert_eq!(post(&acme_http, &url, one("a4", "acme")).await.0, 401);

    // The data directory keeps no token's secret.
    let stored = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    for token in [&acme, &reader] {
        assert!(!stored.contains(token.rsplit('_').next().unwrap()), "a secret is on disk");
    }
}

#[test]
fn users_added_at_the_same_time_are_all_kept() {
    const USERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Separate processes, as operators' scripts run them.
    let adds: Vec<_> = (0..USERS)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_auditlake"))
                .args(["user", "add", &format!("analyst-{i}"), "--org", "acme", "--data-dir"])
                .arg(&data)
                .env("AUDITLAKE_PASSWORD", TEST_PASSWORD)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for add in adds {
        let out = add.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let users = std::fs::read_to_string(data.join("users.json")).unwrap();
    for i in 0..USERS {
        assert!(users.contains(&format!("\"analyst-{i}\"")), "analyst-{i} lost:\n{users}");
    }
}
