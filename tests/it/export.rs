//! Reading events back over HTTP: pages in `seq` order with a cursor that
//! loses and repeats nothing while ingest goes on, scoped to one
//! organisation by a read token.

use serde_json::{Value, json};

use crate::harness::{Server, bearer_client, create_token, event, post, run_cli};

fn batch(prefix: &str, org: &str, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            let mut e = event(&format!("{prefix}{i}"), org, &format!("u{}", i % 5), "page.viewed", i as i64);
            e["attributes"] = json!({ "n": i });
            e.to_string() + "\n"
        })
        .collect()
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn paging_returns_every_event_once_in_seq_order_while_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small seals: the pages span segments and the buffer.
    let server = Server::start(&data, &["--seal-max-buffered-rows", "120"]);
    let sender = server.http();
    let reader = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    assert_eq!(post(&sender, &server.events_url(), batch("a", "acme", 0, 250)).await.0, 200);
    assert_eq!(post(&sender, &server.events_url(), batch("g", "globex", 0, 50)).await.0, 200);
    let events_url = format!("{}/v1/orgs/acme/events", server.http_url);

    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let url = if cursor.is_empty() {
            format!("{events_url}?limit=100")
        } else {
            format!("{events_url}?limit=100&cursor={cursor}")
        };
        let (status, page) = get(&reader, &url).await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["org_id"], "acme", "{e}");
            assert!(e["attributes"]["n"].is_number(), "attributes come back as the object sent: {e}");
            seen.push((e["seq"].as_i64().unwrap(), e["id"].as_str().unwrap().to_string()));
        }
        cursor = page["next_cursor"].as_str().unwrap().to_string();
        pages += 1;
        if pages == 1 {
            // More arrives while the reader is part-way through.
            assert_eq!(post(&sender, &server.events_url(), batch("a", "acme", 250, 120)).await.0, 200);
        }
        if page["more"] == false {
            break;
        }
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "strictly in seq order");
    let mut ids: Vec<String> = seen.into_iter().map(|(_, id)| id).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..370).map(|i| format!("a{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every acme event once, none of globex");

    // Polling at the end: nothing new, the same cursor back.
    let (_, page) = get(&reader, &format!("{events_url}?cursor={cursor}")).await;
    assert_eq!((page["events"].as_array().unwrap().len(), page["next_cursor"].as_str()), (0, Some(cursor.as_str())));

    // Filters: one actor, a time range, text.
    let (_, page) = get(&reader, &format!("{events_url}?actor=u1&limit=1000")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 74);
    let (_, page) =
        get(&reader, &format!("{events_url}?from=2026-11-20T08:10:00Z&to=2026-11-20T08:20:00Z&limit=1000")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 10);
    let (_, page) = get(&reader, &format!("{events_url}?q=PAGE.VIEWED&limit=3")).await;
    assert_eq!((page["events"].as_array().unwrap().len(), &page["more"]), (3, &json!(true)));

    // One event by id; another organisation's id is not found here.
    let (status, one) = get(&reader, &format!("{events_url}/a7")).await;
    assert_eq!(
        (status, &one["id"], &one["actor_id"], &one["attributes"]["n"]),
        (200, &json!("a7"), &json!("u2"), &json!(7))
    );
    assert_eq!(get(&reader, &format!("{events_url}/g7")).await.0, 404);

    // Only acme's read token reads acme; bad parameters are named.
    let (status, _) = get(&reader, &format!("{}/v1/orgs/globex/events", server.http_url)).await;
    assert_eq!(status, 403);
    assert_eq!(get(&sender, &events_url).await.0, 403, "an ingest token does not read");
    assert_eq!(reqwest::get(&events_url).await.unwrap().status(), 401);
    let (status, answer) = get(&reader, &format!("{events_url}?limit=5000")).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("limit=5000"), "{answer}");
    let (status, answer) = get(&reader, &format!("{events_url}?from=yesterday")).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("from=\"yesterday\""), "{answer}");
    let (status, _) = get(&reader, &format!("{events_url}?colour=red")).await;
    assert_eq!(status, 400, "unknown parameters are refused, not ignored");
}

