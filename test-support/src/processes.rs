//! Real `llmesh-operator --manifests` and `llmesh-sidecar` processes on
//! loopback, for tests of the sync channel between them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A binary of this workspace, next to the test executable's `deps/`
/// folder, where `cargo test --workspace` builds every package's binaries
/// before it runs a test (so it is never older than the code under test).
/// Tests do not call cargo themselves: run from inside a test run, cargo
/// rebuilt half the workspace instead of finding it fresh.
///
/// # Panics
/// The binary is not there: run the tests with `--workspace`, or build it
/// first (`cargo build --workspace --bins`).
#[allow(clippy::unwrap_used)]
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let folder = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = folder.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace`, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Sends `signal` (`TERM`, `KILL`) to `child`.
///
/// # Panics
/// `kill` cannot run.
#[allow(clippy::unwrap_used)]
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// Reads JSON log lines until one with `message`; keeps draining the rest
/// (so the process never blocks on a full pipe) into the returned channel.
#[allow(clippy::unwrap_used)]
fn wait_for_line(child: &mut Child, message: &str) -> (Value, mpsc::Receiver<Value>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let wanted = message.to_owned();
    let (found_tx, found_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let matched =
                event["fields"]["message"] == wanted.as_str() || event["message"] == wanted.as_str();
            if matched && let Some(found) = found.take() {
                let _ = found.send(event.clone());
            }
            let _ = tx.send(event);
        }
    });
    let event = found_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the process never logged {message:?}"));
    (event, rx)
}

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event["fields"][name]
        .as_str()
        .or_else(|| event[name].as_str())
        .unwrap_or_default()
}

/// `llmesh-operator --manifests DIR` serving the sync channel.
#[derive(Debug)]
pub struct Operator {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `http://127.0.0.1:<admin port>` (`/metrics`).
    pub admin_url: String,
    child: Child,
}

impl Operator {
    /// Starts the operator on `binary` serving `manifests`, with the shared
    /// token in `token_file` and spend kept in `state_file`; `port` 0 picks one.
    ///
    /// # Panics
    /// The operator does not start.
    #[allow(clippy::unwrap_used)]
    pub fn start(binary: &Path, manifests: &Path, token_file: &Path, state_file: &Path, port: u16) -> Self {
        let mut child = Command::new(binary)
            .arg("--manifests")
            .arg(manifests)
            .arg("--sync-token-file")
            .arg(token_file)
            .arg("--sync-state-file")
            .arg(state_file)
            .args(["--sync-addr", &format!("127.0.0.1:{port}")])
            .args(["--admin-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (event, _rest) = wait_for_line(
            &mut child,
            "llmesh-operator serving the sync channel from manifests",
        );
        Self {
            url: format!("http://{}", field(&event, "sync")),
            admin_url: format!("http://{}", field(&event, "admin")),
            child,
        }
    }

    /// The port the sync channel listens on.
    ///
    /// # Panics
    /// The URL has no port.
    #[allow(clippy::unwrap_used)]
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills it without warning (SIGKILL) and waits for it to be gone.
    pub fn kill(mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `llmesh-sidecar` process with the sync channel on.
#[derive(Debug)]
pub struct SidecarProcess {
    /// `http://127.0.0.1:<api port>`.
    pub url: String,
    child: Child,
    logs: parking_lot::Mutex<mpsc::Receiver<Value>>,
}

impl SidecarProcess {
    /// Starts `binary` serving the `manifests` folder at first, syncing with
    /// `sync_url` (token in `token_file`), with `extra` variables.
    ///
    /// # Panics
    /// The sidecar does not start.
    #[allow(clippy::unwrap_used)]
    pub fn start(
        binary: &Path,
        manifests: &Path,
        sync_url: &str,
        token_file: &Path,
        extra: &[(&str, String)],
    ) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("--manifests")
            .arg(manifests)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("LLMESH_SYNC_URL", sync_url)
            .env("LLMESH_SYNC_TOKEN_FILE", token_file)
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let (event, logs) = wait_for_line(&mut child, "llmesh sidecar serving");
        Self {
            url: format!("http://{}", field(&event, "api_addr")),
            child,
            logs: parking_lot::Mutex::new(logs),
        }
    }

    /// Waits until the sidecar logs `message` (within `within`).
    pub fn logged(&self, message: &str, within: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let event = self.logs.lock().recv_timeout(left).ok()?;
            if event["fields"]["message"] == message || event["message"] == message {
                return Some(event);
            }
        }
    }

    /// SIGTERM, then waits for the process to exit.
    ///
    /// # Panics
    /// The process does not exit.
    #[allow(clippy::unwrap_used)]
    pub fn terminate(mut self) {
        signal(&self.child, "TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the sidecar exits cleanly on SIGTERM: {status}");
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
