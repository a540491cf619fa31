//! `swarm-testnet` binary entry point.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("swarm-testnet: not built yet")
}
