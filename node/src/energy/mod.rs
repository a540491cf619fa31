//! A node's energy state and admission decision. Three sources behind one trait:
//! - `--energy mains` (default): full battery, never saving, unpaced;
//! - `--energy battery`: a real battery from Linux power_supply ([`sysfs`]);
//! - `--energy emulated:KEY=VALUE,...` ([`spec`] documents the spelling): an emulated battery and
//!   harvester on an accelerated clock (`--clock-scale`), where every session is one job that
//!   drains its power mode's energy and is paced to its mode's time per job ([`emulated`]).
//!
//! The node announces [`EnergySource::state`] and asks [`EnergySource::begin_job`] before it
//! opens a session; a refusal says why (power saving or busy) so the client can route around it.

pub mod emulated;
pub mod pacing;
pub mod spec;
pub mod sysfs;

use std::str::FromStr;

use sunswarm_protocol::EnergyState;

pub use pacing::JobTicket;
pub use spec::{EmulatedParams, PowerModeArg, SpecError};

/// `--energy` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnergySpec {
    Mains,
    Battery,
    /// The text after `emulated:` (empty for all defaults).
    Emulated(String),
}

/// Why the node's energy source could not be set up from its flags (`--energy` and friends).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnergySetupError {
    #[error("unknown --energy {0:?}: expected mains, battery or emulated:KEY=VALUE,...")]
    Unknown(String),
    #[error("--energy {0} is not supported by this swarm-node yet; use --energy mains")]
    Unsupported(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Battery(#[from] sysfs::BatteryError),
    #[error("--clock-scale: {0}")]
    ClockScale(String),
    #[error(
        "--{flag} applies to --energy emulated:... (and --power-mode also to battery), not to --energy mains"
    )]
    NotForMains { flag: &'static str },
    #[error("the emulated battery needs a tokio runtime to tick its slots")]
    NoRuntime,
}

impl FromStr for EnergySpec {
    type Err = EnergySetupError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mains" => Ok(EnergySpec::Mains),
            "battery" => Ok(EnergySpec::Battery),
            "emulated" => Ok(EnergySpec::Emulated(String::new())),
            _ => match s.strip_prefix("emulated:") {
                Some(rest) => Ok(EnergySpec::Emulated(rest.to_string())),
                None => Err(EnergySetupError::Unknown(s.to_string())),
            },
        }
    }
}

/// Why a node refuses a new session for energy reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Below the low threshold, until the battery is back at the high one.
    #[error("{0}")]
    PowerSaving(String),
    /// The energy model's single pending place is taken (R6).
    #[error("{0}")]
    Busy(String),
}

/// Signalled whenever a source's announced state may have changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateChange {
    /// Changes so far (slot ends and admissions of an emulated battery).
    pub seq: u64,
    /// The power-saving flag after the change: a flip is announced at once, whatever the gossip
    /// interval, because clients must stop (or resume) routing to the node.
    pub power_saving: bool,
    /// Whether the model takes one more job (R6), announced at once on a flip for the same
    /// reason.
    pub takes_job: bool,
}

impl StateChange {
    /// Whether clients must hear of this state at once: it changes whom they may route to.
    pub fn routing_differs(&self, other: &StateChange) -> bool {
        self.power_saving != other.power_saving || self.takes_job != other.takes_job
    }
}

/// What the node reports and how it decides whether to take a session.
pub trait EnergySource: Send + Sync + 'static {
    /// Current state, published in announcements.
    fn state(&self) -> EnergyState;
    /// `Err(reason)` when the node must refuse new sessions (power saving).
    fn admit(&self) -> Result<(), String> {
        let s = self.state();
        if s.power_saving {
            Err(format!(
                "power saving: battery at {:.0} %",
                s.battery_level * 100.0
            ))
        } else {
            Ok(())
        }
    }
    /// Takes a new session of at most `max_tokens` tokens as one job, or says why not. The
    /// ticket paces the session's forwards (see [`pacing`]).
    fn begin_job(&self, _max_tokens: u32) -> Result<JobTicket, Refusal> {
        self.admit().map_err(Refusal::PowerSaving)?;
        Ok(JobTicket::unpaced())
    }
    /// Called after each job (one forward) with the compute time it took.
    fn on_job(&self, _compute: std::time::Duration) {}
    /// Follows the announced state, for sources where it changes on their own clock (an
    /// emulated battery's slot ends), so the node can announce a change as it happens instead of
    /// at a gossip tick of arbitrary phase.
    fn state_changes(&self) -> Option<tokio::sync::watch::Receiver<StateChange>> {
        None
    }
}

/// Wall power: no constraints.
pub struct Mains;

impl EnergySource for Mains {
    fn state(&self) -> EnergyState {
        EnergyState::mains()
    }
}

