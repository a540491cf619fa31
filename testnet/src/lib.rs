//! `swarm-testnet`: starts real multi-process swarms on 127.0.0.1 and runs the paper's simulations.

pub mod net;
