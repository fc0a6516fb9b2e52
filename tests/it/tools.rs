//! The tools security teams already run, installed from their registries by
//! `scripts/setup.sh` and driven as a user would drive them against the real
//! binary, as the admin and as an organisation's analyst, who must see only
//! its organisation's rows through each: SQLAlchemy 2's full reflection
//! (what Superset and Alembic run) over psycopg 3 and psycopg2.

use std::process::Command;

use crate::clients::{ACTOR, BY_ACTION, CLIENTS, run, server};
use crate::harness::{TEST_USER, venv_bin};

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
