//! The tools security teams already run, installed from their registries by
//! `scripts/setup.sh` and driven as a user would drive them against the real
//! binary holding the demo's data, as the admin and as an organisation's
//! analyst, who must see only its organisation's rows through each: SQLAlchemy 2's full reflection
//! (what Superset and Alembic run) over psycopg 3 and psycopg2; pgcli; dbt
//! with dbt-postgres; Apache Superset (database, dataset, SQL Lab, a chart).

use std::process::Command;

use crate::clients::{ACTOR, BY_ACTION, CLIENTS, run, server};
use crate::harness::{APP, Server, TEST_PASSWORD, TEST_USER, demo_data_dir, venv_bin};

/// The demo's data set (four organisations' month of activity, its planted
/// incidents), with the fixture's investigated account on top: what the
/// tools read, as a user trying auditlake out would.
async fn demo_server(data: &std::path::Path) -> Server {
    demo_data_dir(data, 20_000, 3);
    server(data).await
}

/// What `user` sees of the organisations (and their events), as the
/// harness's own client reads it: what each tool must show the same user.
fn orgs_seen(server: &Server, user: &str) -> Vec<(String, usize)> {
    let rows = server.sql_as(
        user,
        &format!("select org_id, count(*) from audit_events where {APP} group by org_id order by org_id"),
    );
    rows.unwrap()
        .lines()
        .map(|row| {
            let (org, events) = row.split_once('|').expect("org|events");
            (org.to_string(), events.parse().expect("a count"))
        })
        .collect()
}

/// The organisations of `orgs_seen` as Python prints a list of them.
fn python_list(orgs: &[(String, usize)]) -> String {
    format!("[{}]", orgs.iter().map(|(org, _)| format!("'{org}'")).collect::<Vec<_>>().join(", "))
}

/// Every statement the tools sent that failed, as the audit log recorded it
/// (SQLSTATE, error, statement), one per line: a tool that works end to end
/// may still have swallowed a failed catalog query. Records are written in
/// the order statements finish, so a marker statement sent last and seen
/// recorded means every earlier one is.
fn failed_statements(server: &Server, marker: &str) -> String {
    server.sql(&format!("select '{marker}' as marker")).unwrap();
    let recorded = format!(
        "select count(*) from audit_events where category = 'audit_access' and attributes->>'sql' = \
         'select ''{marker}'' as marker'"
    );
    assert_eq!(server.sql_until(&recorded, "1\n"), "1\n");
    server
        .sql(
            "select coalesce(attributes->>'sqlstate', '-') || ' ' || coalesce(attributes->>'error', '-') || ' in: ' \
             || coalesce(attributes->>'sql', '-') from audit_events where category = 'audit_access' \
             and action = 'audit_log.query' and outcome = 'failure' order by seq",
        )
        .unwrap()
}

/// What `sqlalchemy_reflection.py` prints through `driver` for a user who
/// sees the organisations `orgs` and their events.
fn reflection_answers(driver: &str, orgs: &[(String, usize)]) -> String {
    let by_action: Vec<String> = BY_ACTION.iter().map(|(action, n, _)| format!("('{action}', {n})")).collect();
    let events: usize = orgs.iter().map(|(_, events)| events).sum();
    let orgs = python_list(orgs);
    format!(
        "driver {driver} (15, 0)\n\
         table 22 ['time', 'received_at', 'id', 'org_id']\n\
         table time TIMESTAMP(timezone=True) False indexes 0\n\
         table attributes TEXT() True\n\
         reflect ['audit_events']\n\
         indexes []\n\
         unique []\n\
         foreign []\n\
         check []\n\
         comment {{'text': None}}\n\
         views [] []\n\
         sequences []\n\
         multi columns (None, 'audit_events') 22\n\
         multi indexes (None, 'audit_events') 0\n\
         multi pk (None, 'audit_events') {{'name': None, 'constrained_columns': []}}\n\
         multi foreign (None, 'audit_events') 0\n\
         multi unique (None, 'audit_events') 0\n\
         multi check (None, 'audit_events') 0\n\
         multi comment (None, 'audit_events') {{'text': None}}\n\
         select [{}]\n\
         orgs {orgs}\n\
         read_sql_table 22 datetime64[ns, UTC] {events} {orgs}\n",
        by_action.join(", "),
    )
}