#[tokio::test]
async fn auditlake_export_writes_one_organisations_time_range_as_jsonl_or_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--seal-max-buffered-rows", "40"]);
    assert_eq!(post(&server.http(), &server.events_url(), batch("a", "acme", 0, 100)).await.0, 200);
    assert_eq!(post(&server.http(), &server.events_url(), batch("g", "globex", 0, 100)).await.0, 200);
    // 08:10 to 09:00: minutes 10 to 59, fifty events of acme; pages of 7.
    let range =
        ["--org", "acme", "--from", "2026-11-20T08:10:00Z", "--to", "2026-11-20T09:00:00Z", "--page-events", "7"];

    let jsonl = dir.path().join("acme.jsonl");
    let out =
        run_cli(&[&["export"][..], &range, &["--server", &server.url(), "--out", jsonl.to_str().unwrap()]].concat());
    assert!(out.starts_with("50 events of acme written to"), "{out}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut ids: Vec<String> = lines.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    // Windows of 7 seqs in seq order; inside one, storage order.
    let seqs: Vec<i64> = lines.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| (w[0] - 1) / 7 <= (w[1] - 1) / 7), "windows in seq order: {seqs:?}");
    ids.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(ids, (10..60).map(|i| format!("a{i}")).collect::<Vec<_>>(), "each once");
    assert_eq!(lines[0]["attributes"], json!({"n": 10}), "attributes as the object sent");
    assert_eq!(lines[0]["org_id"], "acme");

    let again = crate::harness::run_cli_status(
        &[&["export"][..], &range, &["--server", &server.url(), "--out", jsonl.to_str().unwrap()]].concat(),
    );
    assert!(!again.0 && again.1.contains("never overwrites"), "{}", again.1);

    // From the data directory itself, once the server is gone, as Parquet.
    server.kill();
    let parquet = dir.path().join("acme.parquet");
    let data_dir = ["--data-dir", data.to_str().unwrap()];
    run_cli(
        &[&["export"][..], &range, &data_dir, &["--format", "parquet", "--out", parquet.to_str().unwrap()]].concat(),
    );
    let file = std::fs::File::open(&parquet).unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let mut exported = Vec::new();
    for batch in reader.build().unwrap() {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("id").unwrap();
        let ids = datafusion::arrow::array::AsArray::as_string::<i32>(ids);
        exported.extend(ids.iter().map(|id| id.unwrap().to_string()));
    }
    exported.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(exported, ids);
}

/// A read the server refuses for its own limits says so: memory refused is
/// 503 with Retry-After (it was 500, as if the server had failed), and a
/// token file the server cannot read is its own fault, 500, never a 401
/// that would tell the client its token is bad.
#[tokio::test]
async fn refusals_for_the_servers_limits_or_faults_are_not_blamed_on_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--query-memory-bytes", "1024"]);
    let reader = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    assert_eq!(post(&server.http(), &server.events_url(), batch("a", "acme", 0, 200)).await.0, 200);

    let response = reader.get(format!("{}/v1/orgs/acme/events?limit=100", server.http_url)).send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(answer["error"].as_str().unwrap().contains("memory"), "{answer}");

    std::fs::write(data.join("tokens.json"), b"{damaged").unwrap();
    let (status, answer) = get(&reader, &format!("{}/v1/orgs/acme/events", server.http_url)).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("token store"), "{answer}");
}

