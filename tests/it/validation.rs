//! Bad input over HTTP: clear errors that name line and field, and nothing stored.

use serde_json::{Value, json};

use crate::harness::{APP, Server, event, post};

/// An expected `(line, field, words in the error)` of a 400 answer.
type Expected = (usize, &'static str, &'static str);

async fn count(server: &Server) -> i64 {
    server.pg().await.query_one(&format!("select count(*) from audit_events where {APP}"), &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn every_rejection_reason_is_named_and_a_rejected_batch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-body-bytes", "16384"]);
    let http = server.http();
    let url = server.events_url();

    let (status, _) = post(&http, &url, event("kept", "acme", "u1", "x", 0).to_string()).await;
    assert_eq!(status, 200);

    let good = event("good", "acme", "u1", "x", 0);
    let mut no_time = good.clone();
    no_time.as_object_mut().unwrap().remove("time");
    let mut bad_time = good.clone();
    bad_time["time"] = json!("26/11/2026 10:00");
    let mut no_actor = good.clone();
    no_actor.as_object_mut().unwrap().remove("actor_id");
    let mut wrong_type = good.clone();
    wrong_type["org_id"] = json!(42);
    let mut too_deep = good.clone();
    too_deep["attributes"] = (0..40).fold(json!("bottom"), |inner, _| json!({ "k": inner }));
    let mut too_long = good.clone();
    too_long["user_agent"] = json!("a".repeat(5000));
    let mut no_action_no_org = good.clone();
    no_action_no_org.as_object_mut().unwrap().remove("action");
    no_action_no_org.as_object_mut().unwrap().remove("org_id");

    let cases: Vec<(Value, &[Expected])> = vec![
        (no_time, &[(2, "time", "missing")]),
        (bad_time, &[(2, "time", "RFC 3339")]),
        (no_actor, &[(2, "actor_id", "missing")]),
        (wrong_type, &[(2, "org_id", "expected a string, got number")]),
        (too_long, &[(2, "user_agent", "limit")]),
        (too_deep, &[(2, "attributes", "40 levels deep")]),
        (no_action_no_org, &[(2, "org_id", "missing"), (2, "action", "missing")]),
    ];
    for (bad, expected) in cases {
        // A good event on line 1, the bad one on line 2: the batch is all or nothing.
        let body = format!("{good}\n{bad}\n");
        let (status, answer) = post(&http, &url, body).await;
        assert_eq!(status, 400, "{answer}");
        let errors = answer["errors"].as_array().unwrap();
        assert_eq!(errors.len(), expected.len(), "{answer}");
        for (line, field, needle) in expected {
            assert!(
                errors.iter().any(|e| e["line"] == json!(line)
                    && e["field"] == json!(field)
                    && e["error"].as_str().unwrap().contains(needle)),
                "expected {line}/{field}/{needle} in {answer}"
            );
        }
    }

    // Not UTF-8: named by its line; the byte is in the second line.
    let mut not_utf8 = format!("{good}\n").into_bytes();
    not_utf8.extend_from_slice(b"{\"time\": \"\xff\"}\n");
    let response = http.post(&url).body(not_utf8).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["errors"][0]["line"], 2, "{answer}");
    assert!(answer["errors"][0]["error"].as_str().unwrap().contains("UTF-8"), "{answer}");

    let (status, answer) = post(&http, &url, "[{\"time\": ".into()).await;
    assert_eq!(status, 400);
    assert!(answer["errors"][0]["error"].as_str().unwrap().contains("malformed JSON"), "{answer}");

    let (status, answer) = post(&http, &url, format!("{good}\n").repeat(150)).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("16384 bytes"), "{answer}");

    assert_eq!(count(&server).await, 1, "only the first, valid request was stored");
    let ids = server.sql(&format!("select id from audit_events where {APP}")).unwrap();
    assert_eq!(ids, "kept\n");
}

