//! A Redis server of a test's own, on a free port with its data in the
//! test's directory, so a test can stop and start it without disturbing the
//! machine's Redis, which other tests use.

use std::time::Duration;

/// A `redis-server` the test starts and stops; stopped when dropped.
pub struct OwnServer {
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl OwnServer {
    /// A server on a free port, its data under `dir`; not started.
    pub fn new(dir: &std::path::Path) -> Self {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        Self { port: super::free_port(), dir }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start it and wait until it listens.
    pub async fn start(&self) {
        let ok = std::process::Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--pidfile"])
            .arg(self.dir.join("redis.pid"))
            .status()
            .expect("redis-server must be installed")
            .success();
        assert!(ok, "redis-server did not start");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// Stop it, saving its data (`SHUTDOWN`).
    pub fn stop(&self) {
        let _ = std::process::Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).status();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}
