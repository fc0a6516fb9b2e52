//! Clients who want the server down, against the real binary: after each
//! attempt the server still answers, and the events acknowledged before it
//! are all there.

use crate::harness::{APP, Server, add_user, event, post, wait_until};

/// A server with the org user `acme-analyst` (and any extra flags) that has
/// acknowledged twenty control events of `acme`'s user `u1`.
async fn attacked_server(data: &std::path::Path, extra: &[&str]) -> Server {
    add_user(data, "acme-analyst", &["--org", "acme"]);
    let server = Server::start(data, extra);
    let control: Vec<String> = (0..20).map(|i| event(&format!("c{i}"), "acme", "u1", "a.b", i).to_string()).collect();
    assert_eq!(post(&server.http(), &server.events_url(), control.join("\n")).await.0, 200);
    server
}

/// `sql` from `client` was refused with `code` and a message saying `says`.
fn assert_refused(error: &tokio_postgres::Error, sql: &str, code: &str, says: &str) {
    assert_eq!(error.code().map(|c| c.code()), Some(code), "{sql}: {error:?}");
    let message = error.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains(says), "{sql}: {message}");
}

/// The server still answers `client`, and the control events are all there.
async fn assert_control_intact(client: &tokio_postgres::Client) {
    let alive: i64 =
        client.query_one("select count(*) from audit_events where actor_id = 'u1'", &[]).await.unwrap().get(0);
    assert_eq!(alive, 20, "the server answers and the acknowledged events are there");
}

/// Statements a logged-in user can send in a few kilobytes whose planning
/// once recursed past a worker's stack and aborted the process.
fn deep_statements() -> Vec<String> {
    let chain = vec!["1"; 2_000].join("+");
    let ands = (0..2_000).map(|i| format!("seq <> {i}")).collect::<Vec<_>>().join(" and ");
    let ors = (0..2_000).map(|i| format!("actor_id = 'u{i}'")).collect::<Vec<_>>().join(" or ");
    vec![
        format!("select {chain}"),
        format!("select count(*) from audit_events where {ands}"),
        format!("select count(*) from audit_events where {ors}"),
        format!("select count(*) from audit_events where {}", "(".repeat(3_000) + "true" + &")".repeat(3_000)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_too_deep_to_plan_are_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = attacked_server(&data, &[]).await;
    let acme = server.pg_as("acme-analyst").await.unwrap();

    for sql in deep_statements() {
        let simple = acme.simple_query(&sql).await.expect_err("refused");
        assert_refused(&simple, &sql, "54001", "too complex");
        let extended = acme.prepare(&sql).await.expect_err("refused");
        assert_eq!(extended.code().map(|c| c.code()), Some("54001"), "{extended}");
        assert_control_intact(&acme).await;
    }
    // A long list of values is not too complex as a list.
    let listed = (0..20_000).map(|i| format!("'u{i}'")).collect::<Vec<_>>().join(", ");
    let sql = format!("select count(*) from audit_events where {APP} and actor_id in ({listed})");
    assert_eq!(acme.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0), 20);
    // Ingest goes on, and the refusals are on record.
    assert_eq!(
        post(&server.http(), &server.events_url(), event("after", "acme", "u2", "a.b", 0).to_string()).await.0,
        200
    );
    let refusals = "select count(*) from audit_events where org_id = 'acme' and category = 'audit_access' \
                    and attributes like '%\"sqlstate\":\"54001\"%'";
    assert_eq!(server.sql_until(refusals, "8\n"), "8\n");
}

/// What one statement of a few dozen bytes once made the server allocate
/// or compute: gigabytes, or seconds of a core while planning.
const ALLOCATING_STATEMENTS: &[&str] = &[
    "select length(repeat('x', 1500000000))",
    "select length(lpad('x', 1500000000))",
    "select length(rpad('x', 1500000000, 'ab'))",
    "select cardinality(range(1, 120000000))",
    "select cardinality(generate_series(1, 120000000))",
    "select cardinality(array_repeat(1, 200000000))",
    "select length(replace(repeat('a', 10000000), 'a', repeat('b', 100)))",
    "select levenshtein(repeat('a', 50000), repeat('b', 50000))",
    "select length(repeat('x', 10000000) || repeat('x', 10000000) || repeat('x', 10000000))",
    "select max(length(repeat(actor_id, 100000000))) from audit_events",
];

/// The most memory the server may reach while refusing them: a debug
/// build serving a few events holds about 100 MB, and the aggregates below
/// reach the default 256 MiB a query may use, which their accumulators
/// under-report by about half (650 MiB measured).
const ALLOCATING_RSS_CEILING_BYTES: u64 = 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_that_allocate_by_their_arguments_are_refused_past_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = attacked_server(&data, &[]).await;
    let acme = server.pg_as("acme-analyst").await.unwrap();
    for sql in ALLOCATING_STATEMENTS {
        let error = acme.simple_query(sql).await.expect_err(sql);
        assert_refused(&error, sql, "54000", "value too large");
        assert_control_intact(&acme).await;
    }
    // Aggregates that build one big value count it against the statement's
    // memory.
    for sql in [
        "select length(string_agg(repeat('x', 2000), ',')) from generate_series(1, 400000)",
        "select cardinality(array_agg(repeat('x', 2000))) from generate_series(1, 400000)",
    ] {
        let error = acme.simple_query(sql).await.expect_err(sql);
        assert_eq!(error.code().map(|c| c.code()), Some("53200"), "{sql}: {error:?}");
    }
    // The same functions within the limit answer.
    let row = acme
        .query_one("select length(repeat('ab', 1000000))::bigint, cardinality(range(1, 1001))::bigint", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2_000_000, 1_000));
    let peak = server.peak_rss_bytes();
    eprintln!("allocating statements refused; server peak RSS {} MiB", peak / (1024 * 1024));
    assert!(peak < ALLOCATING_RSS_CEILING_BYTES, "the server reached {peak} bytes");
}

