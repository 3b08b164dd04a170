//! Shared harness for the end-to-end tests: runs the real `holdfast` binary as a server on a
//! free loopback port with a temporary data directory, talks to it over HTTP, and runs the
//! binary again as a CLI client with an isolated configuration directory.
//!
//! Every wait is bounded; every process started here is stopped by its own pid (SIGTERM through
//! `kill`, or SIGKILL) and is always killed when its handle is dropped.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a different part of the harness

pub mod cluster;
pub mod etcd;
pub mod proxy;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;

/// The admin key most tests start the server with (`HOLDFAST_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// How long a server may take to answer `/healthz`, or to exit after a signal.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one CLI invocation may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a free port is tried again when another process took it first.
const PORT_ATTEMPTS: usize = 5;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_holdfast")
}

/// A loopback port nobody listens on right now (the OS picks it; it may be taken again before
/// the server binds it, which [`Server::start`] handles by retrying).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Microseconds since the Unix epoch, as the journal records time.
pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(d.as_micros()).expect("fits i64")
}

/// A base command for the binary with an empty environment except for what is given, so
/// nothing of the user's environment (HOLDFAST_*, ~/.config) leaks in.
fn base_command(home: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

/// Waits for a child to exit, at most `timeout`; kills it (and fails) if it does not.
pub fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}; killed it");
        }
        sleep(Duration::from_millis(20));
    }
}

/// Sends a signal (`TERM`, `INT`, `KILL`) to one process by pid with `kill(1)`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `HOLDFAST_ADMIN_KEY`; `None` starts without it (the server generates a key on first start).
    pub admin_key: Option<String>,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A `holdfast.toml` to start with (`--config`), in which `{port}` is replaced by the port
    /// chosen; `--listen` is then not passed, so the file's `listen` must use `{port}`.
    pub config: Option<String>,
    /// Listen on this port (chosen with [`free_port`] beforehand, so other servers can be told
    /// it) instead of one picked at start.
    pub port: Option<u16>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { admin_key: Some(ADMIN_KEY.to_owned()), args: Vec::new(), env: Vec::new(), config: None, port: None }
    }
}

