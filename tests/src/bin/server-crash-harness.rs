//! `server-crash-harness <dir>`: a real Orrery server (UDP and HTTP on ports the OS chooses,
//! every tick fsynced) running the [`ledger`] module with its data in `<dir>`, for the server
//! crash test. Prints `ready <control plane URL>` on stdout once it serves, then runs until it
//! is killed (the test sends SIGKILL) or its stdin closes (then it shuts down cleanly).
//!
//! [`ledger`]: orrery_integration_tests::ledger

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use orrery_integration_tests::ledger;
use orrery_server::{RateLimit, ServerConfig, Storage};

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        let _ = writeln!(std::io::stderr(), "usage: server-crash-harness <dir>");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = ServerConfig::for_tests(&dir);
    config.storage = Storage::Disk {
        fsync: orrery_engine::FsyncPolicy::EveryTick,
        snapshot_every_ticks: 40,
    };
    // The test's clients share one address and call as fast as they can.
    let plenty = RateLimit {
        calls_per_second: 100_000.0,
        burst: 100_000,
    };
    config.rate_limit = plenty;
    config.identities_per_address = plenty;
    config.connect_tokens_per_address = plenty;
    let result = runtime.block_on(async move {
        let server = orrery_server::start(ledger::module(), config).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {}", server.http_url).map_err(|e| anyhow_like(&e))?;
            out.flush().map_err(|e| anyhow_like(&e))?;
        }
        // Until stdin closes (the test dropped it) or SIGKILL.
        tokio::task::spawn_blocking(|| {
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(|e| anyhow_like(&e))?;
        server.shutdown().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "server-crash-harness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn anyhow_like(e: &dyn std::fmt::Display) -> orrery_server::ServerError {
    orrery_server::ServerError::Thread {
        name: "server-crash-harness",
        reason: e.to_string(),
    }
}
