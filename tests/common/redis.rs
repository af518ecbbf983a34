//! A redis-server for the worker's tests and bench: 127.0.0.1 on a free port, append-only
//! with an fsync per write, stoppable and restartable, killed by its pid when dropped.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A free TCP port on 127.0.0.1 (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid of a child, as nix names it.
pub fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap())
}

/// A redis-server on 127.0.0.1:<free port>, append-only with an fsync per write, its data in
/// a directory of its own; stoppable and restartable on the same port and directory; killed
/// by its pid when dropped.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    /// More redis-server arguments (e.g. `--proto-max-bulk-len 1mb`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start(name: &str) -> Redis {
        Redis::start_with(name, &[])
    }

    /// [`Redis::start`] with more redis-server arguments.
    pub fn start_with(name: &str, extra: &[&str]) -> Redis {
        super::require_root();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("redis")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.spawn();
        r
    }

    /// Starts the server and waits until it answers PING (after loading its append-only file).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Proc::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start redis-server (Debian's redis-server; ./test.sh installs it): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now()
            + Duration::from_secs(if std::env::var_os("RUNBOX_IN_GUEST").is_some() {
                120
            } else {
                30
            });
        loop {
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok_and(|p| p == "PONG") {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "redis-server did not start ({exited:?}): {}",
                fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to redis-server")
    }

    /// `INFO stats`' `total_connections_received`: connections accepted since the start.
    pub fn connections_received(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut self.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_connections_received in INFO stats: {info}"))
    }

    /// SIGTERM (redis-server writes its append-only file and exits), and waits for the exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        kill(pid_of(&child), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "redis-server on SIGTERM: {status}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
