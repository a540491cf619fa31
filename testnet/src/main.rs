//! `swarm-testnet` binary entry point: one subcommand per tool (`sim` runs the paper's energy
//! simulations; swarm launchers are added beside it as further `Command` variants).

use clap::{Parser, Subcommand};

mod byzantine;
mod experiment;
mod plan;
mod sim;

/// Local swarms, simulations and benchmarks for Sunswarm.
#[derive(Debug, Parser)]
#[command(name = "swarm-testnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The energy model's simulations (paper Figs. 2-4) and our policy beside the paper's.
    Sim(sim::SimCommand),
    /// Start a local swarm of swarm-node processes on 127.0.0.1 until Ctrl-C.
    Up(sunswarm_testnet::net::cli::UpArgs),
    /// Clients generate while nodes leave (killed or stopped) and replacements join; prints
    /// completed, identical to --local, failed, and repair times.
    Churn(sunswarm_testnet::net::churn::ChurnArgs),
    /// How the swarm's own costs grow with its size: coverage time, control traffic per peer,
    /// route choice time, at 10, 30 and 100 nodes.
    Scale(sunswarm_testnet::net::scale::ScaleArgs),
    /// The main job end to end: fetch the model, start 3 nodes, answer a chat prompt through them.
    Demo(sunswarm_testnet::net::cli::DemoArgs),
    /// Live experiments on real swarms (the energy policies on emulated batteries).
    #[command(subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// Which peer hosts which blocks: the exact placement of seed 003 for a peers file.
    Plan(plan::PlanArgs),
    /// A node that misbehaves (testnets only): what `up --byzantine I:MODE` starts for node I.
    ByzantineNode(byzantine::ByzantineArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(cmd) => sim::run(cmd),
        Command::Up(args) => sunswarm_testnet::net::cli::up(args),
        Command::Churn(args) => sunswarm_testnet::net::churn::main(args),
        Command::Scale(args) => sunswarm_testnet::net::scale::main(args),
        Command::Demo(args) => sunswarm_testnet::net::cli::demo(args),
        Command::Experiment(cmd) => experiment::run(cmd),
        Command::Plan(args) => plan::run(&args),
        Command::ByzantineNode(args) => byzantine::run(args),
    }
}
