//! Block ranges: which contiguous transformer blocks a node serves, and the `--blocks` syntax.
//!
//! On the wire and in code a range is half-open (`start..end`). On the command line `A-B` is
//! inclusive (`0-33` = blocks 0 to 33), `A:B` is half-open (`0:34` = the same blocks), and `all`
//! is every block of the model.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::limits::MAX_BLOCKS;

/// A half-open, non-empty range of block indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRange {
    pub start: u32,
    pub end: u32,
}

/// Why a block range or `--blocks` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlocksError {
    #[error("block range {start}..{end} is empty or reversed")]
    Empty { start: u32, end: u32 },
    #[error("block range {start}..{end} goes past the limit of {max} blocks")]
    TooLarge { start: u32, end: u32, max: u32 },
    #[error("block range {start}..{end} goes past the model's {n_layers} blocks")]
    OutsideModel { start: u32, end: u32, n_layers: u32 },
    #[error("cannot parse block range {0:?}: expected A-B (inclusive), A:B (half-open) or `all`")]
    Syntax(String),
}

impl BlockRange {
    /// A checked half-open range.
    pub fn new(start: u32, end: u32) -> Result<Self, BlocksError> {
        let r = BlockRange { start, end };
        r.validate()?;
        Ok(r)
    }

    /// Checks the invariants a range decoded from the wire must hold.
    pub fn validate(&self) -> Result<(), BlocksError> {
        if self.start >= self.end {
            return Err(BlocksError::Empty {
                start: self.start,
                end: self.end,
            });
        }
        if self.end > MAX_BLOCKS {
            return Err(BlocksError::TooLarge {
                start: self.start,
                end: self.end,
                max: MAX_BLOCKS,
            });
        }
        Ok(())
    }

    /// Checks that the range lies inside a model with `n_layers` blocks.
    pub fn within(&self, n_layers: u32) -> Result<(), BlocksError> {
        self.validate()?;
        if self.end > n_layers {
            return Err(BlocksError::OutsideModel {
                start: self.start,
                end: self.end,
                n_layers,
            });
        }
        Ok(())
    }

    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, block: u32) -> bool {
        (self.start..self.end).contains(&block)
    }

    pub fn as_range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Splits `n_layers` blocks into `parts` contiguous ranges whose sizes differ by at most one
    /// (the larger ones first), as `swarm-testnet up --split even` does.
    pub fn split_even(n_layers: u32, parts: u32) -> Result<Vec<BlockRange>, BlocksError> {
        if parts == 0 || parts > n_layers {
            return Err(BlocksError::Syntax(format!(
                "cannot split {n_layers} blocks into {parts} non-empty parts"
            )));
        }
        let base = n_layers / parts;
        let extra = n_layers % parts;
        let mut out = Vec::with_capacity(parts as usize);
        let mut start = 0;
        for i in 0..parts {
            let len = base + u32::from(i < extra);
            out.push(BlockRange::new(start, start + len)?);
            start += len;
        }
        Ok(out)
    }
}

/// Shown inclusive, the way users type it (`0-9`).
impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end.saturating_sub(1))
    }
}

/// A `--blocks` value before the model's size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSpec {
    All,
    Range(BlockRange),
}

impl BlockSpec {
    /// The concrete range for a model with `n_layers` blocks, refusing ranges outside it.
    pub fn resolve(&self, n_layers: u32) -> Result<BlockRange, BlocksError> {
        match self {
            BlockSpec::All => BlockRange::new(0, n_layers),
            BlockSpec::Range(r) => {
                r.within(n_layers)?;
                Ok(*r)
            }
        }
    }
}

impl FromStr for BlockSpec {
    type Err = BlocksError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(BlockSpec::All);
        }
        let syntax = || BlocksError::Syntax(s.to_string());
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| syntax());
        if let Some((a, b)) = t.split_once(':') {
            return Ok(BlockSpec::Range(BlockRange::new(num(a)?, num(b)?)?));
        }
        if let Some((a, b)) = t.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            let end = b.checked_add(1).ok_or_else(syntax)?;
            if b < a {
                return Err(BlocksError::Empty { start: a, end });
            }
            return Ok(BlockSpec::Range(BlockRange::new(a, end)?));
        }
        Err(syntax())
    }
}

