//! `swarm-client` binary: parses flags and hands over to the library.

use anyhow::Result;
use clap::Parser;
use sunswarm_client::cli::{Cli, Command};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = sunswarm_net::runtime::compute_runtime()?;
    runtime.block_on(async {
        match cli.command {
            Command::Generate(args) if args.local => sunswarm_client::local::run(&args).await,
            Command::Generate(args) => sunswarm_client::swarm::generate_via_swarm(&args).await,
            Command::Fetch { model } => {
                let source = sunswarm_models::ModelSource::parse(&model)?;
                let m = sunswarm_models::Model::open(&source)?;
                println!("{} model id {}", source.display_name(), m.model_id());
                Ok(())
            }
        }
    })
}
