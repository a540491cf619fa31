//! Parallel repetitions: every run gets its own ChaCha generator seeded from (seed, stream, run),
//! results come back in run order, and summaries are summed in that order, so the output is the
//! same for any thread count.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use sunswarm_energy::sim::run_seed;

/// The progress bar on stderr (hidden with `--quiet` or when stderr is not a terminal).
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} runs ({eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Runs `f` for runs `0..runs` of `stream` in parallel; results in run order.
pub fn repeat<T, F>(seed: u64, stream: u64, runs: usize, progress: &Progress, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(&mut ChaCha8Rng) -> T + Sync,
{
    (0..runs)
        .into_par_iter()
        .map(|run| {
            let mut rng = ChaCha8Rng::seed_from_u64(run_seed(seed, stream, run as u64));
            let out = f(&mut rng);
            progress.0.inc(1);
            out
        })
        .collect()
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
}

impl Stat {
    pub fn of(xs: impl IntoIterator<Item = f64>) -> Self {
        let xs: Vec<f64> = xs.into_iter().collect();
        let n = xs.len() as f64;
        if xs.is_empty() {
            return Self {
                mean: f64::NAN,
                sd: f64::NAN,
            };
        }
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            sd: var.sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn stat_is_mean_and_sample_sd() {
        let s = Stat::of([1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert!((s.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of([7.0]).sd, 0.0);
    }

    #[test]
    fn repeat_is_independent_of_thread_count() {
        let p = Progress::new(0, true);
        let draw = |rng: &mut ChaCha8Rng| rng.random::<u64>();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| repeat(9, 3, 200, &p, draw));
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| repeat(9, 3, 200, &p, draw));
        assert_eq!(one, two);
        assert_ne!(one[0], one[1]);
    }
}