/// The search language over HTTP: each qualifier narrows acme's events, a
/// negated one keeps events without a value, and nothing typed reaches
/// another organisation's rows or runs when it cannot be read.
#[tokio::test]
async fn search_qualifiers_select_exactly_and_never_leave_the_tokens_organisation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let reader = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let mut events = [
        event("a1", "acme", "alice", "confluence.page.viewed", 0),
        event("a2", "acme", "alice", "confluence.page.exported", 60 * 24),
        event("a3", "acme", "bob", "jira.issue.viewed", 60 * 48),
        event("a4", "acme", "bob", "confluence.page.exported", 60 * 72),
        event("g1", "globex", "alice", "confluence.page.exported", 60 * 24),
    ];
    events[1]["outcome"] = json!("failure");
    events[1]["content_id"] = json!("PAGE 7");
    events[2]["source_ip"] = json!("192.168.7.9");
    events[3]["outcome"] = json!("success");
    events[3]["attributes"] = json!({"reason": "Quarterly EXPORT"});
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    assert_eq!(post(&server.http(), &server.events_url(), body.join("\n")).await.0, 200);
    let base = format!("{}/v1/orgs/acme/events", server.http_url);
    let url = |search: &str| reqwest::Url::parse_with_params(&base, [("search", search)]).unwrap().to_string();
    let ids = |page: &Value| -> Vec<String> {
        page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    // The events are on 2026-11-20, 21, 22 and 23, from 08:00 UTC.
    for (search, expected) in [
        ("actor:alice", &["a1", "a2"][..]),
        ("action:confluence.page.*", &["a1", "a2", "a4"]),
        ("action:confluence.page.* -actor:alice", &["a4"]),
        ("-outcome:success", &["a1", "a2", "a3"]),
        ("outcome:failure", &["a2"]),
        (r#"content:"PAGE 7""#, &["a2"]),
        ("ip:192.168.0.0/16", &["a3"]),
        ("-ip:10.0.0.1", &["a3"]),
        ("created:2026-11-21", &["a2"]),
        ("created:2026-11-21..2026-11-22", &["a2", "a3"]),
        ("created:>2026-11-21 created:<=2026-11-23", &["a3", "a4"]),
        ("quarterly", &["a4"]),
        ("", &["a1", "a2", "a3", "a4"]),
    ] {
        let (status, page) = get(&reader, &url(search)).await;
        assert_eq!(status, 200, "{search}: {page}");
        assert_eq!(ids(&page), expected, "{search}");
    }
    // What a tenant might type to reach globex's rows finds only acme's, or nothing.
    for probe in ["actor:alice action:confluence.page.exported", "g1", "globex", "-actor:nobody"] {
        let (status, page) = get(&reader, &url(probe)).await;
        assert_eq!(status, 200, "{probe}: {page}");
        assert!(page["events"].as_array().unwrap().iter().all(|e| e["org_id"] == "acme"), "{probe}: {page}");
    }
    // The longest search allowed runs.
    let (status, page) = get(&reader, &url(&"-zz ".repeat(32))).await;
    assert_eq!((status, ids(&page).len()), (200, 4), "{page}");
    // Refused before anything runs, naming the token and where it is.
    for (search, named) in [
        ("actor:alice org:globex", "`org:globex` at character 13"),
        ("ip:10.0.0.0/33", "`ip:10.0.0.0/33` at character 1"),
        ("created:2026-02-30", "`2026-02-30` is not a date"),
        ("actor:\"alice", "unclosed quote in `actor:\"alice` at character 1"),
        (&"-x ".repeat(33), "at most 32 terms in `-x` at character 97"),
        (&"x".repeat(2049), "more than 2048"),
    ] {
        let (status, refused) = get(&reader, &url(search)).await;
        assert_eq!(status, 400, "{search}: {refused}");
        assert!(refused["error"].as_str().unwrap().contains(named), "{search}: {refused}");
    }
}

/// Viewer tokens: made by the application with its read token, for one
/// organisation and optionally one actor; nothing typed or put in the URL
/// widens them, and a changed or expired token reads nothing.
#[tokio::test]
async fn viewer_tokens_read_only_their_narrowing_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let app = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let ingest = bearer_client(&create_token(&data, &["--org", "acme", "--scope", "ingest"]));
    let events = [
        event("a1", "acme", "alice", "confluence.page.viewed", 0),
        event("a2", "acme", "bob", "confluence.page.viewed", 1),
        event("a3", "acme", "alice", "jira.issue.viewed", 2),
        event("g1", "globex", "alice", "confluence.page.viewed", 3),
    ];
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    assert_eq!(post(&server.http(), &server.events_url(), body.join("\n")).await.0, 200);
    let mint_url = format!("{}/v1/orgs/acme/viewer-tokens", server.http_url);
    let mint = |client: reqwest::Client, body: Value| {
        let url = mint_url.clone();
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, minted) = mint(app.clone(), json!({"actor": "alice", "end_user": "vendor-user-7"})).await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["claims"]["actor"], "alice");
    let viewer = bearer_client(minted["token"].as_str().unwrap());
    let read = |client: &reqwest::Client, org: &str, search: &str| {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/v1/orgs/{org}/events", server.http_url), [("search", search)]);
        let client = client.clone();
        async move { get(&client, url.unwrap().as_str()).await }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .map_or(vec![], |events| events.iter().map(|e| e["id"].as_str().unwrap().into()).collect())
    };
    let (status, page) = read(&viewer, "acme", "").await;
    assert_eq!((status, ids(&page)), (200, vec!["a1".into(), "a3".into()]), "{page}");
    let (_, page) = read(&viewer, "acme", "action:jira.*").await;
    assert_eq!(ids(&page), ["a3"]);
    for widening in ["actor:bob", "-actor:alice", "bob"] {
        let (status, page) = read(&viewer, "acme", widening).await;
        assert_eq!((status, ids(&page)), (200, vec![]), "{widening}: {page}");
    }
    let (status, page) = read(&viewer, "globex", "").await;
    assert_eq!(status, 403, "{page}");
    // One event by id, within the narrowing only: bob's is not there for it.
    let one = |id: &str| {
        let (viewer, url) = (viewer.clone(), format!("{}/v1/orgs/acme/events/{id}", server.http_url));
        async move { get(&viewer, &url).await }
    };
    let (status, found) = one("a1").await;
    assert_eq!((status, &found["actor_id"]), (200, &json!("alice")), "{found}");
    assert_eq!(one("a2").await.0, 404);
    assert_eq!(one("g1").await.0, 404);
    // It is no API token: it sends nothing.
    let sent = post(&viewer, &server.events_url(), event("v1", "acme", "alice", "x.y", 0).to_string()).await;
    assert_eq!(sent.0, 401, "{}", sent.1);

    // A token changed by its holder is not this server's.
    let token = minted["token"].as_str().unwrap();
    let (claims, tag) = token.trim_start_matches("alv_").split_once('.').unwrap();
    let mut changed = claims.to_string();
    changed.replace_range(0..1, if claims.starts_with('e') { "f" } else { "e" });
    let (status, page) = read(&bearer_client(&format!("alv_{changed}.{tag}")), "acme", "").await;
    assert_eq!(status, 401, "{page}");

    // Lifetimes: one second, then refused with a message saying so.
    let (status, short) = mint(app.clone(), json!({"ttl_seconds": 1})).await;
    assert_eq!(status, 201, "{short}");
    let short = bearer_client(short["token"].as_str().unwrap());
    assert_eq!(read(&short, "acme", "").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, expired) = read(&short, "acme", "").await;
    assert_eq!(status, 401, "{expired}");
    assert!(expired["error"].as_str().unwrap().contains("expired at"), "{expired}");

    // Only a read token of the organisation makes them, within the limits.
    for (client, body, expected) in [
        (ingest.clone(), json!({}), 403),
        (app.clone(), json!({"ttl_seconds": 0}), 400),
        (app.clone(), json!({"ttl_seconds": 86401}), 400),
        (app.clone(), json!({"org": "globex"}), 400),
        (viewer.clone(), json!({}), 401),
    ] {
        let (status, answer) = mint(client, body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }

    // What the vendor's end user read through the API is on record, in
    // acme's trail, as the embedded viewer's pages are.
    let admin = server.pg().await;
    crate::harness::wait_until("the viewer's API reads are recorded", || async {
        let recorded = admin
            .query(
                "select json_get_str(attributes, 'view') from audit_events where org_id = 'acme' \
                 and action = 'audit_log.ui_read' and actor_id = 'vendor-user-7' and actor_type = 'viewer_end_user'",
                &[],
            )
            .await
            .unwrap();
        let views: Vec<String> = recorded.iter().map(|row| row.get(0)).collect();
        ["api_events", "api_event"].iter().all(|view| views.iter().any(|v| v == view))
    })
    .await;
}
