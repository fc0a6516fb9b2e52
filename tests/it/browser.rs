//! The web view in real headless Chromium (Debian's), driven by npm's
//! playwright-core from `tests/clients/browser_ui.js`, against the binary
//! serving the demo's data: the phished account's timeline (also by
//! keyboard only), hostile searches, a saved query, a proof verified then
//! failed, a hashed-content lookup, the embedded viewer framed by an allowed
//! and a refused origin and expired, axe-core on every view, a network
//! guard, and screenshots of every view at 1280 and 390 px.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::harness::{Server, TEST_PASSWORD, add_user, bearer_client, create_token, event, post, run_cli};
use crate::web_ui::{mint_viewer_token, phished_timeline, proof_target};

/// Where the screenshots go: looked at by whoever changes the view.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
#[ignore = "tier 2: needs Chromium and node's playwright-core and axe-core (scripts/test.sh runs it)"]
async fn the_web_view_in_chromium() {
    let node_modules = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/auditlake-node/node_modules");
    assert!(
        node_modules.join("playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "Chromium or playwright-core is missing: run `bash scripts/setup.sh`"
    );
    let dir = tempfile::tempdir().unwrap();
    let (signing_key, ugc_key) = (dir.path().join("signing.key"), dir.path().join("ugc.key"));
    run_cli(&["keygen", "--signing-key", signing_key.to_str().unwrap()]);
    run_cli(&["keygen", "--ugc-key", ugc_key.to_str().unwrap()]);
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    run_cli(&[
        "demo",
        "--no-serve",
        "--events",
        "20000",
        "--seed",
        "3",
        "--signing-key",
        signing_key.to_str().unwrap(),
        "--data-dir",
        data_arg,
    ]);
    // A second organisation keeps content ids hashed.
    run_cli(&["org", "policy", "hashco", "--ugc", "hash", "--data-dir", data_arg]);
    add_user(&data, "analyst", &["--org", "acme"]);
    add_user(&data, "hasher", &["--org", "hashco"]);
    let acme_admin = create_token(&data, &["--org", "acme", "--scope", "admin"]);
    let acme_read = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let server = Server::start(
        &data,
        &["--signing-key", signing_key.to_str().unwrap(), "--ugc-key-file", ugc_key.to_str().unwrap()],
    );
    let touches: Vec<String> = [("h1", "h-ann"), ("h2", "h-bob"), ("h3", "h-ann")]
        .iter()
        .enumerate()
        .map(|(i, (id, actor))| {
            let mut touched = event(id, "hashco", actor, "confluence.page.viewed", i as i64);
            touched["content_id"] = "DOC-42".into();
            touched.to_string()
        })
        .collect();
    assert_eq!(post(&server.http(), &server.events_url(), touches.join("\n")).await.0, 200);

    let admin_sql = server.pg().await;
    let timeline_seqs = phished_timeline(&admin_sql).await;
    let globex_event: String =
        admin_sql.query_one("select id from audit_events where org_id = 'globex' limit 1", &[]).await.unwrap().get(0);
    let (proof_event, segment, flip_offset) = proof_target(&admin_sql, &data).await;
    let mint = |body: serde_json::Value| mint_viewer_token(&server, &acme_read, body);
    let viewer_token = mint(json!({ "end_user": "vendor-user-1" })).await;
    let expired_token = mint(json!({ "ttl_seconds": 1 })).await;

    let screenshots = screenshot_dir();
    let facts = json!({
        "base": server.http_url,
        "password": TEST_PASSWORD,
        "acme_admin_token": acme_admin,
        "timeline_seqs": timeline_seqs,
        "globex_event": globex_event,
        "probes": [
            "globex",
            "actor:globex-u001",
            "-actor:acme-u007 created:2000-01-01..2100-01-01",
            "\"' or org_id = 'globex\" ')) union select * from audit_events --",
            "ip:0.0.0.0/0 -outcome:success",
            "content:* container:*",
        ],
        "proof_event": proof_event,
        "segment": segment,
        "flip_offset": flip_offset,
        "hashed_content": "DOC-42",
        "hashed_actors": ["h-ann", "h-ann", "h-bob"],
        "viewer_token": viewer_token,
        "expired_token": expired_token,
        "screenshots": screenshots,
    });
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser_ui.js"))
        .env("NODE_PATH", &node_modules)
        .env("AUDITLAKE_UI_TEST", facts.to_string())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all ") && stdout.contains(" checks passed"), "{stdout}");
    eprintln!("{stdout}screenshots in {}", screenshots.display());
}