impl Opts {
    pub fn without_admin_key() -> Self {
        Opts { admin_key: None, ..Opts::default() }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A `holdfast serve` process started by this test, with its stdout and stderr in files.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    pub data: PathBuf,
    /// The admin key: the one from the options, or the one the server generated.
    pub admin_key: Option<String>,
    _logs: Arc<TempDir>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Starts `holdfast serve --data <data> --listen 127.0.0.1:<port> <args>` (or `--config <file>`
/// instead of `--listen` when `opts.config` is set) without waiting. Output goes to
/// `<logs>/<n>.out` and `<logs>/<n>.err`.
pub fn spawn_serve(data: &Path, opts: &Opts, port: u16, logs: &Path) -> (Child, PathBuf, PathBuf) {
    let n = unique();
    let (out, err) = (logs.join(format!("{n}.out")), logs.join(format!("{n}.err")));
    let mut cmd = base_command(logs);
    cmd.arg("serve").arg("--data").arg(data);
    match &opts.config {
        Some(template) => {
            let path = logs.join(format!("{n}.toml"));
            std::fs::write(&path, template.replace("{port}", &port.to_string())).expect("write config file");
            cmd.arg("--config").arg(path);
        }
        None => {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
    }
    cmd.args(&opts.args);
    if let Some(key) = &opts.admin_key {
        cmd.env("HOLDFAST_ADMIN_KEY", key);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.stdout(File::create(&out).expect("create stdout log")).stderr(File::create(&err).expect("create stderr log"));
    let child = cmd.spawn().expect("spawn holdfast serve");
    (child, out, err)
}

impl Server {
    /// Starts a server with the default options (admin key set) on `data`.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, Opts::default())
    }

    /// Starts a server and waits until `/healthz` answers; retries on another port when the
    /// chosen one was taken in the meantime.
    pub fn start_with(data: &Path, opts: Opts) -> Server {
        let logs = Arc::new(tempfile::tempdir().expect("log dir"));
        let attempts = if opts.port.is_some() { 1 } else { PORT_ATTEMPTS };
        for attempt in 1..=attempts {
            let port = opts.port.unwrap_or_else(free_port);
            let (child, stdout, stderr) = spawn_serve(data, &opts, port, logs.path());
            let mut server = Server {
                child: Some(child),
                port,
                base: format!("http://127.0.0.1:{port}"),
                data: data.to_owned(),
                admin_key: opts.admin_key.clone(),
                _logs: logs.clone(),
                stdout,
                stderr,
            };
            match server.wait_healthy() {
                Ok(()) => {
                    if server.admin_key.is_none() {
                        server.admin_key = server.generated_key();
                    }
                    return server;
                }
                Err(status) => {
                    let err = server.stderr();
                    let port_taken = err.contains("cannot listen"); // the bind failed: another process took the port
                    if port_taken && attempt < attempts {
                        continue; // someone else took the port; try another
                    }
                    panic!("holdfast serve exited early ({status}):\nstdout:\n{}\nstderr:\n{err}", server.stdout());
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Polls `/healthz` until it answers 200; `Err` if the process exits first.
    fn wait_healthy(&mut self) -> Result<(), ExitStatus> {
        let http = Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                return Err(status);
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.base)).send()
                && r.status().as_u16() == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child_mut().kill();
                let _ = self.child_mut().wait();
                panic!(
                    "server on port {} did not become healthy within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.stderr()
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server process already reaped")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server process already reaped").id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The key printed on stdout by a first start without `HOLDFAST_ADMIN_KEY`, if any.
    pub fn generated_key(&self) -> Option<String> {
        self.stdout().lines().map(str::trim).find(|l| l.starts_with("hf_")).map(str::to_owned)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child_mut().try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` by pid and waits (bounded) for the exit status.
    pub fn stop_with(mut self, signal: &str) -> ExitStatus {
        send_signal(self.pid(), signal);
        let mut child = self.child.take().expect("server process already reaped");
        wait_exit(&mut child, EXIT_TIMEOUT, "holdfast serve")
    }

    /// Graceful stop: SIGTERM, then the exit status.
    pub fn stop(self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// A crash: SIGKILL, then reap.
    pub fn kill9(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server process already reaped");
        child.kill().expect("SIGKILL the server");
        wait_exit(&mut child, EXIT_TIMEOUT, "killed holdfast serve")
    }

    /// A client with `key`, or none.
    pub fn api(&self, key: Option<&str>) -> Api {
        Api::new(&self.base, key)
    }

    /// A client with the admin key.
    pub fn admin(&self) -> Api {
        Api::new(&self.base, Some(self.admin_key.as_deref().expect("server has an admin key")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("response ({}) is not JSON ({e}): {:?}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// Asserts a success status and returns the JSON body.
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        if self.text.is_empty() { Value::Null } else { self.json() }
    }

    /// Asserts Holdfast's error envelope `{"error":{"code","message","request_id"}}` with this
    /// status and code, and that `request_id` matches the `x-request-id` header. Returns the
    /// message.
    pub fn err(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        let body = self.json();
        let error = body["error"].as_object().unwrap_or_else(|| panic!("no error object in {body}"));
        assert_eq!(error.len(), 3, "error envelope has exactly code, message, request_id: {body}");
        assert_eq!(error["code"], code, "error code in {body}");
        let message = error["message"].as_str().unwrap_or_else(|| panic!("message is not a string: {body}"));
        assert!(!message.is_empty(), "empty message: {body}");
        let request_id = error["request_id"].as_str().unwrap_or_else(|| panic!("no request_id: {body}"));
        assert!(!request_id.is_empty(), "empty request_id: {body}");
        assert_eq!(self.header("x-request-id").as_deref(), Some(request_id), "request_id matches the header");
        assert!(
            self.header("content-type").is_some_and(|c| c.starts_with("application/json")),
            "error content type: {:?}",
            self.header("content-type")
        );
        message.to_owned()
    }
}

/// A small blocking HTTP client for one server and key.
#[derive(Clone)]
pub struct Api {
    http: Client,
    pub base: String,
    pub key: Option<String>,
}

impl Api {
    pub fn new(base: &str, key: Option<&str>) -> Api {
        let http = Client::builder().timeout(Duration::from_secs(40)).build().expect("HTTP client");
        Api { http, base: base.to_owned(), key: key.map(str::to_owned) }
    }

    /// The same client with another overall request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Api {
        let http = Client::builder().timeout(timeout).build().expect("HTTP client");
        Api { http, ..self.clone() }
    }

    pub fn with_key(&self, key: Option<&str>) -> Api {
        Api { key: key.map(str::to_owned), ..self.clone() }
    }

    /// Sends a request; `body` is sent as JSON. `headers` are added as given.
    pub fn send(&self, method: Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Resp {
        self.try_send(method.clone(), path, body, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A GET that returns `None` when no answer came (the server is down or cut off).
    pub fn try_get(&self, path: &str) -> Option<Resp> {
        self.try_send(Method::GET, path, None, &[]).ok()
    }

    /// A POST that returns `None` when no answer came.
    pub fn try_post(&self, path: &str, body: &Value) -> Option<Resp> {
        self.try_send(Method::POST, path, Some(body), &[]).ok()
    }

    fn try_send(&self, method: Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> reqwest::Result<Resp> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send()?;
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text()?;
        Ok(Resp { status, headers, text })
    }

    /// Sends raw bytes with a content type.
    pub fn send_raw(&self, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).body(body);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().expect("read body");
        Resp { status, headers, text }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, Some(body), &[])
    }

    pub fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::PATCH, path, Some(body), &[])
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None, &[])
    }

    /// Creates a project (201) and returns it.
    pub fn create_project(&self, name: &str) -> Value {
        self.post("/v1/projects", &serde_json::json!({ "name": name })).ok(201)
    }

    /// Creates a key with a role (201) and returns the `KeyCreated` body.
    pub fn create_key(&self, name: &str, role: &str) -> Value {
        self.post("/v1/keys", &serde_json::json!({ "name": name, "role": role })).ok(201)
    }

    /// Every project, following `next_after` with pages of `limit`.
    pub fn all_projects(&self, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("/v1/projects?limit={limit}");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let page = self.get(&path).ok(200);
            all.extend(page["data"].as_array().expect("data").iter().cloned());
            match page["next_after"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return all,
            }
        }
        panic!("project paging did not end")
    }

    /// A project's whole journal (admin), following pages.
    pub fn journal(&self, project: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        for _ in 0..1000 {
            let after = all.last().map_or(0, |c| c["lsn"].as_u64().expect("lsn"));
            let page = self.get(&format!("/v1/projects/{project}/journal?after={after}&limit=1000")).ok(200);
            let changes = page["changes"].as_array().expect("changes").clone();
            if changes.is_empty() {
                return all;
            }
            all.extend(changes);
        }
        panic!("journal paging did not end")
    }
}

/// Runs the binary as a CLI client with its own HOME and XDG_CONFIG_HOME.
pub struct Cli {
    home: TempDir,
}

/// What a CLI run printed and its exit code (`-1` if it died of a signal).
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts exit code 0 and returns stdout as JSON.
    pub fn json(&self) -> Value {
        self.success();
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts exit code 0 and returns stdout as YAML (converted to a JSON value).
    pub fn yaml(&self) -> Value {
        self.success();
        serde_yaml_ng::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not YAML ({e}): {:?}", self.stdout))
    }

    pub fn success(&self) -> &Self {
        assert_eq!(self.code, 0, "CLI failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, expected, "exit code:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }
}

impl Cli {
    pub fn new() -> Cli {
        Cli { home: tempfile::tempdir().expect("CLI home") }
    }

    /// `$XDG_CONFIG_HOME/holdfast/config.toml`, where contexts are stored.
    pub fn context_file(&self) -> PathBuf {
        self.home.path().join("xdg").join("holdfast").join("config.toml")
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    /// Runs `holdfast <args>` with extra environment variables, bounded in time.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let n = unique();
        let out = self.home.path().join(format!("cli-{n}.out"));
        let err = self.home.path().join(format!("cli-{n}.err"));
        let mut cmd = base_command(self.home.path());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(File::create(&out).expect("stdout file")).stderr(File::create(&err).expect("stderr file"));
        let mut child = cmd.spawn().expect("spawn holdfast CLI");
        let status = wait_exit(&mut child, CLI_TIMEOUT, &format!("holdfast {args:?}"));
        Out {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }
}

/// How many project directories the data directory holds, the control journal's left out (it
/// lives in one too). Read offline or while the server runs (read-only).
#[allow(dead_code)]
pub fn project_dirs(data: &Path) -> usize {
    let db = rusqlite::Connection::open_with_flags(data.join("control.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open control.db");
    let control: Option<String> =
        db.query_row("SELECT id FROM projects WHERE name = 'holdfast-control'", [], |r| r.get(0)).ok();
    std::fs::read_dir(data.join("projects"))
        .expect("projects")
        .flatten()
        .filter(|d| Some(d.file_name().to_string_lossy().into_owned()) != control)
        .count()
}
