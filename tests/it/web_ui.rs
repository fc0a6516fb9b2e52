//! The web view (`/ui/`) against the real binary on the demo's data, over
//! plain HTTP: who may sign in, that every page holds only the reader's
//! organisation whatever is typed or put in the URL, that searches are
//! refused with their token and position, the limits, and that every page
//! shown is on record. (Chromium drives the same pages in `browser.rs`.)

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE, X_FRAME_OPTIONS};

use crate::harness::{Server, TEST_PASSWORD, TEST_USER, add_user, create_token, demo_data_dir, wait_until};

/// A browser without a cookie jar: the session cookie is carried by hand,
/// redirects are not followed, so each answer is seen as sent.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    pub fn new(server: &Server) -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { client, base: server.http_url.clone(), cookie: None }
    }

    /// Posts the sign-in form; the status and where it sends the browser.
    pub async fn sign_in(&mut self, form: &[(&str, &str)]) -> (StatusCode, String) {
        let response = self.client.post(format!("{}/ui/sign-in", self.base)).form(form).send().await.unwrap();
        if let Some(cookie) = response.headers().get(SET_COOKIE) {
            self.cookie = Some(cookie.to_str().unwrap().split(';').next().unwrap().to_string());
        }
        let status = response.status();
        let location = response.headers().get(LOCATION).map_or(String::new(), |l| l.to_str().unwrap().to_string());
        (status, if location.is_empty() { response.text().await.unwrap() } else { location })
    }

    pub async fn get(&self, path_and_query: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self.client.get(format!("{}{path_and_query}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    /// A page that must be shown: its HTML.
    pub async fn page(&self, path_and_query: &str) -> String {
        let (status, _, html) = self.get(path_and_query).await;
        assert_eq!(status, StatusCode::OK, "{path_and_query}: {html}");
        html
    }
}

/// `text` with its tags removed and its entities read.
fn plain(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The rows of a page's events table: each row's seq and its cells' text.
pub fn rows(html: &str) -> Vec<(i64, Vec<String>)> {
    html.split("<tr data-seq=\"")
        .skip(1)
        .map(|row| {
            let (seq, rest) = row.split_once('"').unwrap();
            let row = rest.split("</tr>").next().unwrap();
            let cells = row.split("<td").skip(1).map(|cell| plain(&format!("<td{cell}")).trim().to_string()).collect();
            (seq.parse().unwrap(), cells)
        })
        .collect()
}

/// Where a page's "Next page" link goes.
fn next_page(html: &str) -> Option<String> {
    let end = html.find("\" rel=\"next\"")?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(html[start..end].replace("&amp;", "&"))
}

fn urlencoded(text: &str) -> String {
    serde_urlencoded::to_string([("", text)]).unwrap()[1..].to_string()
}

fn q(search: &str) -> String {
    serde_urlencoded::to_string([("q", search)]).unwrap()
}

#[tokio::test]
async fn the_web_view_shows_each_reader_their_own_organisation_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 20_000, 3);
    add_user(&data, "analyst", &["--org", "acme"]);
    let acme_read = create_token(&data, &["--org", "acme", "--scope", "read"]);
    let acme_ingest = create_token(&data, &["--org", "acme", "--scope", "ingest"]);
    let server = Server::start(&data, &[]);
    let admin_sql = server.pg().await;

    // Not signed in: every view sends the browser to the sign-in page.
    let mut analyst = Browser::new(&server);
    for path in ["/ui/events", "/ui/timeline?actor=acme-u007", "/ui/event/acme/x", "/ui/content?id=1"] {
        let (status, headers, _) = analyst.get(path).await;
        let to = format!("/ui/sign-in?next={}", urlencoded(path));
        assert_eq!((status, headers.get(LOCATION).unwrap().to_str().unwrap()), (StatusCode::SEE_OTHER, to.as_str()));
    }
    // Signed in from a shared link, the reader lands on it; never elsewhere.
    let (_, _, form) = analyst.get("/ui/sign-in?next=%2Fui%2Ftimeline%3Factor%3Dacme-u007").await;
    assert!(form.contains("name=\"next\" value=\"/ui/timeline?actor=acme-u007\""), "{form}");
    let mut linked = Browser::new(&server);
    let next = [("user", "analyst"), ("password", TEST_PASSWORD), ("next", "/ui/timeline?actor=acme-u007")];
    assert_eq!(linked.sign_in(&next).await.1, "/ui/timeline?actor=acme-u007");
    let away = [("user", "analyst"), ("password", TEST_PASSWORD), ("next", "//evil.example/ui/")];
    assert_eq!(linked.sign_in(&away).await.1, "/ui/events");
    // Behind a TLS proxy, the session cookie is for HTTPS only.
    let proxied = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let answer = proxied
        .post(format!("{}/ui/sign-in", server.http_url))
        .header("X-Forwarded-Proto", "https")
        .form(&[("user", "analyst"), ("password", TEST_PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = answer.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cookie.ends_with("HttpOnly; SameSite=Strict; Secure"), "{cookie}");
    // Wrong passwords, unknown names and other scopes' tokens are refused.
    for form in [
        vec![("user", "analyst"), ("password", "not-the-password")],
        vec![("user", "nobody"), ("password", TEST_PASSWORD)],
        vec![("token", "alt_not_a_token")],
    ] {
        let (status, page) = analyst.sign_in(&form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{form:?}: {page}");
        assert!(page.contains("is wrong"), "{page}");
    }
    let (status, page) = analyst.sign_in(&[("token", &acme_ingest)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    // A form posted from another site is refused before any check.
    let cross = reqwest::Client::new()
        .post(format!("{}/ui/sign-in", server.http_url))
        .header("Origin", "http://evil.example")
        .form(&[("user", "analyst"), ("password", TEST_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    // A sign-in form is small: a large body is refused unread, so that
    // anonymous clients cannot make the server hold megabytes each.
    let padding = "x".repeat(1024 * 1024);
    let large = reqwest::Client::new()
        .post(format!("{}/ui/sign-in", server.http_url))
        .form(&[("user", "analyst"), ("password", padding.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(analyst.sign_in(&[("user", "analyst"), ("password", TEST_PASSWORD)]).await.1, "/ui/events");
    let (status, headers, html) = analyst.get("/ui/events").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let policy = headers.get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(policy.starts_with("default-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(headers.get(X_FRAME_OPTIONS).unwrap(), "DENY");
    let shown = rows(&html);
    assert_eq!(shown.len(), 100, "a page of 100 events by default");
    assert!(shown.iter().all(|(_, cells)| cells[1] == "acme"), "{shown:?}");
    for asset in ["/ui/assets/ui.css", "/ui/assets/ui.js"] {
        assert_eq!(analyst.get(asset).await.0, StatusCode::OK, "{asset}");
    }

    // Whatever the analyst types or puts in the URL, nothing of another
    // organisation is shown (the hostile-tenant suite's shapes, as searches).
    let globex_event = admin_sql
        .query_one(
            "select id, content_id from audit_events where org_id = 'globex' and content_id is not null limit 1",
            &[],
        )
        .await
        .unwrap();
    let (globex_id, globex_content): (String, String) = (globex_event.get(0), globex_event.get(1));
    let probes = [
        format!("/ui/events?{}", q("globex")),
        format!("/ui/events?{}", q("actor:globex-u001")),
        format!("/ui/events?{}&org=globex&org_id=globex", q("")),
        format!("/ui/events?{}", q("-actor:acme-u007 created:2000-01-01..2100-01-01")),
        format!("/ui/events?{}", q("\"' or org_id = 'globex\" ')) union select * from audit_events --")),
        format!("/ui/events?{}", q("ip:0.0.0.0/0 -outcome:success -outcome:failure")),
        format!("/ui/timeline?actor=globex-u001&{}", q("created:2000-01-01..2100-01-01")),
        format!("/ui/content?id={globex_content}&{}", q("created:2000-01-01..2100-01-01")),
    ];
    for probe in &probes {
        let html = analyst.page(probe).await;
        for (_, cells) in rows(&html) {
            assert!(!cells.iter().any(|cell| cell.contains("globex")), "{probe}: {cells:?}");
        }
        // A page echoes what was typed, and nothing else of globex.
        if !probe.contains("globex") {
            assert!(!plain(&html).contains("globex"), "{probe} names globex");
        }
    }
    // What is typed comes back as text, never as markup, wherever a page
    // repeats it (title, caption, fields, links).
    let markup = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    for probe in [
        format!("/ui/timeline?actor={}", urlencoded(markup)),
        format!("/ui/content?id={}", urlencoded(markup)),
        format!("/ui/events?{}", q(markup)),
        format!("/ui/saved/actor_timeline?actor={}&since={}", urlencoded(markup), urlencoded(markup)),
    ] {
        let (_, _, html) = analyst.get(&probe).await;
        assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "{probe} echoes markup: {html}");
    }
    let (status, _, html) = analyst.get(&format!("/ui/event/globex/{globex_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(!html.contains(&globex_id), "the refusal does not echo the event");
    // The admin sees it, and every organisation.
    let mut admin = Browser::new(&server);
    admin.sign_in(&[("user", TEST_USER), ("password", TEST_PASSWORD)]).await;
    let html = admin.page(&format!("/ui/event/globex/{globex_id}")).await;
    assert!(html.contains(&globex_id) && html.contains("Attributes"), "{html}");
    let html = admin.page(&format!("/ui/events?{}&rows=500", q("created:2000-01-01..2100-01-01"))).await;
    let orgs: std::collections::BTreeSet<String> = rows(&html).into_iter().map(|(_, cells)| cells[1].clone()).collect();
    assert!(orgs.contains("globex") && orgs.contains("acme"), "{orgs:?}");

    // A read token signs in too, to its own organisation.
    let mut token_reader = Browser::new(&server);
    assert_eq!(token_reader.sign_in(&[("token", &acme_read)]).await.1, "/ui/events");
    let html = token_reader.page(&format!("/ui/events?{}", q("globex"))).await;
    assert!(rows(&html).iter().all(|(_, cells)| cells[1] == "acme"));

    // The timeline of the phished account: exactly its events, oldest first,
    // as SQL lists them.
    let all_time = q("created:2000-01-01..2100-01-01");
    let html = analyst.page(&format!("/ui/timeline?actor=acme-u007&{all_time}&rows=500")).await;
    let seqs: Vec<i64> = rows(&html).into_iter().map(|(seq, _)| seq).collect();
    let expected = phished_timeline(&admin_sql).await;
    assert!(expected.len() > 50, "the demo gives acme-u007 a history");
    assert_eq!(seqs, expected);
    assert!(html.contains("203.0.113.50 <span class=\"badge\">new IP</span>"), "the attacker's address is marked new");
    // Pages follow each other without a gap or a repeat.
    let mut paged = Vec::new();
    let mut next = format!("/ui/timeline?actor=acme-u007&{all_time}&rows=7");
    loop {
        let html = analyst.page(&next).await;
        paged.extend(rows(&html).into_iter().map(|(seq, _)| seq));
        let Some(link) = next_page(&html) else { break };
        next = link;
    }
    assert_eq!(paged, expected);

    // A saved query, its parameters typed into its form: the same rows as
    // SQL gives, as a table, a CSV or a JSONL download.
    let listed = analyst.page("/ui/saved").await;
    assert!(listed.contains("action=\"/ui/saved/actor_timeline\"") && listed.contains("id=\"actor_timeline-since\""));
    let html = analyst.page("/ui/saved/actor_timeline?actor=acme-u007&since=2000-01-01&format=html").await;
    let shown = html.matches("<tr class=\"result\">").count();
    assert_eq!(shown, expected.len(), "{}", plain(&html));
    assert!(plain(&html).contains(&format!("{} rows.", expected.len())));
    let csv = analyst.get("/ui/saved/actor_timeline?actor=acme-u007&since=2000-01-01&format=csv").await;
    assert_eq!(csv.1.get("content-type").unwrap(), "text/csv; charset=utf-8");
    assert!(csv.1.get("content-disposition").unwrap().to_str().unwrap().contains("actor_timeline.csv"));
    assert_eq!(csv.2.lines().count(), expected.len() + 1, "a header and one line a row");
    let jsonl = analyst.get("/ui/saved/actor_timeline?actor=acme-u007&since=2000-01-01&format=jsonl").await;
    assert_eq!(jsonl.2.lines().count(), expected.len());
    assert!(jsonl.2.lines().all(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["org_id"] == "acme"));
    // A bad parameter is refused next to its field, and nothing runs.
    for (query, field, reason) in [
        ("actor=acme-u007&since=last+tuesday", "since", "is not a date"),
        ("since=2026-11-01", "actor", "this parameter is required"),
    ] {
        let (status, _, html) = analyst.get(&format!("/ui/saved/actor_timeline?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(html.contains(&format!("id=\"actor_timeline-{field}-error\"")), "{html}");
        assert!(plain(&html).contains(reason), "{query}");
        assert_eq!(html.matches("<tr class=\"result\">").count(), 0);
    }
    // Another organisation's actor gives nothing, as in SQL.
    let html = analyst.page("/ui/saved/actor_timeline?actor=globex-u001&since=2000-01-01").await;
    assert!(plain(&html).contains("0 rows."), "{}", plain(&html));

    // Refusals name what is wrong, and run nothing.
    for (search, named) in [
        (
            "actor:acme-u007 bogus:1",
            "unknown qualifier `bogus:` (known: actor, action, ip, outcome, product, content, container, created) in `bogus:1` at character 17",
        ),
        ("created:2026-13-01", "`2026-13-01` is not a date"),
        ("ip:10.0.0.0/33", "`10.0.0.0/33` is not an IP address or CIDR block"),
        ("\"unclosed", "unclosed quote"),
    ] {
        let (status, _, html) = analyst.get(&format!("/ui/events?{}", q(search))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{search}");
        assert!(plain(&html).contains(named), "{search}: {}", plain(&html));
        assert!(rows(&html).is_empty());
    }
    // The widest window dates can name is a window, not an overflow.
    for search in ["created:-262000-01-01..+262000-01-01", "created:<-262143-01-02", "created:>+262142-12-30"] {
        let (status, _, html) = analyst.get(&format!("/ui/events?{}", q(search))).await;
        assert_eq!(status, StatusCode::OK, "{search}: {html}");
        let (status, _, html) = analyst.get(&format!("/ui/timeline?actor=acme-u007&{}", q(search))).await;
        assert_eq!(status, StatusCode::OK, "{search}: {html}");
    }
    let (status, _, html) = analyst.get("/ui/events?rows=501").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(plain(&html).contains("a page shows 1 to 500 rows"), "{html}");
    let long = "x".repeat(2049);
    let (status, _, html) = analyst.get(&format!("/ui/events?{}", q(&long))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(plain(&html).contains("more than 2048"), "{}", plain(&html));
    // Filter controls become one search in the URL.
    let (status, headers, _) = analyst.get("/ui/events?q=outcome%3Afailure&actor=acme-u007&from=2026-11-01").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers.get(LOCATION).unwrap(),
        "/ui/events?q=outcome%3Afailure+actor%3Aacme-u007+created%3A2026-11-01..*"
    );

    // Every page shown is on record, in the reader's own organisation's
    // trail, with the view and the search; the refused sign-ins too.
    wait_until("the analyst's reads are recorded", || async {
        let recorded = admin_sql
            .query_one(
                "select count(*) from audit_events where org_id = 'acme' and action = 'audit_log.ui_read' \
                 and actor_id = 'analyst' and json_get_str(attributes, 'view') = 'timeline' \
                 and json_get_str(attributes, 'search') like '%actor:acme-u007'",
                &[],
            )
            .await
            .unwrap();
        recorded.get::<_, i64>(0) >= 2
    })
    .await;
    let refused = admin_sql
        .query_one(
            "select count(*) from audit_events where action = 'audit_log.login_failed' \
             and actor_id in ('analyst', 'nobody') and json_get_str(attributes, 'view') = 'sign_in'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(refused.get::<_, i64>(0), 2);

    // A session that asks too fast is told to wait, and others are not.
    let mut answers = Vec::new();
    for _ in 0..100 {
        answers.push(analyst.get("/ui/timeline").await.0);
    }
    assert!(answers.contains(&StatusCode::TOO_MANY_REQUESTS), "{answers:?}");
    assert_eq!(admin.get("/ui/timeline").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(analyst.get("/ui/timeline").await.0, StatusCode::OK, "the budget refills");
}

/// An acme event of a demo data directory to look at, the segment that
/// holds it, and the offset of a byte that, changed, changes another event
/// of its block of 256 leaves (a byte of that event's id, which the segment
/// holds as 16 plain bytes).
pub async fn proof_target(
    admin_sql: &tokio_postgres::Client,
    data: &std::path::Path,
) -> (String, std::path::PathBuf, usize) {
    let looked_at = admin_sql
        .query_one(
            "select id, seq from audit_events where org_id = 'acme' and id not like 'demo-%' order by seq limit 1 offset 300",
            &[],
        )
        .await
        .unwrap();
    let (id, seq): (String, i64) = (looked_at.get(0), looked_at.get(1));
    let block_first = (seq - 1) / 256 * 256 + 1;
    let neighbour = admin_sql
        .query_one(
            "select id from audit_events where seq between $1 and $2 and seq <> $3 and id not like 'demo-%' order by seq limit 1",
            &[&block_first, &(block_first + 255), &seq],
        )
        .await
        .unwrap();
    let neighbour = uuid::Uuid::parse_str(neighbour.get::<_, &str>(0)).unwrap();
    let segment = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let at: Vec<usize> =
        bytes.windows(16).enumerate().filter(|(_, w)| *w == neighbour.as_bytes()).map(|(i, _)| i).collect();
    assert_eq!(at.len(), 1, "the neighbour's id is in the segment once, as plain bytes");
    (id, segment, at[0] + 7)
}

/// The seqs of the demo's phished account's events, in time order, as SQL
/// lists them: what its timeline must show.
pub async fn phished_timeline(admin_sql: &tokio_postgres::Client) -> Vec<i64> {
    let sql = "select seq from audit_events where org_id = 'acme' and actor_id = 'acme-u007' order by time, seq";
    admin_sql.query(sql, &[]).await.unwrap().iter().map(|row| row.get(0)).collect()
}

/// A viewer token of acme, asked for with acme's read token `reader`.
pub async fn mint_viewer_token(server: &Server, reader: &reqwest::Client, body: serde_json::Value) -> String {
    let url = format!("{}/v1/orgs/acme/viewer-tokens", server.http_url);
    let minted: serde_json::Value = reader.post(url).json(&body).send().await.unwrap().json().await.unwrap();
    minted["token"].as_str().unwrap().to_string()
}

/// The proof's verdict as the event's page states it.
fn proof_status(html: &str) -> String {
    let start = html.find("id=\"proof-status\"").expect("a proof status") + "id=\"proof-status\"".len();
    let rest = &html[start..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

#[tokio::test]
async fn an_events_proof_is_verified_until_a_byte_of_its_block_changes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/signing.key");
    let key_arg = key.to_str().unwrap();
    crate::harness::run_cli(&["keygen", "--signing-key", key_arg]);
    let data = dir.path().join("data");
    crate::harness::run_cli(&[
        "demo",
        "--no-serve",
        "--events",
        "5000",
        "--seed",
        "3",
        "--signing-key",
        key_arg,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    add_user(&data, "analyst", &["--org", "acme"]);
    let server = Server::start(&data, &["--signing-key", key_arg]);
    let admin_sql = server.pg().await;
    let mut analyst = Browser::new(&server);
    analyst.sign_in(&[("user", "analyst"), ("password", TEST_PASSWORD)]).await;

    let (id, segment, offset) = proof_target(&admin_sql, &data).await;
    let page = format!("/ui/event/acme/{id}");
    let html = analyst.page(&page).await;
    assert_eq!(proof_status(&html), "verified", "{html}");
    assert!(html.contains("signed root") && html.contains("<ol class=\"path\">"), "{html}");

    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let html = analyst.page(&page).await;
    assert_eq!(proof_status(&html), "failed", "{html}");
    assert!(plain(&html).contains("does not lead to the signed root"), "{}", plain(&html));
}

#[tokio::test]
async fn the_embedded_viewer_reads_only_its_tokens_narrowing_and_only_allowed_pages_frame_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    demo_data_dir(&data, 20_000, 3);
    let acme_read = crate::harness::bearer_client(&create_token(&data, &["--org", "acme", "--scope", "read"]));
    let acme_admin = crate::harness::bearer_client(&create_token(&data, &["--org", "acme", "--scope", "admin"]));
    let server = Server::start(&data, &[]);
    let admin_sql = server.pg().await;
    let mint = |body: serde_json::Value| mint_viewer_token(&server, &acme_read, body);
    let viewer = Browser::new(&server);
    let whole = mint(serde_json::json!({ "end_user": "vendor-user-7" })).await;
    let embed = |token: &str, search: &str| format!("/embed?token={token}&{}", q(search));

    let (status, headers, html) = viewer.get(&embed(&whole, "")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let policy = headers.get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(policy.ends_with("frame-ancestors 'none'"), "no origin is allowed yet: {policy}");
    assert!(headers.get(X_FRAME_OPTIONS).is_none());
    assert!(!rows(&html).is_empty() && rows(&html).iter().all(|(_, cells)| cells[1] == "acme"));
    assert!(!html.contains("/ui/event/"), "no link leads where a viewer token cannot go");
    for probe in ["globex", "actor:globex-u001 created:2000-01-01..2100-01-01", "-actor:acme-u007", "\"' or 1=1 --\""] {
        let (status, _, html) = viewer.get(&embed(&whole, probe)).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
        assert!(rows(&html).iter().all(|(_, cells)| cells[1] == "acme"), "{probe}");
    }
    let (status, _, _) = viewer.get(&format!("{}&org=globex&org_id=globex", embed(&whole, ""))).await;
    assert_eq!(status, StatusCode::OK);

    // A token narrowed to one actor shows only that actor, whatever is typed.
    let alice = mint(serde_json::json!({ "actor": "acme-u007" })).await;
    for search in ["", "actor:acme-u001", "-actor:acme-u007", "created:2000-01-01..2100-01-01"] {
        let html = viewer.page(&embed(&alice, search)).await;
        assert!(rows(&html).iter().all(|(_, cells)| cells[2] == "acme-u007"), "{search}");
    }
    let all_time = viewer.page(&embed(&alice, "created:2000-01-01..2100-01-01")).await;
    assert!(!rows(&all_time).is_empty());

    // The allow-list is the organisation's, set with its admin token.
    let set = acme_admin
        .put(format!("{}/v1/orgs/acme/policy", server.http_url))
        .json(&serde_json::json!({ "ugc": "store", "embed_origins": ["http://127.0.0.1:9", "https://admin.vendor.example"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let (_, headers, _) = viewer.get(&embed(&whole, "")).await;
    let policy = headers.get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(policy.ends_with("frame-ancestors http://127.0.0.1:9 https://admin.vendor.example"), "{policy}");
    let refused = acme_admin
        .put(format!("{}/v1/orgs/acme/policy", server.http_url))
        .json(&serde_json::json!({ "ugc": "store", "embed_origins": ["https://a.example; script-src *"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "an origin goes into a header: nothing else may");

    // Changed, forged and expired tokens.
    let forged = format!("{}x", &whole[..whole.len() - 1]);
    for token in [forged.as_str(), "alv_e30.AAAA", ""] {
        let (status, headers, html) = viewer.get(&embed(token, "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}: {html}");
        assert!(headers.get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().ends_with("frame-ancestors 'none'"));
    }
    let short = mint(serde_json::json!({ "ttl_seconds": 1 })).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, headers, html) = viewer.get(&embed(&short, "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(plain(&html).contains("This view expired at"), "{html}");
    assert!(html.contains("id=\"viewer-expired\""));
    assert!(headers.get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().contains("https://admin.vendor.example"));
    assert!(rows(&html).is_empty());

    // The vendor's end user is on record with what they were shown.
    wait_until("the viewer's reads are recorded", || async {
        let recorded = admin_sql
            .query_one(
                "select count(*) from audit_events where org_id = 'acme' and action = 'audit_log.ui_read' \
                 and actor_id = 'vendor-user-7' and actor_type = 'viewer_end_user' \
                 and json_get_str(attributes, 'view') = 'embed'",
                &[],
            )
            .await
            .unwrap();
        recorded.get::<_, i64>(0) >= 6
    })
    .await;
}

/// The application's events of a page (not the log's own records, which
/// grow with every page shown): their seqs.
fn application_rows(html: &str) -> Vec<i64> {
    rows(html).into_iter().filter(|(_, cells)| !cells[3].starts_with("audit_log.")).map(|(seq, _)| seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_of_the_hostile_tenant_suite_finds_nothing_of_another_organisation_in_the_view() {
    use crate::tenancy::{leaked, oracle_pairs, planted, value_probes};

    let dir = tempfile::tempdir().unwrap();
    let mut leaks = Vec::new();
    for sealed in [false, true] {
        let label = if sealed { "sealed" } else { "buffered" };
        let server = planted(dir.path(), sealed).await;
        let reader = crate::harness::bearer_client(&create_token(
            &dir.path().join(label),
            &["--org", "acme", "--scope", "read"],
        ));
        // Several sessions and viewer tokens, each within its request budget.
        let mut sessions = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..8 {
            let mut session = Browser::new(&server);
            session.sign_in(&[("user", "acme-analyst"), ("password", TEST_PASSWORD)]).await;
            sessions.push(session);
            tokens.push(mint_viewer_token(&server, &reader, serde_json::json!({})).await);
        }
        let mut probes = value_probes();
        probes.extend(oracle_pairs().into_iter().flat_map(|(yes, no)| [yes, no]));
        // The sessions probe side by side, each its share in turn.
        let shares = sessions.iter().zip(&tokens).enumerate().map(|(k, (session, token))| {
            let probes: Vec<(usize, &String)> = probes.iter().enumerate().skip(k).step_by(sessions.len()).collect();
            async move {
                let mut found = Vec::new();
                for (i, probe) in probes {
                    let search = q(&format!("{probe} created:2000-01-01..2100-01-01"));
                    let mut paths =
                        vec![format!("/ui/events?{search}&rows=500"), format!("/embed?token={token}&{search}")];
                    // The views about one subject, for every fourth probe:
                    // they run the same condition, narrowed.
                    if i % 4 == 0 {
                        paths.push(format!("/ui/timeline?actor=globex-u1&{search}"));
                        paths.push(format!("/ui/content?id=globex-c1&{search}"));
                    }
                    for path in paths {
                        let (status, _, html) = session.get(&path).await;
                        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{path}");
                        found.extend(leaked(&format!("{label}: {path}"), &html));
                        let globex_row = rows(&html).iter().any(|(_, cells)| cells.iter().any(|c| c == "globex"));
                        if html.contains("/ui/event/globex/") || globex_row {
                            found.push(format!("{label}: {path} lists a globex row"));
                        }
                    }
                }
                found
            }
        });
        leaks.extend(futures::future::join_all(shares).await.into_iter().flatten());
        // An oracle's two questions get the same answer.
        for (yes, no) in oracle_pairs() {
            let page =
                |probe: &str| format!("/ui/events?{}&rows=500", q(&format!("{probe} created:2000-01-01..2100-01-01")));
            let (_, _, asked_yes) = sessions[0].get(&page(&yes)).await;
            let (_, _, asked_no) = sessions[1].get(&page(&no)).await;
            if application_rows(&asked_yes) != application_rows(&asked_no) {
                leaks.push(format!("{label}: the view answers {yes:?} and {no:?} differently"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leaks:\n\n{}", leaks.len(), leaks.join("\n\n"));
}