#[tokio::test]
async fn a_full_buffer_answers_503_with_retry_after_and_recovers_once_sealed() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny buffer limit and a sealer that waits 1.5 s: the second batch finds the buffer full.
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-buffered-bytes", "1", "--seal-after-ms", "1500", "--seal-max-buffered-rows", "1000000"],
    );
    let http = server.http();
    let body =
        |n: usize| (0..n).map(|i| event(&format!("b{n}-{i}"), "acme", "u1", "x", 0).to_string() + "\n").collect();
    let (status, _) = post(&http, &server.events_url(), body(10)).await;
    assert_eq!(status, 200, "an empty buffer takes the first batch");

    let response = http.post(server.events_url()).body(body(20)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("waiting to be sealed"), "{answer}");

    // Once the sealer has run, the same batch is accepted; nothing was stored twice or lost.
    let mut accepted = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (status, answer) = post(&http, &server.events_url(), body(20)).await;
        if status == 200 {
            assert_eq!(answer["first_seq"], 11);
            accepted = true;
            break;
        }
        assert_eq!(status, 503, "{answer}");
    }
    assert!(accepted, "ingest did not recover after sealing");
    assert_eq!(count(&server).await, 30);
}

#[tokio::test]
async fn gzip_bodies_are_inflated_within_the_limit_and_other_encodings_and_types_refused() {
    use std::io::Write;
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-body-bytes", "16384"]);
    let http = server.http();
    let url = server.events_url();
    let send = |body: Vec<u8>, content_type: &'static str, encoding: Option<&'static str>| {
        let mut request = http.post(&url).body(body).header("content-type", content_type);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let batch = format!("{}\n{}\n", event("z1", "acme", "u1", "x", 0), event("z2", "acme", "u1", "x", 1));

    let (status, answer) = send(gzip(batch.as_bytes()), "application/x-ndjson", Some("gzip")).await;
    assert_eq!(status, 200, "{answer}");
    let other = format!("{}\n{}\n", event("z4", "acme", "u1", "x", 3), event("z5", "acme", "u1", "x", 4));
    let (status, answer) = send(other.into_bytes(), "application/json; charset=utf-8", None).await;
    assert_eq!(status, 200, "{answer}");
    // 1 MiB of spaces inflates past the 16 KiB limit from a tiny body.
    let bomb = gzip(format!("{}{}", " ".repeat(1 << 20), event("z3", "acme", "u1", "x", 2)).as_bytes());
    assert!(bomb.len() < 16384);
    let (status, answer) = send(bomb, "application/json", Some("gzip")).await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = send(batch.clone().into_bytes(), "application/json", Some("gzip")).await;
    assert_eq!(status, 400, "not gzip: {answer}");
    assert!(answer.contains("gzip"), "{answer}");
    let (status, answer) = send(gzip(batch.as_bytes()), "application/json", Some("br")).await;
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("Content-Encoding \\\"br\\\""), "{answer}");
    for content_type in ["application/x-www-form-urlencoded", "text/csv", "application/json; charset=latin1"] {
        let (status, answer) = send(batch.clone().into_bytes(), content_type, None).await;
        assert_eq!(status, 415, "{content_type}: {answer}");
    }
    // Two gzip members one after the other (what `cat a.gz b.gz` makes, and
    // what gzip(1) itself reads as one file): every member's events.
    let first = format!("{}\n", event("m1", "acme", "u1", "x", 5));
    let second = format!("{}\n", event("m2", "acme", "u1", "x", 6));
    let members = [gzip(first.as_bytes()), gzip(second.as_bytes())].concat();
    let (status, answer) = send(members, "application/x-ndjson", Some("gzip")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"accepted\":2"), "both members: {answer}");
    assert_eq!(count(&server).await, 6, "three accepted batches of two events, nothing else");

    // The API describes itself, as the repository keeps it, without a token.
    let response = reqwest::get(format!("{}/openapi.json", server.http_url)).await.unwrap();
    assert_eq!(response.status(), 200);
    let document = response.text().await.unwrap();
    let kept = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.json")).unwrap();
    assert_eq!(document, kept);
}
