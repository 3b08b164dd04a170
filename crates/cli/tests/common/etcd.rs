//! A throwaway single-node etcd on loopback (Debian's `etcd-server`, which `scripts/test`
//! installs), with a temporary data directory, fast heartbeats and elections, and its log in a
//! file. Stopped by pid; always killed when its handle is dropped.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;
use tempfile::TempDir;

use super::{free_port, send_signal, wait_exit};

/// How long etcd may take to answer `/health` with `{"health":"true"}`, or to exit.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a start is tried again on other ports when another process took one first.
const PORT_ATTEMPTS: usize = 5;

/// A running etcd; see the module documentation.
pub struct Etcd {
    child: Option<Child>,
    port: u16,
    peer_port: u16,
    /// Holds `data/` (etcd's data directory) and `etcd.log` (stdout and stderr, every start).
    dir: TempDir,
}

/// The `etcd` binary: on `PATH`, or where Debian puts it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no `etcd` binary on PATH: the etcd tests need Debian's etcd-server, which scripts/test installs (apt-get install etcd-server)")
        })
}

impl Etcd {
    /// Starts etcd on two free loopback ports and waits (bounded) until it is healthy.
    pub fn start() -> Etcd {
        let mut dir = tempfile::tempdir().expect("etcd temp dir");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let peer_port = loop {
                let p = free_port();
                if p != port {
                    break p;
                }
            };
            let mut etcd = Etcd { child: None, port, peer_port, dir };
            match etcd.spawn_and_wait() {
                Ok(()) => return etcd,
                Err(status) if attempt < PORT_ATTEMPTS && etcd.log().contains("address already in use") => {
                    eprintln!("etcd could not bind {port}/{peer_port} ({status}); trying other ports");
                    dir = etcd.take_dir();
                    let _ = std::fs::remove_dir_all(dir.path().join("data")); // made for the old ports
                }
                Err(status) => panic!("etcd exited early ({status}):\n{}", etcd.log()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts it again after [`Etcd::kill9`] or [`Etcd::stop`]: same ports, same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is still running (pid {})", self.pid());
        if let Err(status) = self.spawn_and_wait() {
            panic!("restarted etcd exited early ({status}):\n{}", self.log());
        }
    }

    /// `http://127.0.0.1:PORT`, the client URL (also what etcd-client takes as an endpoint).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The client address, e.g. for a [`super::proxy::Proxy`] in front of etcd.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is not running").id()
    }

    /// Everything etcd printed, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether `GET /health` answers `{"health":"true"}` within `timeout`.
    pub fn healthy(&self, timeout: Duration) -> bool {
        let http = Client::builder().timeout(timeout).build().expect("HTTP client");
        http.get(format!("{}/health", self.url()))
            .send()
            .and_then(|r| r.json::<Value>())
            .is_ok_and(|v| v["health"] == "true")
    }

    /// A crash: SIGKILL, then reap. [`Etcd::restart`] brings it back.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("etcd is not running");
        child.kill().expect("SIGKILL etcd");
        wait_exit(&mut child, EXIT_TIMEOUT, "killed etcd")
    }

    /// A graceful stop: SIGTERM (and SIGCONT, in case it is paused), then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid();
        send_signal(pid, "TERM");
        send_signal(pid, "CONT"); // an unreaped process can still be signalled
        let mut child = self.child.take().expect("etcd is not running");
        wait_exit(&mut child, EXIT_TIMEOUT, "etcd after SIGTERM")
    }

    /// Freezes it (SIGSTOP): its sockets still accept connections, nothing answers.
    pub fn pause(&self) {
        send_signal(self.pid(), "STOP");
    }

    /// Thaws it (SIGCONT) after [`Etcd::pause`].
    pub fn resume(&self) {
        send_signal(self.pid(), "CONT");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn take_dir(mut self) -> TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let empty = tempfile::tempdir().expect("etcd temp dir");
        std::mem::replace(&mut self.dir, empty)
    }

    /// Spawns etcd on this handle's ports and data, then polls `/health` until it is true; `Err`
    /// with the exit status if etcd exits first.
    fn spawn_and_wait(&mut self) -> Result<(), ExitStatus> {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).expect("etcd log");
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data: &Path = &self.dir.path().join("data");
        let child = Command::new(binary())
            .env_clear() // etcd reads ETCD_* variables; none of the caller's apply
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--initial-cluster-state", "new"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().expect("try_wait etcd") {
                self.child = None;
                return Err(status);
            }
            if self.healthy(Duration::from_secs(1)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let child = self.child.as_mut().expect("just spawned");
                let _ = child.kill();
                let _ = child.wait();
                panic!("etcd on port {} was not healthy within {START_TIMEOUT:?}:\n{}", self.port, self.log());
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL ends a paused (SIGSTOPped) process too
            let _ = child.wait();
        }
    }
}
