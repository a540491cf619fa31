//! `swarm-client` binary entry point.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("swarm-client: not built yet")
}