#[tokio::test]
#[ignore = "tier 2: needs SQLAlchemy, pandas, psycopg and psycopg2 from the venv (scripts/test.sh runs it)"]
async fn sqlalchemy_full_reflection_over_psycopg_and_psycopg2() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(&dir.path().join("data")).await;
    for user in [TEST_USER, "analyst"] {
        let orgs = orgs_seen(&server, user);
        for driver in ["psycopg", "psycopg2"] {
            let out = run(Command::new(venv_bin("python"))
                .arg(format!("{CLIENTS}/sqlalchemy_reflection.py"))
                .arg(server.url_as(user).replace("postgres://", "postgresql://"))
                .args([driver, ACTOR]));
            assert_eq!(out, reflection_answers(driver, &orgs), "{user} through {driver}");
        }
    }
    assert_eq!(failed_statements(&server, "after-sqlalchemy"), "");
}

/// What `pgcli_client.py` prints for a user who sees `orgs`.
fn pgcli_answers(orgs: &str) -> String {
    let by_action: Vec<String> = BY_ACTION.iter().map(|(action, n, _)| format!("('{action}', {n})")).collect();
    format!(
        "connected 15.0 UTC\n\
         refreshed ['schemata', 'tables', 'views', 'types', 'databases', 'casing', 'functions']\n\
         search_path ['public', 'information_schema', 'pg_catalog']\n\
         complete table ['audit_events']\n\
         complete column ['actor_id', 'actor_name', 'actor_type']\n\
         function format_type ('oid', 'integer') text\n\
         \\dt ['Schema', 'Name', 'Type', 'Owner'] [('public', 'audit_events', 'table', 'postgres')]\n\
         \\d 22 ('time', 'timestamp with time zone') ('org_id', 'text') [('attributes', 'text')]\n\
         investigation ['action', 'n'] [{}] SELECT {}\n\
         orgs {orgs}\n",
        by_action.join(", "),
        BY_ACTION.len(),
    )
}

#[tokio::test]
#[ignore = "tier 2: needs pgcli from the venv (scripts/test.sh runs it)"]
async fn pgcli_completion_refresh_meta_commands_and_an_investigation() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(&dir.path().join("data")).await;
    let port = server.pg_port.to_string();
    for user in [TEST_USER, "analyst"] {
        let orgs = python_list(&orgs_seen(&server, user));
        // pgcli's own executor, completion refresher and completer.
        let out = run(Command::new(venv_bin("python")).arg(format!("{CLIENTS}/pgcli_client.py")).args([
            "127.0.0.1",
            &port,
            user,
            TEST_PASSWORD,
            ACTOR,
        ]));
        assert_eq!(out, pgcli_answers(&orgs), "{user}");

        // The program itself, reading its commands from a pipe.
        let home = dir.path().join(format!("home-{user}"));
        std::fs::create_dir_all(&home).unwrap();
        let mut pgcli = Command::new(venv_bin("pgcli"))
            .arg(server.url_as(user))
            .env("HOME", &home)
            .env("TERM", "dumb")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let commands = format!(
            "\\dt\nselect count(*) as exports from audit_events where actor_id = '{ACTOR}' and action = \
             'confluence.page.exported';\nselect string_agg(distinct org_id, ',' order by org_id) as seen from \
             audit_events where category is distinct from 'audit_access';\n"
        );
        std::io::Write::write_all(pgcli.stdin.as_mut().unwrap(), commands.as_bytes()).unwrap();
        drop(pgcli.stdin.take());
        let out = pgcli.wait_with_output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{printed}\n{}", String::from_utf8_lossy(&out.stderr));
        let seen = orgs.trim_matches(['[', ']']).replace("'", "").replace(", ", ",");
        for expected in ["| public | audit_events | table | postgres |", "| 5       |", &format!("| {seen} ")] {
            assert!(printed.contains(expected), "{user}: {expected:?} in\n{printed}");
        }
    }
    assert_eq!(failed_statements(&server, "after-pgcli"), "");
}

/// A program from the dbt venv `scripts/setup.sh` makes (dbt pins its own
/// dependencies, so it has a venv of its own; override with `AUDITLAKE_DBT_VENV`).
fn dbt_bin() -> std::path::PathBuf {
    let venv = std::env::var_os("AUDITLAKE_DBT_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/auditlake-dbt"));
    let dbt = venv.join("bin/dbt");
    assert!(dbt.exists(), "{} is missing: run `bash scripts/setup.sh` (scripts/test.sh does)", dbt.display());
    dbt
}

