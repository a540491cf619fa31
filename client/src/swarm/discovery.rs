//! Finding the peers of one model: the walk lives in `sunswarm-net` (nodes that choose their own
//! range, `swarm-node --blocks auto`, need it too), re-exported here where clients look for it.

pub use sunswarm_net::discovery::discover;
