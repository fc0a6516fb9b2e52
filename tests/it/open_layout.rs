//! The on-disk layout is open: DuckDB reads the segments directly and agrees
//! with auditlake's own answers.

use std::process::Command;

use crate::harness::{Server, demo_data_dir, venv_bin};

const PER_ORG: &str = "select org_id, count(*), count(distinct actor_id), min(seq), max(seq) \
                       from audit_events where org_id <> '_auditlake' group by org_id order by org_id";
/// A sample of ids: UUID-shaped ones are stored packed as Parquet UUIDs,
/// others (the demo's planted incidents) as text.
const SAMPLE_IDS: &str = "select id, request_id from audit_events where seq % 997 = 0 or id like 'demo-%' order by seq";
const DUCKDB_IDS: &str = "create view ids as select coalesce(id_text, cast(id_uuid as varchar)) as id, \
                          coalesce(request_id_text, cast(request_id_uuid as varchar)) as request_id, seq \
                          from audit_events";

#[tokio::test]
#[ignore = "tier 2: needs DuckDB from the venv (scripts/test.sh runs it)"]
async fn duckdb_reads_the_segments_and_agrees_with_auditlake() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 20_000, 3);

    let script = format!(
        "import duckdb\n\
         con = duckdb.connect()\n\
         con.execute(\"create view audit_events as select * from read_parquet('{}/segments/*.parquet')\")\n\
         for row in con.execute(\"{PER_ORG}\").fetchall():\n    print('|'.join(str(v) for v in row))\n\
         con.execute(\"{DUCKDB_IDS}\")\n\
         for row in con.execute(\"{}\").fetchall():\n    print('|'.join('' if v is None else str(v) for v in row))\n\
         print(con.execute(\"select typeof(time), typeof(seq), typeof(actor_id), typeof(id_uuid) from audit_events limit 1\").fetchone())\n",
        data.display(),
        SAMPLE_IDS.replace("from audit_events", "from ids"),
    );
    let out = Command::new(venv_bin("python")).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let duck = String::from_utf8(out.stdout).unwrap();

    let server = Server::start(&data, &[]);
    let ours = server.sql(PER_ORG).unwrap();
    let our_ids = server.sql(SAMPLE_IDS).unwrap();
    let (duck_rows, duck_types) = duck.rsplit_once("('").unwrap();
    assert_eq!(duck_rows, format!("{ours}{our_ids}"), "DuckDB over our Parquet and auditlake disagree");
    assert_eq!(our_ids.lines().filter(|l| l.starts_with("demo-3-incident-")).count(), 47, "{our_ids}");
    assert!(our_ids.lines().count() > 60, "{our_ids}");
    assert_eq!(ours.lines().count(), 4, "four demo orgs: {ours}");
    let total: i64 = ours.lines().map(|l| l.split('|').nth(1).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 20_000);
    assert!(duck_types.starts_with("TIMESTAMP WITH TIME ZONE', 'BIGINT', 'VARCHAR', 'UUID'"), "{duck_types}");
}
