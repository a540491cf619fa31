//! Finding the peers of one model: the walk lives in `sunswarm-net` (nodes that choose their own
//! range, `swarm-node --blocks auto`, need it too), re-exported here where clients look for it.

pub use sunswarm_net::discovery::{discover, discover_heard, discover_sampled};

/// Records a client fetches per block range it explores, beyond the providers gossip already
/// brought: a route needs one live peer per range and the policy a choice among several, not
/// every replica (the walk's cost would grow with the swarm).
pub const RECORDS_PER_BLOCK: usize = 8;

/// Connected nodes a client asks for their views before it walks the DHT: two, so that one
/// node that leaves peers out does not decide what the client sees (the walk still finds what
/// both leave out, at the cost of record lookups).
pub const VIEW_PEERS: usize = 2;
