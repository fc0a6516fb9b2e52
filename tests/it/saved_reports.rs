//! Every saved report of `sql/` against a fixture of planted incidents
//! (`tests/fixtures/incidents.ndjson`): the exact rows each must find, run
//! by `auditlake report` against the server, and (second tier) the same files
//! under psql.

use std::path::Path;
use std::process::Command;

use crate::harness::{APP, Server, add_user, post};

const FIXTURE: &str = include_str!("../fixtures/incidents.ndjson");

/// (report, parameters besides `since=2026-11-01`, the CSV it must print).
const EXPECTED: &[(&str, &[&str], &str)] = &[
    (
        "actor_timeline",
        &["actor=acme-u4"],
        "time,org_id,action,outcome,source_ip,location,user_agent,content_type,content_id,content_title\n\
         2026-11-06T09:30:00Z,acme,auth.login.succeeded,success,10.0.0.4,US,,,,\n\
         2026-11-06T09:35:00Z,acme,confluence.page.viewed,success,10.0.0.4,US,,page,p1,Roadmap\n",
    ),
    (
        "content_access",
        &["content=p1"],
        "time,org_id,actor_id,actor_name,action,source_ip,location\n\
         2026-11-02T10:05:00Z,acme,acme-u2,bob.smith,confluence.page.viewed,10.0.0.2,US\n\
         2026-11-03T02:05:00Z,acme,acme-u1,alice.nguyen,confluence.page.exported,203.0.113.50,RU\n\
         2026-11-03T02:30:00Z,globex,globex-u1,zoe.rossi,confluence.page.viewed,10.9.0.1,US\n\
         2026-11-06T09:35:00Z,acme,acme-u4,dave.kim,confluence.page.viewed,10.0.0.4,US\n",
    ),
    (
        "mass_download",
        &["threshold=5"],
        "org_id,actor_id,hour,events,items,first_ip,last_ip\n\
         acme,acme-u1,2026-11-03T02:00:00Z,5,5,203.0.113.50,203.0.113.50\n",
    ),
    (
        "admin_grants",
        &[],
        "time,org_id,actor_id,action,granted_to,attributes,self_granted,source_ip\n\
         2026-11-05T03:12:00Z,acme,acme-u3,admin.role.granted,acme-u3,\
         \"{\"\"granted_to\"\":\"\"acme-u3\"\",\"\"role\"\":\"\"org-admin\"\"}\",true,10.0.0.3\n",
    ),
    (
        "permission_changes",
        &[],
        "time,org_id,actor_id,action,content_type,content_id,attributes,source_ip\n\
         2026-11-05T03:20:00Z,acme,acme-u3,confluence.space.permission.changed,space,S1,\
         \"{\"\"granted_to\"\":\"\"group:contractors\"\",\"\"permission\"\":\"\"edit\"\"}\",10.0.0.3\n",
    ),
    (
        "deletions",
        &[],
        "time,org_id,actor_id,action,content_type,content_id,content_title,source_ip\n\
         2026-11-04T11:00:00Z,acme,acme-u2,jira.issue.deleted,issue,OPS-1,Rotate keys,10.0.0.2\n\
         2026-11-05T03:25:00Z,acme,acme-u3,confluence.page.deleted,page,p2,Page 2,10.0.0.3\n",
    ),
    (
        "failed_then_successful_logins",
        &[],
        "succeeded_at,org_id,actor_id,source_ip,location,failures_before,first_failure\n\
         2026-11-03T02:03:00Z,acme,acme-u1,203.0.113.50,RU,3,2026-11-03T02:00:00Z\n",
    ),
    (
        "new_ip_logins",
        &[],
        "time,org_id,actor_id,source_ip,location\n\
         2026-11-03T02:03:00Z,acme,acme-u1,203.0.113.50,RU\n\
         2026-11-06T09:30:00Z,acme,acme-u4,10.0.0.4,US\n",
    ),
    (
        "off_hours_activity",
        &[],
        "org_id,actor_id,events,first_event,last_event\n\
         acme,acme-u1,9,2026-11-03T02:00:00Z,2026-11-03T02:09:00Z\n\
         acme,acme-u3,3,2026-11-05T03:12:00Z,2026-11-05T03:25:00Z\n\
         acme,acme-u5,2,2026-11-07T10:00:00Z,2026-11-07T10:30:00Z\n\
         globex,globex-u1,1,2026-11-03T02:30:00Z,2026-11-03T02:30:00Z\n",
    ),
    (
        "dormant_accounts",
        &[],
        "org_id,actor_id,last_seen,returned_at\n\
         acme,acme-u4,2026-06-01T09:00:00Z,2026-11-06T09:30:00Z\n",
    ),
    (
        // The server's own records of what `erin` did; times are left out
        // of the comparison (they are when the test ran).
        "audit_log_access",
        &["actor=erin"],
        "org_id,actor_id,action,outcome,source_ip,sql,rows,error\n\
         acme,erin,audit_log.login,success,127.0.0.1,,,\n\
         acme,erin,audit_log.query,success,127.0.0.1,select * from audit_events where actor_id = 'acme-u1',11,\n",
    ),
];