/// Statements that keep a core busy within every limit: a long run of edit
/// distances, and a constant one folded while planning.
const BUSY_STATEMENTS: &[&str] = &[
    "select sum(levenshtein(repeat('a', 40) || v::text, repeat('b', 40))) from generate_series(1, 1000000000) as t(v)",
    "select levenshtein(repeat('a', 7000), repeat('b', 7000))",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_statements_leave_health_checks_and_ingest_answering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = attacked_server(&data, &[]).await;
    // Users are read at each login: one added while the server runs logs in.
    add_user(&data, "busy", &["--org", "acme", "--statement-timeout-ms", "1000"]);
    let busy_for = std::time::Duration::from_secs(6);
    let mut clients = Vec::new();
    for sql in BUSY_STATEMENTS.iter().chain(BUSY_STATEMENTS) {
        let client = server.pg_as("busy").await.unwrap();
        clients.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut timed_out = 0;
            while started.elapsed() < busy_for {
                let begun = std::time::Instant::now();
                if let Err(e) = client.simple_query(sql).await {
                    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{sql}: {e:?}");
                    // Ended by the timeout, not by running a billion rows
                    // (how long after it depends on the machine's load).
                    assert!(begun.elapsed() < std::time::Duration::from_secs(20), "{sql} ran {:?}", begun.elapsed());
                    timed_out += 1;
                }
            }
            timed_out
        }));
    }
    let (http, health) = (reqwest::Client::new(), format!("{}/healthz", server.http_url));
    let mut latencies = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < busy_for {
        let asked = std::time::Instant::now();
        assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
        latencies.push(asked.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut timed_out = 0;
    for client in clients {
        timed_out += client.await.unwrap();
    }
    assert!(timed_out >= 2, "the run of edit distances ends at the 1 s timeout, {timed_out} times");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("/healthz under busy statements: p99 {p99:?}, max {:?}, {} checks", latencies.last(), latencies.len());
    assert!(p99 < std::time::Duration::from_millis(200), "/healthz p99 {p99:?} over {} checks", latencies.len());
    let after = event("after", "acme", "u2", "a.b", 0).to_string();
    assert_eq!(post(&server.http(), &server.events_url(), after).await.0, 200);
    let sql = format!("select count(*) from audit_events where {APP}");
    assert_eq!(server.sql(&sql).unwrap(), "21\n");
}

/// Joins of three thousand rows that would make billions: hash, nested
/// loop and cross.
const RUNAWAY_JOINS: &[&str] = &[
    "select count(*) from audit_events b join (select a.org_id from audit_events a \
     join audit_events c on a.org_id = c.org_id) ac on b.org_id = ac.org_id",
    "select count(*) from audit_events a join audit_events b on a.seq < b.seq join audit_events c on b.seq < c.seq",
    "select count(*) from audit_events a, audit_events b, audit_events c",
];

#[tokio::test]
async fn a_runaway_join_ends_at_the_statement_timeout_and_its_cpu_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = attacked_server(&data, &[]).await;
    let events: Vec<String> = (0..3_000)
        .map(|i| event(&format!("j{i}"), "acme", &format!("joiner{}", i % 50), "a.b", i).to_string())
        .collect();
    assert_eq!(post(&server.http(), &server.events_url(), events.join("\n")).await.0, 200);
    let client = server.pg_as("acme-analyst").await.unwrap();
    client.simple_query("set statement_timeout = '500ms'").await.unwrap();
    for sql in RUNAWAY_JOINS {
        let begun = std::time::Instant::now();
        let error = client.simple_query(sql).await.unwrap_err();
        assert_refused(&error, sql, "57014", "statement timeout");
        // The error comes at the timeout, not when the join is done (hours
        // later); the margin is for a loaded machine.
        assert!(begun.elapsed() < std::time::Duration::from_secs(10), "{sql}: error after {:?}", begun.elapsed());
        // And nothing of the statement goes on running.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = server.cpu_ticks();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let worked = server.cpu_ticks() - before;
        assert!(worked < 30, "{sql}: the server went on working after the timeout, {worked} ticks in 1 s");
    }
    assert_control_intact(&client).await;
}