#[tokio::test]
#[ignore = "tier 2: needs dbt-postgres from its venv (scripts/test.sh runs it)"]
async fn dbt_compiles_shows_ephemeral_models_and_runs_data_tests() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(&dir.path().join("data")).await;
    let project = format!("{CLIENTS}/dbt");
    for user in [TEST_USER, "analyst"] {
        let reference = |sql: &str| server.sql_as(user, sql).unwrap();
        let output = dir.path().join(format!("dbt-{user}"));
        let dbt = |args: &[&str]| {
            let mut dbt = Command::new(dbt_bin());
            dbt.arg("--no-use-colors")
                .args(args)
                .args(["--project-dir", &project, "--profiles-dir", &project])
                // What dbt writes goes to the test's directory, not the repository.
                .env("DBT_TARGET_PATH", output.join("target"))
                .env("DBT_LOG_PATH", output.join("logs"))
                .env("AUDITLAKE_PG_PORT", server.pg_port.to_string())
                .env("AUDITLAKE_PG_USER", user)
                .env("AUDITLAKE_PG_PASSWORD", TEST_PASSWORD)
                // No usage reports or version checks: the test machine has no way out.
                .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
                .env("DBT_VERSION_CHECK", "false");
            dbt.output().unwrap()
        };
        let passed = |args: &[&str]| {
            let out = dbt(args);
            let printed = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{user}: dbt {args:?}:\n{printed}\n{}", String::from_utf8_lossy(&out.stderr));
            printed
        };

        assert!(passed(&["debug"]).contains("All checks passed!"), "{user}");
        passed(&["compile"]);
        let tested = passed(&["test"]);
        assert!(tested.contains("Done. PASS=9 WARN=0 ERROR=0 SKIP=0"), "{user}:\n{tested}");

        // A data test that finds something fails, naming how much: the
        // accounts with more than two failed logins (acme-u1, and the demo's
        // own) break a limit of two.
        let over_two = reference(
            "select count(*) from (select actor_id from audit_events where action = 'auth.login.failed' \
             group by actor_id having count(*) > 2) as over",
        );
        let over_two: usize = over_two.trim().parse().unwrap();
        assert!(over_two >= 2, "{user}: acme-u1 and at least one demo account");
        let strict = dbt(&["test", "--select", "failed_logins_before_success", "--vars", "{max_failed_logins: 2}"]);
        let printed = String::from_utf8_lossy(&strict.stdout);
        assert!(
            !strict.status.success() && printed.contains(&format!("FAIL {over_two} failed_logins_before_success")),
            "{user}:\n{printed}"
        );

        let show = |model: &str| -> serde_json::Value {
            let printed = passed(&["--quiet", "show", "--select", model, "--output", "json", "--limit", "10"]);
            serde_json::from_str::<serde_json::Value>(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"))["show"]
                .clone()
        };
        // The model's first ten rows, as the same query answers them.
        let exports = show("exports_by_actor");
        let shown: Vec<String> = exports
            .as_array()
            .unwrap()
            .iter()
            .map(|row| format!("{}|{}", row["actor_id"].as_str().unwrap(), row["exports"]))
            .collect();
        let expected = reference(
            "select actor_id, count(*) as exports from audit_events where action = 'confluence.page.exported' \
             group by actor_id order by exports desc, actor_id limit 10",
        );
        assert_eq!(shown, expected.lines().collect::<Vec<_>>(), "{user}");
        assert_eq!(shown.len(), 10, "{user}");
        let by_org = show("events_by_org");
        let expected: Vec<serde_json::Value> =
            orgs_seen(&server, user).iter().map(|(org, n)| serde_json::json!({"org_id": org, "events": n})).collect();
        assert_eq!(by_org, serde_json::Value::Array(expected), "{user}");
    }
    assert_eq!(failed_statements(&server, "after-dbt"), "");
}

/// A program from the Superset venv `scripts/setup.sh` makes (Superset pins
/// SQLAlchemy 1.4, so it has a venv of its own; override with
/// `AUDITLAKE_SUPERSET_VENV`).
fn superset_bin(name: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("AUDITLAKE_SUPERSET_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/auditlake-superset"));
    let program = venv.join("bin").join(name);
    assert!(program.exists(), "{} is missing: run `bash scripts/setup.sh` (scripts/test.sh does)", program.display());
    program
}

