//! A node's energy state and admission decision, behind the interface the energy policies fill.
//! Today only `--energy mains` is built: full battery, never saving, uniform routing weight.
//! `battery` and `emulated:...` are parsed and refused with a clear message until the live
//! energy model is wired in (the energy-in-the-swarm issue).

use std::str::FromStr;

use sunswarm_protocol::EnergyState;

/// `--energy` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnergySpec {
    Mains,
    Battery,
    Emulated(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnergyError {
    #[error("unknown --energy {0:?}: expected mains, battery or emulated:...")]
    Unknown(String),
    #[error("--energy {0} is not supported by this swarm-node yet; use --energy mains")]
    Unsupported(String),
}

impl FromStr for EnergySpec {
    type Err = EnergyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mains" => Ok(EnergySpec::Mains),
            "battery" => Ok(EnergySpec::Battery),
            _ => match s.strip_prefix("emulated:") {
                Some(rest) => Ok(EnergySpec::Emulated(rest.to_string())),
                None => Err(EnergyError::Unknown(s.to_string())),
            },
        }
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
            Err(format!("power saving: battery at {:.0} %", s.battery_level * 100.0))
        } else {
            Ok(())
        }
    }
    /// Called after each job (one forward) with the compute time it took.
    fn on_job(&self, _compute: std::time::Duration) {}
}

/// Wall power: no constraints.
pub struct Mains;

impl EnergySource for Mains {
    fn state(&self) -> EnergyState {
        EnergyState::mains()
    }
}

/// Builds the energy source for a `--energy` value.
pub fn source(spec: &EnergySpec) -> Result<Box<dyn EnergySource>, EnergyError> {
    match spec {
        EnergySpec::Mains => Ok(Box::new(Mains)),
        EnergySpec::Battery => Err(EnergyError::Unsupported("battery".into())),
        EnergySpec::Emulated(p) => Err(EnergyError::Unsupported(format!("emulated:{p}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        assert_eq!("mains".parse::<EnergySpec>().unwrap(), EnergySpec::Mains);
        assert_eq!("emulated:capacity=5".parse::<EnergySpec>().unwrap(), EnergySpec::Emulated("capacity=5".into()));
        assert!("solar".parse::<EnergySpec>().unwrap_err().to_string().contains("solar"));
        assert!(source(&EnergySpec::Mains).unwrap().admit().is_ok());
        let err = source(&EnergySpec::Battery).err().unwrap();
        assert!(err.to_string().contains("battery"));
    }

    struct Saving;
    impl EnergySource for Saving {
        fn state(&self) -> EnergyState {
            EnergyState { power_saving: true, battery_level: 0.1, ..EnergyState::mains() }
        }
    }

    #[test]
    fn power_saving_refuses_with_reason() {
        assert!(Saving.admit().unwrap_err().contains("10 %"));
    }
}