/// The energy flags of `swarm-node`, flattened into its command line.
#[derive(clap::Args, Debug, Clone)]
pub struct EnergyArgs {
    /// Energy source: mains, battery, or emulated:KEY=VALUE,... with keys capacity (kJ),
    /// harvest=uniform(MIN,MAX) (kJ per slot), slot (s), initial, low, high (kJ), delta, seed
    /// (defaults: the paper's device; see docs/live-energy.md).
    #[arg(long, default_value = "mains")]
    pub energy: EnergySpec,
    /// Power mode: 15w, 30w, 60w, or dynamic (by battery level: 15 W below 40 %, 30 W below 60 %,
    /// 60 W above). Default dynamic.
    #[arg(long)]
    pub power_mode: Option<PowerModeArg>,
    /// Emulated battery time runs this many times faster than wall time (100 turns a 100 s
    /// slot into 1 s).
    #[arg(long)]
    pub clock_scale: Option<f64>,
}

impl EnergyArgs {
    /// Builds the energy source (starts the emulated battery's clock; needs a tokio runtime).
    pub fn build(&self) -> Result<Box<dyn EnergySource>, EnergySetupError> {
        let mode = self.power_mode.unwrap_or_default();
        match &self.energy {
            EnergySpec::Mains => {
                if self.power_mode.is_some() {
                    return Err(EnergySetupError::NotForMains { flag: "power-mode" });
                }
                if self.clock_scale.is_some() {
                    return Err(EnergySetupError::NotForMains {
                        flag: "clock-scale",
                    });
                }
                Ok(Box::new(Mains))
            }
            EnergySpec::Battery => Ok(Box::new(sysfs::SysBattery::open(
                std::path::Path::new(sysfs::POWER_SUPPLY),
                mode,
            )?)),
            EnergySpec::Emulated(p) => {
                let params: EmulatedParams = p.parse()?;
                Ok(Box::new(emulated::EmulatedSource::start(
                    &params,
                    mode,
                    self.clock_scale.unwrap_or(1.0),
                )?))
            }
        }
    }
}

/// Builds the energy source for a `--energy` value, with the default power mode (dynamic) and
/// real-time clock.
pub fn source(spec: &EnergySpec) -> Result<Box<dyn EnergySource>, EnergySetupError> {
    EnergyArgs {
        energy: spec.clone(),
        power_mode: None,
        clock_scale: None,
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        assert_eq!("mains".parse::<EnergySpec>().unwrap(), EnergySpec::Mains);
        assert_eq!(
            "emulated:capacity=5".parse::<EnergySpec>().unwrap(),
            EnergySpec::Emulated("capacity=5".into())
        );
        assert_eq!(
            "emulated".parse::<EnergySpec>().unwrap(),
            EnergySpec::Emulated(String::new())
        );
        assert!(
            "solar"
                .parse::<EnergySpec>()
                .unwrap_err()
                .to_string()
                .contains("solar")
        );
        assert!(source(&EnergySpec::Mains).unwrap().admit().is_ok());
        let mains_mode = EnergyArgs {
            energy: EnergySpec::Mains,
            power_mode: Some(PowerModeArg::W15),
            clock_scale: None,
        };
        assert!(
            mains_mode
                .build()
                .err()
                .unwrap()
                .to_string()
                .contains("--power-mode")
        );
        let bad = EnergyArgs {
            energy: EnergySpec::Emulated("harvest=7".into()),
            power_mode: None,
            clock_scale: None,
        };
        assert!(bad.build().err().unwrap().to_string().contains("harvest"));
    }

    #[test]
    fn emulated_needs_a_runtime_and_then_starts() {
        let args = EnergyArgs {
            energy: EnergySpec::Emulated("seed=3".into()),
            power_mode: None,
            clock_scale: Some(100.0),
        };
        assert!(matches!(args.build(), Err(EnergySetupError::NoRuntime)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let src = rt.block_on(async { args.build() }).unwrap();
        let s = src.state();
        assert_eq!(s.battery_level, 0.5);
        assert_eq!(
            s.power_mode,
            sunswarm_protocol::PowerSetting::Dynamic { watts: 30 }
        );
        assert!((s.max_job_rate - 0.4284).abs() < 0.01);
        assert!(src.begin_job(16).unwrap().is_paced());
    }

    struct Saving;
    impl EnergySource for Saving {
        fn state(&self) -> EnergyState {
            EnergyState {
                power_saving: true,
                battery_level: 0.1,
                ..EnergyState::mains()
            }
        }
    }

    #[test]
    fn power_saving_refuses_with_reason() {
        assert!(Saving.admit().unwrap_err().contains("10 %"));
        assert!(matches!(Saving.begin_job(4), Err(Refusal::PowerSaving(m)) if m.contains("10 %")));
        assert!(!Mains.begin_job(4).unwrap().is_paced());
    }
}
