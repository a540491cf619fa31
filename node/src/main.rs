//! `swarm-node` binary: the node of [`sunswarm_node::cli`], with no hooks.

fn main() -> anyhow::Result<()> {
    sunswarm_node::cli::main()
}
