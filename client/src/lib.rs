//! `swarm-client`: generates text, either in one process (`--local`) or through a swarm of peers
//! that each host a range of blocks. The client holds the token embedding, the final norm and the
//! LM head; in a swarm the last hop picks the tokens with the client's draws, and the client's
//! head checks them on spot-checked steps. [`generate::generate`] runs the same loop over either
//! kind of [`generate::Pipeline`].
//! [`engine::Engine`] is the library handle that the commands (and the HTTP server) run on.

pub mod cli;
pub mod commands;
pub mod engine;
pub mod generate;
pub mod head;
pub mod local;
pub mod serve;
pub mod swarm;