/// A server holding the fixture's incidents, after `erin` (an acme analyst)
/// looked up one account, which the server records.
async fn planted(data: &Path) -> Server {
    add_user(data, "erin", &["--org", "acme"]);
    let server = Server::start(data, &[]);
    let (status, body) = post(&server.http(), &server.events_url(), FIXTURE.to_owned()).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(28)), "{body}");
    let lookup = server.sql_as("erin", "select * from audit_events where actor_id = 'acme-u1'").unwrap();
    assert_eq!(lookup.lines().count(), 11);
    let recorded = "select count(*) from audit_events where actor_id = 'erin' and action = 'audit_log.query'";
    assert_eq!(server.sql_until(recorded, "1\n"), "1\n");
    server
}

#[tokio::test]
async fn each_saved_report_finds_exactly_the_planted_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let server = planted(&dir.path().join("data")).await;
    let url = server.url();

    let saved = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql")).unwrap().count();
    assert_eq!(EXPECTED.len(), saved, "every file of sql/ has its expected rows here");
    for (report, params, expected) in EXPECTED {
        let mut args = vec!["report", report, "--server", &url, "--format", "csv", "--param", "since=2026-11-01"];
        for param in *params {
            args.extend(["--param", param]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_auditlake")).args(&args).output().unwrap();
        assert!(out.status.success(), "{report}: {}", String::from_utf8_lossy(&out.stderr));
        let mut got = String::from_utf8(out.stdout).unwrap();
        if *report == "audit_log_access" {
            got = got.lines().map(|line| line.split_once(',').unwrap().1.to_string() + "\n").collect();
        }
        assert_eq!(got, *expected, "{report}");
    }

    // JSON attributes and time bucketing over the wire.
    let json = server
        .sql(&format!(
            "select actor_id, json_get_str(attributes, 'role'), attributes->>'granted_to', \
             json_get_int(attributes, 'rows') from audit_events where attributes is not null and {APP} order by seq"
        ))
        .unwrap();
    assert_eq!(json, "acme-u3|org-admin|acme-u3|\nacme-u3||group:contractors|\n");
    let rows =
        "select json_get_int(attributes, 'rows') from audit_events where actor_id = 'erin' and action like '%query'";
    assert_eq!(server.sql(rows).unwrap(), "11\n");
    let by_grantee = server.sql("select count(*) from audit_events where attributes->>'granted_to' = 'acme-u3'");
    assert_eq!(by_grantee.unwrap(), "1\n");
    let buckets = server
        .sql(
            "select date_trunc('day', time), date_bin(interval '6 hours', time), count(*) from audit_events \
             where time >= '2026-11-02' and time < '2026-11-06' group by 1, 2 order by 2",
        )
        .unwrap();
    assert_eq!(
        buckets,
        "2026-11-02 00:00:00.000000+00|2026-11-02 06:00:00.000000+00|2\n\
         2026-11-03 00:00:00.000000+00|2026-11-03 00:00:00.000000+00|10\n\
         2026-11-04 00:00:00.000000+00|2026-11-04 06:00:00.000000+00|3\n\
         2026-11-05 00:00:00.000000+00|2026-11-05 00:00:00.000000+00|3\n"
    );
}

/// The files of `sql/` are plain psql scripts: under the real psql, with the
/// parameters as psql variables, each prints as many rows as `auditlake
/// report` did above.
#[tokio::test]
#[ignore = "tier 2: drives the real psql (scripts/test.sh runs it)"]
async fn each_saved_report_runs_under_psql_with_its_parameters_as_variables() {
    let dir = tempfile::tempdir().unwrap();
    let server = planted(&dir.path().join("data")).await;
    for (report, params, expected) in EXPECTED {
        let mut psql = Command::new("psql");
        psql.args(["-d", &server.url()]).args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "since='2026-11-01'"]);
        for param in *params {
            let (name, value) = param.split_once('=').unwrap();
            let value = if value.parse::<f64>().is_ok() { value.to_owned() } else { format!("'{value}'") };
            psql.args(["-v", &format!("{name}={value}")]);
        }
        let file = format!("{}/sql/{report}.sql", env!("CARGO_MANIFEST_DIR"));
        let out = psql.args(["-f", &file]).output().unwrap();
        assert!(out.status.success(), "psql -f {report}: {}", String::from_utf8_lossy(&out.stderr));
        let psql_rows = String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.is_empty()).count();
        assert_eq!(psql_rows, expected.lines().count() - 1, "{report} under psql");
    }
}