/// Parses a `--split` list (`0-9,10-19,20-29`) into ranges.
pub fn parse_split_list(s: &str) -> Result<Vec<BlockRange>, BlocksError> {
    s.split(',')
        .map(|part| match part.parse::<BlockSpec>()? {
            BlockSpec::Range(r) => Ok(r),
            BlockSpec::All => Err(BlocksError::Syntax(format!(
                "`all` is not allowed inside a list: {s:?}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> BlockRange {
        match s.parse::<BlockSpec>().unwrap() {
            BlockSpec::Range(r) => r,
            BlockSpec::All => panic!("expected a range"),
        }
    }

    #[test]
    fn inclusive_and_half_open_agree() {
        assert_eq!(range("0-33"), BlockRange { start: 0, end: 34 });
        assert_eq!(range("0:34"), BlockRange { start: 0, end: 34 });
        assert_eq!(range(" 5-5 "), BlockRange { start: 5, end: 6 });
        assert_eq!(range("10:11"), BlockRange { start: 10, end: 11 });
    }

    #[test]
    fn all_resolves_to_the_whole_model() {
        assert_eq!("all".parse::<BlockSpec>().unwrap(), BlockSpec::All);
        assert_eq!(
            "ALL".parse::<BlockSpec>().unwrap().resolve(30).unwrap(),
            BlockRange { start: 0, end: 30 }
        );
    }

    #[test]
    fn bad_syntax_is_refused_with_the_input_named() {
        for bad in [
            "",
            "x",
            "1-",
            "-1",
            "1:",
            "3-1",
            "4:4",
            "5:2",
            "1-2-3",
            "a-b",
            "0-4294967295",
            "1..3",
        ] {
            let err = bad.parse::<BlockSpec>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        let err = "x".parse::<BlockSpec>().unwrap_err();
        assert!(err.to_string().contains("\"x\""));
    }

    #[test]
    fn resolve_refuses_ranges_outside_the_model() {
        let spec: BlockSpec = "20-30".parse().unwrap();
        assert_eq!(
            spec.resolve(30).unwrap_err(),
            BlocksError::OutsideModel {
                start: 20,
                end: 31,
                n_layers: 30
            }
        );
        assert_eq!(spec.resolve(31).unwrap(), BlockRange { start: 20, end: 31 });
    }

    #[test]
    fn limit_on_block_count() {
        assert!(BlockRange::new(0, MAX_BLOCKS).is_ok());
        assert!(matches!(
            BlockRange::new(0, MAX_BLOCKS + 1),
            Err(BlocksError::TooLarge { .. })
        ));
    }

    #[test]
    fn display_is_inclusive() {
        assert_eq!(BlockRange { start: 10, end: 20 }.to_string(), "10-19");
    }

    #[test]
    fn even_split_covers_every_block_once() {
        for n in 1..=40u32 {
            for parts in 1..=n {
                let split = BlockRange::split_even(n, parts).unwrap();
                assert_eq!(split.len() as u32, parts);
                assert_eq!(split[0].start, 0);
                assert_eq!(split.last().unwrap().end, n);
                for w in split.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<u32> = split.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
            assert!(BlockRange::split_even(n, 0).is_err());
            assert!(BlockRange::split_even(n, n + 1).is_err());
        }
        assert_eq!(
            BlockRange::split_even(30, 3).unwrap(),
            vec![
                BlockRange { start: 0, end: 10 },
                BlockRange { start: 10, end: 20 },
                BlockRange { start: 20, end: 30 }
            ]
        );
    }

    #[test]
    fn split_list_parses_replicas() {
        let r = parse_split_list("0-9,10-19,10-19,20-29").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[1], r[2]);
        assert!(parse_split_list("0-9,all").is_err());
        assert!(parse_split_list("0-9,,10-19").is_err());
    }
}
