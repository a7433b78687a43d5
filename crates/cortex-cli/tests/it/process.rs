//! Runs the built `cortex` binary with a private data dir and captures what it logs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = cortex_testkit::ADMIN_PASSWORD;

pub fn cortex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cortex"))
}

/// Environment shared by every run: a private data dir, loopback on a free port, text logs.
pub fn base_env(data_dir: &Path) -> Vec<(String, String)> {
    vec![
        ("CORTEX_DATA_DIR".into(), data_dir.display().to_string()),
        ("CORTEX_LISTEN".into(), "127.0.0.1:0".into()),
        ("CORTEX_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ("CORTEX_CONFIG".into(), String::new()),
        ("RUST_LOG".into(), "info".into()),
    ]
}

pub struct CortexProcess {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl CortexProcess {
    /// Starts `cortex serve` and waits for its "listening" line.
    pub fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> CortexProcess {
        let mut command = cortex();
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in base_env(data_dir) {
            command.env(k, v);
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let found = log
                .lock()
                .unwrap()
                .iter()
                .find_map(|line| listening_address(line));
            if let Some(addr) = found {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // The pipe closes with the process: read what it wrote last (its error line).
                let _ = reader.join();
                let lines = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("cortex exited early ({status}): {lines:?}");
            }
            assert!(
                Instant::now() < deadline,
                "cortex did not start: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        CortexProcess {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends SIGTERM without waiting: the process starts draining.
    pub fn send_sigterm(&self) {
        self.send_signal("TERM");
    }

    /// Sends a signal by name (`HUP`, `TERM`, …).
    pub fn send_signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "cortex did not exit");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: the process dies at once, with no drain and no cleanup, as in a crash.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for CortexProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the address out of the JSON or text "cortex listening" log line.
fn listening_address(line: &str) -> Option<String> {
    if !line.contains("cortex listening") {
        return None;
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
        return value["address"].as_str().map(str::to_owned);
    }
    let start = line.find("address=")? + "address=".len();
    Some(line[start..].split_whitespace().next()?.to_owned())
}

/// Runs a `cortex` subcommand to completion against a data dir.
pub fn run(data_dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut command = cortex();
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in base_env(data_dir) {
        command.env(k, v);
    }
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.output().unwrap()
}