/// A Superset instance's home: its config and its SQLite metadata database,
/// set up as Superset's docs say, with the admin `admin`/`admin`. (SQLite
/// metadata keeps one dataset per table name, so each user gets its own.)
fn superset_home(home: &std::path::Path) -> impl Fn(&str) -> Command + '_ {
    std::fs::create_dir_all(home).unwrap();
    let config = home.join("superset_config.py");
    std::fs::write(
        &config,
        format!(
            "SECRET_KEY = 'auditlake-test-only-secret-key-0123456789'\n\
             SQLALCHEMY_DATABASE_URI = 'sqlite:///{}'\n\
             WTF_CSRF_ENABLED = False\n",
            home.join("superset.db").display()
        ),
    )
    .unwrap();
    let superset = move |program: &str| {
        let mut command = Command::new(superset_bin(program));
        command.env("SUPERSET_CONFIG_PATH", home.join("superset_config.py")).env("SUPERSET_HOME", home);
        command.env("FLASK_APP", "superset");
        command
    };
    run(superset("superset").args(["db", "upgrade"]));
    run(superset("superset").args(["fab", "create-admin", "--username", "admin", "--firstname", "Audit"]).args([
        "--lastname",
        "Lake",
        "--email",
        "admin@example.com",
        "--password",
        "admin",
    ]));
    run(superset("superset").arg("init"));
    superset
}

/// Events the chart counts: days before today (UTC), organisation, actor, action.
const CHART_EVENTS: [(i64, &str, &str, &str); 4] = [
    (2, "acme", "chart-acme", "confluence.page.exported"),
    (2, "acme", "chart-acme", "confluence.page.exported"),
    (1, "acme", "chart-acme", "auth.login.failed"),
    (3, "globex", "chart-globex", "jira.issue.viewed"),
];

#[tokio::test]
#[ignore = "tier 2: needs Apache Superset from its venv (scripts/test.sh runs it)"]
async fn superset_database_dataset_sql_lab_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let server = demo_server(&dir.path().join("data")).await;
    let today = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let events: Vec<String> = CHART_EVENTS
        .iter()
        .enumerate()
        .map(|(i, (days, org, actor, action))| {
            let time = today - chrono::Duration::days(*days) + chrono::Duration::hours(10 + i as i64);
            serde_json::json!({"id": format!("chart-{i}"), "time": time.to_rfc3339(), "org_id": org,
                "actor_id": actor, "action": action})
            .to_string()
        })
        .collect();
    let (status, body) = crate::harness::post(&server.http(), &server.events_url(), events.join("\n")).await;
    assert_eq!(status, 200, "{body}");

    let chart_actors: Vec<&str> = CHART_EVENTS.iter().map(|(_, _, actor, _)| *actor).collect();
    let sql_lab: Vec<String> = BY_ACTION.iter().map(|(action, n, _)| format!("('{action}', {n})")).collect();
    for (user, orgs) in [(TEST_USER, &["acme", "globex"][..]), ("analyst", &["acme"][..])] {
        let home = dir.path().join(format!("superset-{user}"));
        let superset = superset_home(&home);
        let uri = server.url_as(user).replace("postgres://", "postgresql+psycopg2://");
        let out = run(superset("python").arg(format!("{CLIENTS}/superset_client.py")).args([
            &uri,
            &format!("auditlake-{user}"),
            ACTOR,
            &chart_actors.join(","),
        ]));
        // What Superset's own start-up prints is not the client's.
        let facts: Vec<&str> =
            out.lines().filter(|line| !line.starts_with("Loaded your LOCAL configuration")).collect();

        // Events per day by action: what this user may see of the chart's events.
        let mut points: Vec<(i64, &str, u32)> = Vec::new();
        for (days, _, _, action) in CHART_EVENTS.iter().filter(|(_, org, _, _)| orgs.contains(org)) {
            let day = (today - chrono::Duration::days(*days)).timestamp_millis();
            match points.iter_mut().find(|(d, a, _)| *d == day && a == action) {
                Some(point) => point.2 += 1,
                None => points.push((day, action, 1)),
            }
        }
        points.sort();
        let points: Vec<String> =
            points.iter().map(|(day, action, n)| format!("[{day}.0, \"{action}\", {n}]")).collect();
        let expected = [
            "psycopg 3 refused by superset 422 Could not load database driver for: postgresql".to_string(),
            "test connection ok".into(),
            "schemas ['public']".into(),
            "tables ['audit_events']".into(),
            "dataset columns 22 main time column time".into(),
            "dataset column time TIMESTAMP WITH TIME ZONE temporal".into(),
            "dataset column received_at TIMESTAMP WITH TIME ZONE temporal".into(),
            "dataset column actor_id TEXT not temporal".into(),
            "dataset column seq BIGINT not temporal".into(),
            "dataset column outcome TEXT not temporal".into(),
            "dataset column attributes TEXT not temporal".into(),
            "dataset untyped []".into(),
            "dataset metrics ['count']".into(),
            format!("sql lab success [{}]", sql_lab.join(", ")),
            format!("chart {} [{}]", points.len(), points.join(", ")),
        ];
        assert_eq!(facts, expected, "{user}");
    }
    assert_eq!(failed_statements(&server, "after-superset"), "");
}