/// A protocol 3.0 start-up packet for `user`.
fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "auditlake", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Whether the server closes `socket` within `within` (reads until the end).
fn closed_within(socket: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    socket.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match socket.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_log_in_cannot_swell_or_fill_the_server() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = attacked_server(&data, &["--max-pg-connections", "6"]).await;
    let address = format!("127.0.0.1:{}", server.pg_port);

    // A query message announcing 1 GiB before the password: the server
    // stops reading after 64 KiB and hangs up.
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    socket.write_all(&startup_packet("nobody")).unwrap();
    let mut header = vec![b'Q'];
    header.extend_from_slice(&0x3fff_fff0i32.to_be_bytes());
    socket.write_all(&header).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let sent = (0..32).take_while(|_| socket.write_all(&chunk).is_ok()).count();
    assert!(closed_within(&mut socket, std::time::Duration::from_secs(5)), "still open after {sent} chunks");
    // Forty more, at once: each costs its 64 KiB at most.
    let mut many: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(&address).unwrap();
            socket.write_all(&startup_packet("nobody")).unwrap();
            socket.write_all(&header).unwrap();
            let _ = socket.write_all(&chunk);
            socket
        })
        .collect();
    for socket in &mut many {
        assert!(closed_within(socket, std::time::Duration::from_secs(15)), "an oversized message was read on");
    }
    assert_rss_below(&server, PRE_AUTH_RSS_CEILING_BYTES, "oversized messages before logging in");

    // Six sockets that never send a byte take every login slot, for ten
    // seconds at most. A loaded machine can let a login attempt miss those
    // ten seconds: then six fresh sockets try again, three times at most.
    let no_slot = || async {
        let refused = server.pg_as("acme-analyst").await.err();
        refused.and_then(|e| e.code().cloned()).is_some_and(|code| code.code() == "53300")
    };
    let (started, mut idle) = 'window: {
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let idle: Vec<std::net::TcpStream> =
                (0..6).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
            while started.elapsed() < std::time::Duration::from_secs(8) {
                if no_slot().await {
                    break 'window (started, idle);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            drop(idle);
            wait_until("a login slot free again", || async { !no_slot().await }).await;
        }
        panic!("never 53300 while the idle sockets hold every login slot");
    };
    for socket in &mut idle {
        assert!(closed_within(socket, std::time::Duration::from_secs(15)), "an idle socket stayed open");
    }
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(13), "idle sockets held their slots {waited:?}");

    // Of six sessions, the last three are the admins'.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(server.pg_as("acme-analyst").await.unwrap());
    }
    let reserved = server.pg_as("acme-analyst").await.expect_err("the rest is reserved");
    assert_eq!(reserved.code().map(|c| c.code()), Some("53300"), "{reserved:?}");
    let message = reserved.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("reserved for admins"), "{message}");
    let admin = server.pg().await;
    let count: i64 =
        admin.query_one(&format!("select count(*) from audit_events where {APP}"), &[]).await.unwrap().get(0);
    assert_eq!(count, 20, "the acknowledged events are there");
    drop(sessions);
}

