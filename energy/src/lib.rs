//! Energy model of a harvesting peer: battery, harvest, power modes, the semi-Markov chain of the
//! seed paper, maximum input rates and the scheduling policies built on them. Pure Rust, no I/O.
