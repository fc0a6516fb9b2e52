//! The side-by-side benchmark (`bench/run.py`) in reduced form, so that it
//! cannot rot: 200,000 realistic events in auditlake, PostgreSQL 15 and
//! DuckDB (native, and over auditlake's Parquet), every investigation query
//! answered the same by all four. Nothing about speed is asserted.

use std::path::Path;
use std::process::Command;

use crate::harness::venv_bin;

#[test]
#[ignore = "tier 2: needs PostgreSQL 15 and DuckDB from the venv (scripts/test.sh runs it)"]
fn the_side_by_side_benchmark_gets_the_same_answers_from_all_four_systems() {
    let work = tempfile::tempdir().unwrap();
    // PostgreSQL runs as its own user when we are root: it must reach the CSV.
    #[cfg(unix)]
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/run.py");
    let out = Command::new(venv_bin("python"))
        .arg(script)
        .args(["--binary", env!("CARGO_BIN_EXE_auditlake"), "--events", "200000", "--smoke", "--work-dir"])
        .arg(work.path().join("run"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("200,000 events (realistic demo); every answer equal across the four systems"), "{stdout}");
    // The answers compared are not empty ones.
    for query in ["top_actions_per_day_one_org", "full_table_aggregate"] {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(query)).unwrap();
        let rows: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(rows > 0.0, "{line}");
    }
}