/// What the server may hold at most, in all, under an attack by clients who
/// never log in (the debug build the suite runs idles near 40 MiB).
const PRE_AUTH_RSS_CEILING_BYTES: u64 = 256 * 1024 * 1024;

/// The server's peak RSS so far stayed under `ceiling` during `attack`.
fn assert_rss_below(server: &Server, ceiling: u64, attack: &str) {
    let peak = server.peak_rss_bytes();
    eprintln!("{attack}: server peak RSS {} MiB", peak / (1024 * 1024));
    assert!(peak < ceiling, "{attack}: peak RSS {peak} bytes, over {ceiling}");
}

/// The salt the server gives `user` in a SCRAM exchange.
fn scram_salt(pg_port: u16, user: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    socket.write_all(&startup_packet(user)).unwrap();
    let message = |socket: &mut std::net::TcpStream| {
        let mut header = [0u8; 5];
        socket.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 4];
        socket.read_exact(&mut body).unwrap();
        (header[0], body)
    };
    let (kind, _) = message(&mut socket);
    assert_eq!(kind, b'R', "AuthenticationSASL");
    let client_first = b"n,,n=,r=0123456789abcdef";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    body.extend_from_slice(client_first);
    let mut packet = vec![b'p'];
    packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    packet.extend(body);
    socket.write_all(&packet).unwrap();
    let (kind, body) = message(&mut socket);
    assert_eq!(kind, b'R', "AuthenticationSASLContinue");
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    server_first.split(',').find_map(|field| field.strip_prefix("s=")).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_get_the_same_salt_after_a_restart_as_real_users_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "alice", &["--org", "acme"]);
    let server = Server::start(&data, &[]);
    let before = (scram_salt(server.pg_port, "alice"), scram_salt(server.pg_port, "nobody"));
    assert_eq!(scram_salt(server.pg_port, "nobody"), before.1, "the same within a run");
    server.kill();
    let server = Server::start(&data, &[]);
    let after = (scram_salt(server.pg_port, "alice"), scram_salt(server.pg_port, "nobody"));
    assert_eq!(after, before, "a salt that changes at a restart tells that the user does not exist");
    assert_ne!(after.0, after.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_slowed_after_a_few_failures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    add_user(&data, "alice", &["--org", "acme"]);
    let server = Server::start(&data, &[]);
    let guess = format!("postgres://alice:guess@127.0.0.1:{}/auditlake", server.pg_port);
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for _ in 0..60 {
        let error = tokio_postgres::connect(&guess, tokio_postgres::NoTls).await.err().expect("refused");
        codes.push(error.code().map(|c| c.code().to_string()).unwrap_or_else(|| error.to_string()));
    }
    let elapsed = started.elapsed();
    let checked = codes.iter().filter(|c| *c == "28P01").count();
    let waited = codes.iter().filter(|c| *c == "28000").count();
    assert_eq!(checked + waited, 60, "{codes:?}");
    // Five free guesses, then one a second at most while this ran.
    assert!(checked <= 5 + elapsed.as_secs() as usize + 1, "{checked} passwords checked in {elapsed:?}");
    // During the wait even the right password is not heard.
    let refused = server.pg_as("alice").await.expect_err("waits");
    assert_eq!(refused.code().map(|c| c.code()), Some("28000"), "{refused:?}");
    // After it, the owner logs in, and that clears the count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let alice = loop {
        match server.pg_as("alice").await {
            Ok(client) => break client,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            Err(e) => panic!("alice never got in: {e:?}"),
        }
    };
    alice.simple_query("select 1").await.unwrap();
    // Only the checked guesses are on record.
    let failed = "select count(*) from audit_events where action = 'audit_log.login_failed'";
    let recorded: usize = server.sql(failed).unwrap().trim().parse().unwrap();
    assert!(recorded <= checked + 1, "{recorded} failures recorded for {checked} checked");
    eprintln!("60 guesses in {elapsed:?}: {checked} passwords checked, {waited} told to wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sasl_messages_are_refused_without_a_panic() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let bodies: [&[u8]; 4] = [
        b"SCRAM-SHA-256\0",
        b"SCRAM-SHA-256\0\0\0\x03\xe8abc",
        b"SCRAM-SHA-256\0\xff\xff\xff\xfbabc",
        b"SCRAM-SHA-256",
    ];
    for body in bodies {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", server.pg_port)).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        socket.write_all(&startup_packet("nobody")).unwrap();
        let mut header = [0u8; 5];
        socket.read_exact(&mut header).unwrap();
        assert_eq!(header[0], b'R');
        let mut rest = vec![0u8; i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize - 4];
        socket.read_exact(&mut rest).unwrap();
        let mut packet = vec![b'p'];
        packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        packet.extend_from_slice(body);
        socket.write_all(&packet).unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
        assert_eq!(answer.first(), Some(&b'E'), "an error response, not a dropped connection: {answer:?}");
        assert!(String::from_utf8_lossy(&answer).contains("08P01"), "{answer:?}");
    }
    server.pg().await.simple_query("select 1").await.unwrap();
    let (_, log) = server.terminate();
    assert!(!log.contains("panicked"), "{log}");
}

