//! `swarm-client` binary: parses flags and hands over to the library.

use anyhow::Result;
use clap::Parser;
use sunswarm_client::cli::{Cli, Command};
use sunswarm_client::commands;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = sunswarm_net::runtime::client_runtime()?;
    runtime.block_on(async {
        match cli.command {
            Command::Generate(args) => commands::generate(&args).await,
            Command::Serve(args) => sunswarm_client::serve::run(&args).await,
            Command::Fetch { model } => commands::fetch(&model),
        }
    })
}
