//! A `sample-mmo` server the load test starts itself: the binary as a child process on free
//! loopback ports, in memory, with a temporary data directory, its per-address limits raised
//! for bots that all share 127.0.0.1, its output in a log file; stopped with SIGTERM (then
//! killed) when the run ends.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scrape::{MetricsSource, http_get};

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary is not there.
    #[error(
        "no sample-mmo binary at {0}: build it (`cargo build --release -p sample-mmo`) or pass --server-bin"
    )]
    NoBinary(PathBuf),
    /// An I/O step failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        error: std::io::Error,
    },
    /// The server exited before it was ready.
    #[error("sample-mmo exited during start ({status}); its log: {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The log file.
        log: PathBuf,
    },
    /// The server did not answer `/health` in time.
    #[error("sample-mmo did not answer /health within {after:?}; its log: {log}")]
    NotReady {
        /// The limit.
        after: Duration,
        /// The log file.
        log: PathBuf,
    },
}

/// How to start the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerOptions {
    /// The `sample-mmo` binary.
    pub binary: PathBuf,
    /// NPCs in the world.
    pub npcs: u32,
    /// Edge of the world, metres.
    pub world_size: f32,
    /// Distance between towns (`--town-spacing`), metres; `None`: the server's default.
    pub town_spacing: Option<f32>,
    /// Ticks per second.
    pub tick_rate: u32,
    /// Subscription bytes per client per second.
    pub publish_budget: u32,
    /// Reducer calls per second per client (the server's rate limit).
    pub rate_limit: f64,
    /// Clients at most.
    pub max_clients: usize,
    /// Further flags passed as they are.
    pub extra_args: Vec<String>,
}

/// The `sample-mmo` next to this executable (the same `target/<profile>` directory).
pub fn default_binary() -> PathBuf {
    let name = format!("sample-mmo{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?;
            // Test binaries live in target/<profile>/deps.
            let dir = if dir.ends_with("deps") {
                dir.parent()?
            } else {
                dir
            };
            Some(dir.join(&name))
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

fn free_tcp_port() -> Result<u16, ServerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|error| ServerError::Io {
        context: "finding a free TCP port".into(),
        error,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|error| ServerError::Io {
            context: "finding a free TCP port".into(),
            error,
        })
}

fn free_udp_port() -> Result<u16, ServerError> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|error| ServerError::Io {
        context: "finding a free UDP port".into(),
        error,
    })?;
    s.local_addr()
        .map(|a| a.port())
        .map_err(|error| ServerError::Io {
            context: "finding a free UDP port".into(),
            error,
        })
}

/// A running child server.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Its control plane.
    pub http_url: String,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    /// Its command line.
    pub command: Vec<String>,
    data_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts the server and waits (at most two minutes) until `/health` answers.
    pub async fn start(options: &ServerOptions, log_dir: &Path) -> Result<Self, ServerError> {
        if !options.binary.is_file() {
            return Err(ServerError::NoBinary(options.binary.clone()));
        }
        let io = |context: &str| {
            let context = context.to_owned();
            move |error| ServerError::Io { context, error }
        };
        let data_dir = tempfile::Builder::new()
            .prefix("orrery-load-test-")
            .tempdir()
            .map_err(io("creating the data directory"))?;
        let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let udp: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
        let plenty = "1000000";
        let mut args: Vec<String> = [
            "--in-memory",
            "--strict-ports",
            "--stats-every",
            "3600",
            "--data-dir",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(data_dir.path().display().to_string());
        for (flag, value) in [
            ("--http", http.to_string()),
            ("--udp", udp.to_string()),
            ("--npcs", options.npcs.to_string()),
            ("--world-size", options.world_size.to_string()),
            ("--tick-rate", options.tick_rate.to_string()),
            ("--publish-budget", options.publish_budget.to_string()),
            ("--rate-limit", options.rate_limit.to_string()),
            (
                "--rate-burst",
                ((options.rate_limit * 2.0).ceil() as u64).to_string(),
            ),
            ("--max-clients", options.max_clients.to_string()),
            ("--max-pending-per-ip", "65536".into()),
            ("--identities-per-second", plenty.into()),
            ("--identity-burst", plenty.into()),
            ("--connect-tokens-per-second", plenty.into()),
            ("--connect-token-burst", plenty.into()),
        ] {
            args.push(flag.to_owned());
            args.push(value);
        }
        if let Some(spacing) = options.town_spacing {
            args.push("--town-spacing".to_owned());
            args.push(spacing.to_string());
        }
        args.extend(options.extra_args.iter().cloned());
        std::fs::create_dir_all(log_dir).map_err(io("creating the log directory"))?;
        let log = log_dir.join("sample-mmo.log");
        let out = std::fs::File::create(&log).map_err(io("creating the server log"))?;
        let err = out.try_clone().map_err(io("opening the server log"))?;
        let child = Command::new(&options.binary)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(&format!("starting {}", options.binary.display())))?;
        let pid = child.id();
        let mut command = vec![options.binary.display().to_string()];
        command.extend(args);
        let mut server = ServerProcess {
            child,
            http_url: format!("http://{http}"),
            pid,
            log,
            command,
            data_dir,
        };
        let limit = Duration::from_secs(120);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(ServerError::Exited {
                    status: status.to_string(),
                    log: server.log.clone(),
                });
            }
            let health = format!("{}/health", server.http_url);
            if http_get(&health, None, Duration::from_secs(2))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    after: limit,
                    log: server.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The control plane's `/metrics`, with the admin token from the data directory.
    pub fn metrics(&self) -> Result<MetricsSource, ServerError> {
        let path = self.data_dir.path().join("admin-token");
        let token = std::fs::read_to_string(&path).map_err(|error| ServerError::Io {
            context: format!("reading {}", path.display()),
            error,
        })?;
        Ok(MetricsSource {
            url: format!("{}/metrics", self.http_url),
            admin_token: Some(token.trim().to_owned()),
        })
    }

    /// Stops the server: SIGTERM (a clean shutdown), then a kill after ten seconds.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_binary_is_named() {
        let options = ServerOptions {
            binary: PathBuf::from("/nonexistent/sample-mmo"),
            npcs: 10,
            world_size: 100.0,
            town_spacing: None,
            tick_rate: 20,
            publish_budget: 8192,
            rate_limit: 30.0,
            max_clients: 10,
            extra_args: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        match ServerProcess::start(&options, dir.path()).await {
            Err(e @ ServerError::NoBinary(_)) => {
                assert!(e.to_string().contains("/nonexistent/sample-mmo"))
            }
            other => panic!("expected NoBinary, got {other:?}"),
        }
        assert!(default_binary().ends_with("sample-mmo"));
    }
}
