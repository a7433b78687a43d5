//! Private Redis and PostgreSQL servers that a fault test may stop and restart without
//! disturbing the machine's shared ones (which other tests use at the same time). Each listens
//! on a free loopback port and keeps its files in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, up: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "{what} did not {}",
            if up { "start" } else { "stop" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` of the test's own; it keeps nothing on disk, so a restart starts empty.
pub struct TempRedis {
    child: Option<Child>,
    pub port: u16,
    /// Certificate and key (PEM files) when it speaks TLS only.
    tls: Option<(PathBuf, PathBuf)>,
}

impl TempRedis {
    pub fn start() -> TempRedis {
        let mut redis = TempRedis {
            child: None,
            port: free_port(),
            tls: None,
        };
        redis.restart();
        redis
    }

    /// A Redis that accepts TLS connections only, with the given certificate and key files.
    pub fn start_tls(cert: &Path, key: &Path) -> TempRedis {
        let mut redis = TempRedis {
            child: None,
            port: free_port(),
            tls: Some((cert.to_owned(), key.to_owned())),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for_port(self.port, false, "redis-server");
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        self.child = Some(child);
        wait_for_port(self.port, true, "redis-server");
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, trust auth on
/// loopback), so a test can stop and restart it.
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    running: bool,
}

impl TempPostgres {
    pub fn start() -> TempPostgres {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL refuses to run as root; as root, run its tools as the postgres user.
        give_to_postgres(dir.path());
        let status = postgres_command(&bin.join("initdb"))
            .args(["-D", &dir.path().join("data").display().to_string()])
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let mut postgres = TempPostgres {
            dir,
            bin,
            port: free_port(),
            running: false,
        };
        postgres.restart();
        postgres
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast shutdown: open connections are cut, as in a database restart.
    pub fn stop(&mut self) {
        if self.running {
            let status = self.pg_ctl().args(["-m", "fast", "-w", "stop"]).status();
            assert!(status.unwrap().success(), "pg_ctl stop failed");
            self.running = false;
        }
        wait_for_port(self.port, false, "postgres");
    }

    pub fn restart(&mut self) {
        self.stop();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .pg_ctl()
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "start"])
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
        self.running = true;
        wait_for_port(self.port, true, "postgres");
    }

    fn pg_ctl(&self) -> Command {
        let mut command = postgres_command(&self.bin.join("pg_ctl"));
        command
            .args(["-D", &self.dir.path().join("data").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).status();
        }
    }
}

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/<v>/bin`).
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries must be installed (the test command installs them)")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql")
        .1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_postgres(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown postgres failed");
    }
}
