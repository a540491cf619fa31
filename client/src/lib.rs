//! `swarm-client`: generates text, either in one process (`--local`) or through a swarm.
