//! The one launcher of a `switchyard` child process that the tests share:
//! the real binary (`run` on a config in its own directory, or another
//! long-running command), its log kept in a file there, stopped by signal and
//! killed if the test ends first.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `switchyard run` child process with its own data dir and config.
pub struct HostProcess {
    /// The directory holding `switchyard.toml`, the data and the log.
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

/// What the sources log once they are consuming.
const READY: [&str; 6] = [
    "connected to RabbitMQ",
    "pulling from JetStream",
    "subscribed to NATS",
    "reading Redis streams",
    "subscribed to RocketMQ topics",
    // Logged once the consumer group has given the host partitions.
    "consuming Kafka partitions",
];

impl HostProcess {
    /// Start `switchyard run` on `<dir>/switchyard.toml`.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_env(dir, &[])
    }

    /// Start it with extra environment variables.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_command(dir, &["run".into(), dir.join("switchyard.toml").into()], env)
    }

    /// Start `switchyard <args>`, logging into `dir`, with its default log
    /// levels unless `env` sets `RUST_LOG`.
    pub fn start_command(dir: &Path, args: &[OsString], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("host-{}.log", super::unique("run")));
        let mut all = vec![("RUST_LOG".to_string(), "warn,switchyard=info,handler=info".to_string())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut host = Self { dir: dir.to_path_buf(), child: None, log, args: args.to_vec(), env: all };
        host.spawn();
        host
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Wait until the log says its broker source is consuming.
    pub async fn wait_ready(&self) {
        self.wait_for_log_any(&READY, 60).await;
    }

    /// Wait until the log holds `text`.
    pub async fn wait_for_log(&self, text: &str, secs: u64) {
        self.wait_for_log_any(&[text], secs).await;
    }

    async fn wait_for_log_any(&self, texts: &[&str], secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if texts.iter().any(|t| log.contains(t)) {
                return;
            }
            assert!(Instant::now() < deadline, "the host did not log any of {texts:?} within {secs} s:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start it again after it stopped.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the host is still running");
        self.spawn();
    }

    /// What the host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal by name, such as `TERM`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill").arg(format!("-{name}")).arg(pid).status().unwrap().success();
        assert!(ok, "kill -{name} failed");
    }

    /// Wait for it to exit by itself, at most `secs`.
    pub async fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the host did not exit within {secs} s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the host did not exit within 60 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