/// Sockets that send half a request head and stop.
fn slow_http_clients(server: &Server, count: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    let address = server.http_url.trim_start_matches("http://");
    (0..count)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(address).unwrap();
            socket.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            socket
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_are_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let started = std::time::Instant::now();
    for socket in &mut slow_http_clients(&server, 40) {
        assert!(closed_within(socket, std::time::Duration::from_secs(20)), "a slow client was kept");
    }
    assert_rss_below(&server, PRE_AUTH_RSS_CEILING_BYTES, "slow request heads");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "held for {:?}", started.elapsed());
    // A batch of many bad events is answered with the first hundred
    // problems and their number.
    let bad: Vec<String> = (0..500).map(|i| serde_json::json!({ "id": format!("b{i}") }).to_string()).collect();
    let (status, answer) = post(&server.http(), &server.events_url(), bad.join("\n")).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errors"].as_array().unwrap().len(), 100, "{answer}");
    assert!(answer["errors_total"].as_u64().unwrap() >= 500, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_http_listener_answers_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--max-http-connections", "4"]);
    let mut slow = slow_http_clients(&server, 3);
    slow.push(std::net::TcpStream::connect(server.http_url.trim_start_matches("http://")).unwrap());
    let healthz = format!("{}/healthz", server.http_url);
    let busy = || async { reqwest::Client::new().get(&healthz).send().await.unwrap().status() == 503 };
    wait_until("503 while the slow clients hold every connection", busy).await;
    let busy = reqwest::Client::new().get(&healthz).send().await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), Some("1".into()));
    for socket in &mut slow {
        assert!(closed_within(socket, std::time::Duration::from_secs(20)), "a slow client was kept");
    }
    let good = event("after", "acme", "u1", "a.b", 0).to_string();
    assert_eq!(post(&server.http(), &server.events_url(), good).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_in_order_as_ctrl_c_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let batch: Vec<String> = (0..10).map(|i| event(&format!("t{i}"), "acme", "u1", "a.b", i).to_string()).collect();
    assert_eq!(post(&server.http(), &server.events_url(), batch.join("\n")).await.0, 200);
    server.pg().await.simple_query("select 'before the stop'").await.unwrap();
    let (status, log) = server.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("shutting down") && log.contains("SIGTERM"), "{log}");
    // The record of the last statement was flushed before the exit.
    let server = Server::start(&data, &[]);
    let sql = format!("select count(*) from audit_events where {APP}");
    assert_eq!(server.sql(&sql).unwrap(), "10\n");
    let flushed = "select count(*) from audit_events where attributes like '%before the stop%' \
                   and position('count' in attributes) = 0";
    assert_eq!(server.sql(flushed).unwrap(), "1\n");
}

