//! The `orrery` binary: parses the command line and runs [`orrery_cli::run`] with stdout as
//! the output; logs (`RUST_LOG`, default `warn`) go to stderr.

use clap::Parser;
use orrery_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    run(&cli, &mut stdout).await?;
    Ok(())
}
