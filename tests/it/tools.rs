//! The tools security teams already run, installed from their registries by
//! `scripts/setup.sh` and driven as a user would drive them against the real
//! binary, as the admin and as an organisation's analyst, who must see only
//! its organisation's rows through each: SQLAlchemy 2's full reflection
//! (what Superset and Alembic run) over psycopg 3 and psycopg2; pgcli.

use std::process::Command;

use crate::clients::{ACTOR, BY_ACTION, CLIENTS, run, server};
use crate::harness::{TEST_PASSWORD, TEST_USER, venv_bin};

/// What `sqlalchemy_reflection.py` prints for `user` through `driver`, when
/// the user sees the organisations `orgs` (holding `events` events).
fn reflection_answers(driver: &str, orgs: &[&str], events: usize) -> String {
    let by_action: Vec<String> = BY_ACTION.iter().map(|(action, n, _)| format!("('{action}', {n})")).collect();
    let orgs = format!("[{}]", orgs.iter().map(|org| format!("'{org}'")).collect::<Vec<_>>().join(", "));
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
    let server = server(&dir.path().join("data")).await;
    for (user, orgs, events) in [(TEST_USER, &["acme", "globex"][..], 28), ("analyst", &["acme"][..], 27)] {
        for driver in ["psycopg", "psycopg2"] {
            let out = run(Command::new(venv_bin("python"))
                .arg(format!("{CLIENTS}/sqlalchemy_reflection.py"))
                .arg(server.url_as(user).replace("postgres://", "postgresql://"))
                .args([driver, ACTOR]));
            assert_eq!(out, reflection_answers(driver, orgs, events), "{user} through {driver}");
        }
    }
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
    let server = server(&dir.path().join("data")).await;
    let port = server.pg_port.to_string();
    for (user, orgs) in [(TEST_USER, "['acme', 'globex']"), ("analyst", "['acme']")] {
        // pgcli's own executor, completion refresher and completer.
        let out = run(Command::new(venv_bin("python")).arg(format!("{CLIENTS}/pgcli_client.py")).args([
            "127.0.0.1",
            &port,
            user,
            TEST_PASSWORD,
            ACTOR,
        ]));
        assert_eq!(out, pgcli_answers(orgs), "{user}");

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
}
