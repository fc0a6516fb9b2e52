//! Runs the real `auditlake` binary on free loopback ports for a test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// The events applications sent, as opposed to the server's own records of
/// who used the audit log, which every statement adds to.
pub const APP: &str = "(category is distinct from 'audit_access')";

/// How long a server may take to open its data directory and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// CPU time process `pid` has used (user and system, clock ticks).
pub fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub struct Server {
    child: Child,
    pub pg_port: u16,
    pub http_url: String,
    log_path: PathBuf,
    /// Where this run's lines start in a log shared with earlier runs.
    log_start: usize,
    /// An any-organisation ingest token made for this run.
    ingest_token: String,
}

impl Server {
    /// Starts `auditlake serve` on `data_dir` with extra flags, and waits for
    /// its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::try_start_with_env(data_dir, extra, env).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Like [`Server::start_with_env`], but returns what the server said when
    /// it fails. Unless the flags trust loopback, the admin [`TEST_USER`] is
    /// added first, as an operator would.
    pub fn try_start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        if !extra.contains(&"--insecure-trust-loopback") {
            add_user(data_dir, TEST_USER, &["--admin"]);
        }
        let ingest_token = create_token(data_dir, &["--any-org"]);
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let log_start = log.metadata().unwrap().len() as usize;
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditlake"))
            .args(["serve", "--pg-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn auditlake");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("auditlake ready: ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(ready) => {
                let field =
                    |name: &str| ready.split_whitespace().find_map(|kv| kv.strip_prefix(name)).unwrap().to_string();
                let pg: std::net::SocketAddr = field("pg=").parse().unwrap();
                Ok(Server {
                    child,
                    pg_port: pg.port(),
                    http_url: format!("http://{}", field("http=")),
                    log_path,
                    log_start,
                    ingest_token,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(format!("exit {status:?}; log:\n{log}"))
            }
        }
    }

    /// Waits until this run's log holds `needle` `times` times: the only way
    /// to know the server handled something that has no answer, such as a
    /// cancel request.
    pub fn wait_for_log(&self, needle: &str, times: usize) {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read(&self.log_path).unwrap_or_default();
            let run = String::from_utf8_lossy(log.get(self.log_start..).unwrap_or_default());
            if run.matches(needle).count() >= times {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the log never said {needle:?} {times} times:\n{run}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as a service manager stops a service; returns how the
    /// process exited and what this run logged.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        (status, String::from_utf8_lossy(log.get(self.log_start..).unwrap_or_default()).into_owned())
    }

    /// The most memory the server process has held since it started
    /// (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB");
        kib.trim().parse::<u64>().unwrap() * 1024
    }

    /// CPU time the server has used (user and system, clock ticks).
    pub fn cpu_ticks(&self) -> u64 {
        process_cpu_ticks(self.child.id())
    }

    /// The nice value of each of the server's threads named `name`.
    pub fn threads_nice(&self, name: &str) -> Vec<i64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        let mut nice = Vec::new();
        for task in tasks.map(|t| t.unwrap().path()) {
            if std::fs::read_to_string(task.join("comm")).unwrap_or_default().trim() == name {
                let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                // Fields after the parenthesised name; nice is the 19th field.
                let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
                nice.push(fields[16].parse().unwrap());
            }
        }
        nice
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// An HTTP client that sends this run's ingest token with every request.
    pub fn http(&self) -> reqwest::Client {
        bearer_client(&self.ingest_token)
    }

    pub fn events_url(&self) -> String {
        format!("{}/v1/events", self.http_url)
    }

    /// A `postgres://` URL logging in as `user` with [`TEST_PASSWORD`].
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}:{TEST_PASSWORD}@127.0.0.1:{}/auditlake", self.pg_port)
    }

    /// A `postgres://` URL logging in as the admin [`TEST_USER`].
    pub fn url(&self) -> String {
        self.url_as(TEST_USER)
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        self.pg_as(TEST_USER).await.expect("connect over the Postgres wire")
    }

    /// A tokio-postgres connection as `user` with [`TEST_PASSWORD`].
    pub async fn pg_as(&self, user: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url_as(user), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Runs `sql` as [`Server::sql`] until it prints `expected` (for what the
    /// server writes in the background, such as its records of access), and
    /// returns what it printed last.
    pub fn sql_until(&self, sql: &str, expected: &str) -> String {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let out = self.sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            if out == expected || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sql` with the simple query protocol, as psql sends it, and prints
    /// the rows as `psql -A -t` does (`|` between columns, an empty field for
    /// NULL, every statement's rows in turn); an error is `ERROR:  message`.
    /// It needs no program besides the server, so the first test tier runs
    /// anywhere the Rust toolchain does (the second tier drives the real psql).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.sql_as(TEST_USER, sql)
    }

    /// [`Server::sql`] logged in as `user` with [`TEST_PASSWORD`].
    pub fn sql_as(&self, user: &str, sql: &str) -> Result<String, String> {
        // A thread of its own, so that sync and async tests alike can wait
        // for it, as they wait for a psql process.
        let url = format!("{}?application_name={SQL_APPLICATION_NAME}", self.url_as(user));
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(simple_query_as_psql_prints(&url, &sql))
        })
        .join()
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds, for [`START_TIMEOUT`] at most: what a test
/// awaits instead of sleeping for a guessed time. Panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `application_name` [`Server::sql`] connects with, which the server's
/// records of access name.
pub const SQL_APPLICATION_NAME: &str = "auditlake-tests";

async fn simple_query_as_psql_prints(url: &str, sql: &str) -> Result<String, String> {
    let as_text = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => format!("ERROR:  {}", db.message()),
        None => e.to_string(),
    };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(as_text)?;
    tokio::spawn(connection);
    let mut printed = String::new();
    for message in client.simple_query(sql).await.map_err(as_text)? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let fields: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("")).collect();
            printed += &fields.join("|");
            printed.push('\n');
        }
    }
    Ok(printed)
}

/// The admin every test server has (see [`Server::try_start_with_env`]).
pub const TEST_USER: &str = "tester";
/// The password of every user tests add.
pub const TEST_PASSWORD: &str = "test-password-0";

/// `auditlake user add NAME ROLE...` on `data_dir`, password [`TEST_PASSWORD`].
pub fn add_user(data_dir: &Path, name: &str, role: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["user", "add", name, "--data-dir"])
        .arg(data_dir)
        .args(role)
        .env("AUDITLAKE_PASSWORD", TEST_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "user add {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `auditlake ARGS` to success; its stdout.
pub fn run_cli(args: &[&str]) -> String {
    run_cli_with_env(args, &[])
}

/// [`run_cli`] with extra environment variables.
pub fn run_cli_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake")).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "auditlake {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `auditlake ARGS`: whether it succeeded, and its stderr.
pub fn run_cli_status(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `auditlake token create ARGS` on `data_dir`: the token's text.
pub fn create_token(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "token create {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An HTTP client that sends `Authorization: Bearer TOKEN`.
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// A program from the Python venv `scripts/setup.sh` makes (override its
/// location with `AUDITLAKE_TEST_VENV`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("AUDITLAKE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/auditlake-venv"));
    let program = venv.join("bin").join(name);
    assert!(program.exists(), "{} is missing: run `bash scripts/setup.sh` (scripts/test.sh does)", program.display());
    program
}

/// A valid event for `org`/`actor` with a given id, `minutes` after a fixed time.
pub fn event(id: &str, org: &str, actor: &str, action: &str, minutes: i64) -> Value {
    let time =
        chrono::DateTime::parse_from_rfc3339("2026-11-20T08:00:00Z").unwrap() + chrono::Duration::minutes(minutes);
    json!({
        "id": id,
        "time": time.to_rfc3339(),
        "org_id": org,
        "actor_id": actor,
        "action": action,
        "source_ip": "10.0.0.1",
    })
}

/// POSTs a body, returning status and parsed JSON answer.
pub async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let response = http.post(url).body(body).send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A data directory at `data` filled by `auditlake demo --no-serve`.
pub fn demo_data_dir(data: &Path, events: usize, seed: u64) {
    let demo = Command::new(env!("CARGO_BIN_EXE_auditlake"))
        .args(["demo", "--no-serve", "--events", &events.to_string(), "--seed", &seed.to_string(), "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
}
