//! Energy model of a harvesting peer: battery, harvest, power modes, the semi-Markov chain of the
//! seed paper, maximum input rates and the scheduling policies built on them. Pure Rust, no I/O.
//!
//! The model follows `paper-model.md` (the specification rebuilt from Khoshsirat, Perin, Rossi,
//! 2024): a device is a chain over (pending job, battery level, power-saving flag) whose stages
//! last one slot, or N_m slots while processing in mode m. From its stationary law come the time
//! averages (eq. 2-4), the highest arrival rate it can take at a given risk of a low battery
//! (eq. 5, with Brent's method), and the scheduling weights of the policies (eq. 6 and adaptive).
//!
//! - [`device`], [`harvest`], [`modes`]: parameters, validated with errors naming the parameter.
//! - [`chain`], [`stationary`], [`analysis`], [`brent`], [`maxrate`]: the analytical model.
//! - [`policy`]: the weights a client computes from peers' gossiped [`policy::PeerEnergyState`].
//! - [`profile`]: a peer's offline profile (eq. 5 rate, saving-risk table) and its gossiped state.
//! - [`csucb`]: CS-UCB (seed 004), the client's per-hop peer bandit under a per-token deadline.
//! - [`emulated`]: the stage-by-stage battery a live node or a simulation steps slot by slot.
//! - [`sim`]: the paper's single-device and network simulations, one run at a time.

pub mod analysis;
pub mod brent;
pub mod chain;
pub mod csucb;
pub mod device;
pub mod emulated;
pub mod error;
pub mod harvest;
pub mod maxrate;
pub mod modes;
pub mod policy;
pub mod profile;
pub mod sim;
pub mod stationary;

pub use analysis::Analysis;
pub use chain::Chain;
pub use csucb::{CsUcb, CsUcbError, CsUcbParams, GroupBandit};
pub use device::DeviceParams;
pub use emulated::EmulatedBattery;
pub use error::{EnergyError, Result};
pub use harvest::{Harvest, HarvestSource, HarvestTrace};
pub use maxrate::{CrossingRule, MaxRate, max_input_rate, max_input_rate_with};
pub use modes::{ModeTable, PowerMode};
pub use policy::{PeerEnergyState, Policy, PolicyKind};
pub use profile::DeviceProfile;
