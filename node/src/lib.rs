//! `swarm-node`: a Sunswarm peer. It loads a contiguous range of transformer blocks, announces the
//! range and its energy state in the swarm, and serves inference sessions along client-chosen routes.