/// What the HTTP listener answers to `head` (request line and headers)
/// sent with no body after it, within a few seconds.
fn answer_without_body(server: &Server, head: &str) -> String {
    use std::io::{Read, Write};
    let address = server.http_url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    socket.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let read = socket.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_token_is_answered_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = crate::harness::create_token(&data, &["--org", "acme"]);
    let admin = crate::harness::create_token(&data, &["--org", "acme", "--scope", "admin"]);
    let server = Server::start(&data, &[]);
    // Announces 100 MB and sends none of it: no token, so no reason to wait.
    let head = |path: &str, method: &str, authorization: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100000000\r\n{authorization}\r\n"
        )
    };
    for (method, path) in [("POST", "/v1/events"), ("PUT", "/v1/orgs/acme/policy")] {
        let answer = answer_without_body(&server, &head(path, method, ""));
        assert!(answer.starts_with("HTTP/1.1 401"), "{method} {path}: {answer:?}");
    }
    // Forty clients at once announcing 100 MB and sending 1 MB each of it
    // (once 750 MB of RSS for 16 MB each): each is answered and let go.
    let address = server.http_url.trim_start_matches("http://").to_string();
    let mut many: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            use std::io::Write;
            let mut socket = std::net::TcpStream::connect(&address).unwrap();
            socket.write_all(head("/v1/events", "POST", "").as_bytes()).unwrap();
            let _ = socket.write_all(&vec![b' '; 1024 * 1024]);
            socket
        })
        .collect();
    for socket in &mut many {
        assert!(closed_within(socket, std::time::Duration::from_secs(15)), "a body without a token was read on");
    }
    assert_rss_below(&server, PRE_AUTH_RSS_CEILING_BYTES, "bodies without a token");
    // With a token, a body announced past the limit is refused unread.
    let answer =
        answer_without_body(&server, &head("/v1/events", "POST", &format!("Authorization: Bearer {token}\r\n")));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let answer = answer_without_body(
        &server,
        &head("/v1/orgs/acme/policy", "PUT", &format!("Authorization: Bearer {admin}\r\n")),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // And the API still takes events.
    let body = event("after", "acme", "u1", "a.b", 0).to_string();
    assert_eq!(post(&crate::harness::bearer_client(&token), &server.events_url(), body).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_threads_give_way_to_ingest_for_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    server.pg().await.simple_query("select count(*) from audit_events").await.unwrap();
    let query_threads = server.threads_nice("auditlake-query");
    assert!(!query_threads.is_empty() && query_threads.iter().all(|n| *n == 10), "{query_threads:?}");
    assert_eq!(server.threads_nice("auditlake-wal"), [0], "the WAL writer keeps the process's priority");
    drop(server);
    let (ok, said) = crate::harness::run_cli_status(&["serve", "--query-nice", "20", "--data-dir", "/nonexistent"]);
    assert!(!ok && said.contains("--query-nice") && said.contains("0..=19"), "{said}");
}

#[test]
fn settings_past_their_sane_range_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flag, value, says) in [
        ("--seal-after-ms", "0", "10..=86400000"),
        ("--seal-max-buffered-rows", "0", "1..=100000000"),
        ("--seal-max-buffered-bytes", "12", "1024..="),
        ("--max-buffered-bytes", "0", "1..="),
        ("--max-body-bytes", "10000000000", "1024..=1073741824"),
        ("--compaction-target-rows", "0", "1..="),
        ("--compaction-min-segments", "1", "2..=10000"),
        ("--idempotency-window-hours", "87600", "0..=8760"),
        ("--retention-interval-ms", "0", "100..=604800000"),
        ("--max-pg-connections", "0", "1..=65536"),
        ("--query-memory-bytes", "0", "1024..="),
        ("--total-query-memory-bytes", "5000000000000", "1024..=1099511627776"),
        ("--statement-timeout-ms", "360000000", "1..=86400000"),
        ("--max-result-rows", "0", "1..="),
        ("--segment-cache-bytes", "2000000000000", "0..=1099511627776"),
    ] {
        let error = crate::access::serve_refused(&data, &["--insecure-trust-loopback", flag, value]);
        assert!(error.contains(flag) && error.contains(says), "{flag} {value}: {error}");
    }
    let error = crate::access::serve_refused(
        &data,
        &["--insecure-trust-loopback", "--query-memory-bytes", "4096", "--total-query-memory-bytes", "2048"],
    );
    assert!(error.contains("is less than --query-memory-bytes"), "{error}");
    let (ok, said) = crate::harness::run_cli_status(&[
        "user",
        "add",
        "x",
        "--admin",
        "--statement-timeout-ms",
        "100000000",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("--statement-timeout-ms") && said.contains("1..=86400000"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_read_share_one_memory_budget() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = crate::harness::create_token(&data, &["--org", "acme"]);
    let one_mib = "1048576";
    let server = Server::start(&data, &["--max-body-bytes", one_mib, "--max-inflight-body-bytes", one_mib]);
    // A token holder announces most of the budget and sends half of it.
    let mut slow = std::net::TcpStream::connect(server.http_url.trim_start_matches("http://")).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: 1000000\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&vec![b' '; 500_000]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Another body that does not fit what is left is refused unread.
    let client = crate::harness::bearer_client(&token);
    let padded = format!("{}{}", event("big", "acme", "u1", "a.b", 0), " ".repeat(200_000));
    let busy = client.post(server.events_url()).body(padded.clone()).send().await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), Some("1".into()));
    // A small one still fits. (On a new connection: the refused one's body
    // was left unread, so the server closes that connection, and a pooled
    // client reusing it saw the close as a failed request.)
    let client = crate::harness::bearer_client(&token);
    let small = event("small", "acme", "u1", "a.b", 0).to_string();
    assert_eq!(post(&client, &server.events_url(), small).await.0, 200);
    // Once the slow client is gone, its share is free again.
    drop(slow);
    let freed = || async { post(&client, &server.events_url(), padded.clone()).await.0 == 200 };
    wait_until("the padded body accepted once the slow client left", freed).await;
    let error = crate::access::serve_refused(
        &data,
        &["--insecure-trust-loopback", "--max-body-bytes", "4096", "--max-inflight-body-bytes", "2048"],
    );
    assert!(error.contains("is less than --max-body-bytes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_millions_of_bad_events_costs_a_count_not_gigabytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    // Three bytes per event, four problems each (time, org, actor, action
    // missing): 11 million problems.
    let lines = 8 * 1024 * 1024 / 3;
    let (status, answer) = post(&server.http(), &server.events_url(), "{}\n".repeat(lines)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errors"].as_array().unwrap().len(), 100);
    assert_eq!(answer["errors_total"].as_u64(), Some(4 * lines as u64), "{}", answer["error"]);
    assert_rss_below(&server, 512 * 1024 * 1024, "a body of bad events");
    let good = event("after", "acme", "u1", "a.b", 0).to_string();
    assert_eq!(post(&server.http(), &server.events_url(), good).await.0, 200);
}
