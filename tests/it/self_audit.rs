//! The audit log audits itself: every statement over the wire and every
//! login, failed or not, is an event of `audit_events` that auditors query
//! like any other, each tenant seeing its own.

use crate::harness::{Server, add_user, event, post};

/// What a record of access says, in a fixed order for comparison.
const RECORDS: &str = "select actor_id, org_id, action, outcome, source_ip, coalesce(user_agent, '-'), \
     coalesce(attributes->>'sql', '-'), coalesce(json_get_int(attributes, 'rows'), -1), \
     coalesce(attributes->>'parameters', '-'), coalesce(attributes->>'sqlstate', '-') \
     from audit_events where category = 'audit_access' and actor_id in ('acme-analyst', 'mallory') \
     order by seq";

#[tokio::test]
async fn statements_and_logins_are_recorded_and_each_org_sees_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "acme-analyst", &["--org", "acme"]);
    let server = Server::start(&data, &[]);
    let http = server.http();
    let events: String = [("a1", "alice"), ("a2", "alice"), ("a3", "bob")]
        .iter()
        .map(|(id, actor)| event(id, "acme", actor, "page.viewed", 0).to_string() + "\n")
        .collect();
    assert_eq!(post(&http, &server.events_url(), events).await.0, 200);

    // An investigation with a bound parameter, then a refused write.
    let acme = server.pg_as("acme-analyst").await.unwrap();
    let rows = acme.query("select id from audit_events where actor_id = $1", &[&"alice"]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let refused = acme.simple_query("delete from audit_events").await.unwrap_err();
    assert_eq!(refused.as_db_error().unwrap().code().code(), "25006");
    drop(acme);
    // Failed logins: a known user's wrong password, and a name nobody has.
    for user in ["acme-analyst", "mallory"] {
        let url = format!("postgres://{user}:not-the-password@127.0.0.1:{}/auditlake", server.pg_port);
        assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_err());
    }
    // A client that names itself is recorded with its name.
    let out = server.sql_as("acme-analyst", "select count(*) from audit_events where actor_id = 'bob'");
    assert_eq!(out.unwrap(), "1\n");

    let expected = "\
acme-analyst|acme|audit_log.login|success|127.0.0.1|-|-|-1|-|-
acme-analyst|acme|audit_log.query|success|127.0.0.1|-|select id from audit_events where actor_id = $1|2|[\"alice\"]|-
acme-analyst|acme|audit_log.query|failure|127.0.0.1|-|delete from audit_events|0|-|25006
acme-analyst|acme|audit_log.login_failed|failure|127.0.0.1|-|-|-1|-|28P01
mallory|_auditlake|audit_log.login_failed|failure|127.0.0.1|-|-|-1|-|28P01
acme-analyst|acme|audit_log.login|success|127.0.0.1|auditlake-tests|-|-1|-|-
acme-analyst|acme|audit_log.query|success|127.0.0.1|auditlake-tests|select count(*) from audit_events where actor_id = 'bob'|1|-|-
";
    assert_eq!(server.sql_until(RECORDS, expected), expected);

    // Durations are measured; the tenant sees its own records, not the
    // failed login of a name that belongs to no org.
    let timed = server.sql(
        "select count(*) from audit_events where action = 'audit_log.query' and actor_id = 'acme-analyst' \
         and json_get_float(attributes, 'duration_ms') > 0",
    );
    assert_eq!(timed.unwrap(), "3\n");
    let seen_by_acme = server
        .sql_as("acme-analyst", "select distinct actor_id from audit_events where category = 'audit_access' order by 1")
        .unwrap();
    assert_eq!(seen_by_acme, "acme-analyst\n");
    let admins =
        server.sql("select count(*) > 0 from audit_events where org_id = '_auditlake' and actor_id = 'tester'");
    assert_eq!(admins.unwrap(), "t\n", "admins' statements are recorded under the system org");

    // Nobody can post records that look like the server's own.
    let forged = event("f1", "acme", "acme-analyst", "audit_log.query", 0);
    let mut forged = forged;
    forged["category"] = "audit_access".into();
    let (status, body) = post(&http, &server.events_url(), forged.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("reserved for auditlake's own records"), "{body}");
}
