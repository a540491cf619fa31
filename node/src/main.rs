//! `swarm-node` binary entry point.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("swarm-node: networking is not built yet")
}
