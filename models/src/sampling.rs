//! Token sampling: greedy argmax, or temperature with nucleus (top-p) truncation drawn from a
//! seeded generator, so that a seed reproduces a generation exactly.
//!
//! A generation's [`Sampler`] hands out one [`Draw`] per token: the temperature, top-p and the
//! generator's state for that token. A draw picks the same token from the same logits wherever
//! it runs, so the client can let the last hop of a route apply the LM head and pick the token
//! (one head product for all the sessions of a pass) and still get what it would pick itself.

use crate::rng::SplitMix64;

/// What picks one token from its logits: everything but the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// The generator's state before this token's draw.
    pub state: u64,
}

impl Draw {
    /// The token this draw picks from `logits`.
    pub fn pick(&self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (((l - max) / self.temperature) as f64).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        if self.top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p.1;
                if acc >= self.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let mut r = SplitMix64(self.state).next_f64() * mass;
        for &(id, p) in &probs {
            if r < p {
                return id;
            }
            r -= p;
        }
        probs.last().map(|p| p.0).unwrap_or(0)
    }

    /// Whether `token` is what this draw picks from `logits` up to a difference of `tolerance`
    /// relative in the logits: the token it picks, or one whose logit is that close to it's
    /// (a near tie that other kernels, rounding a little differently, may break the other way).
    pub fn agrees(&self, logits: &[f32], token: u32, tolerance: f32) -> bool {
        let own = self.pick(logits);
        if own == token {
            return true;
        }
        let (Some(&mine), Some(&theirs)) = (logits.get(own as usize), logits.get(token as usize))
        else {
            return false;
        };
        (mine - theirs).abs() <= tolerance * mine.abs().max(1.0)
    }
}

/// A generation's sequence of draws.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            rng: SplitMix64(seed),
        }
    }

    /// The next token's draw (the generator moves on whether or not it is used).
    pub fn next_draw(&mut self) -> Draw {
        let draw = Draw {
            temperature: self.temperature,
            top_p: self.top_p,
            state: self.rng.0,
        };
        self.rng.next_u64();
        draw
    }

    /// The next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.next_draw().pick(logits)
    }
}

/// Index of the largest logit; the lowest index wins ties, as in the reference implementations,
/// and NaNs are passed over (0 when nothing else is there). Two passes that vectorize (the
/// largest value, then its first place) instead of a compare-and-branch per value: a greedy
/// token was 5 % of a serving client's CPU time over SmolLM2's 49152 logits.
pub fn argmax(logits: &[f32]) -> u32 {
    // Eight running maxima, like one vector register, so that the compiler can vectorize.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(0.0, 1.0, 0);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    /// The plain loop the vectorized argmax replaced.
    fn first_max(logits: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    #[test]
    fn argmax_agrees_with_the_plain_loop_on_ties_nans_and_tails() {
        let mut rng = SplitMix64(5);
        for len in [1, 7, 8, 9, 31, 49152] {
            let mut v: Vec<f32> = (0..len).map(|_| rng.uniform_pm1()).collect();
            assert_eq!(argmax(&v), first_max(&v), "len {len}");
            // A tie for the top place, the later one in the tail.
            let (a, b) = (len / 3, len - 1);
            v[a] = 2.0;
            v[b] = 2.0;
            assert_eq!(argmax(&v), first_max(&v), "tie, len {len}");
            // NaNs are passed over, before and after the maximum. (The plain loop stopped at
            // a NaN in the first place and answered 0.)
            v[b] = f32::NAN;
            if len > 2 {
                v[1] = f32::NAN;
            }
            assert_eq!(argmax(&v), first_max(&v), "NaN, len {len}");
            v[0] = f32::NAN;
            if len > 1 {
                assert_eq!(argmax(&v), a as u32, "NaN first, len {len}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[-0.0, 0.0]), first_max(&[-0.0, 0.0]));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds 0.9 of the mass; top_p 0.5 must always pick it.
        let logits = [5.0f32, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(1.0, 0.5, 42);
        assert!((0..200).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn sampling_follows_the_distribution_and_is_seeded() {
        // Two tokens with probabilities 0.25 / 0.75 at temperature 1.
        let logits = [0.0f32, 3f32.ln()];
        let mut s = Sampler::new(1.0, 1.0, 7);
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count() as f64 / n as f64;
        // Binomial sd = sqrt(.75*.25/n) ~ 0.003; 5 sd leaves a false-alarm rate below 1e-6.
        assert!((ones - 0.75).abs() < 0.016, "{ones}");
        let a: Vec<u32> = {
            let mut s = Sampler::new(1.0, 1.0, 9);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(1.0, 1.0, 9);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn a_draw_picks_anywhere_what_the_sampler_picks() {
        let mut rng = SplitMix64(3);
        let logits: Vec<f32> = (0..1000).map(|_| 4.0 * rng.uniform_pm1()).collect();
        for (t, p) in [(0.0, 1.0), (0.7, 1.0), (1.0, 0.9), (1.3, 0.5)] {
            let mut sampler = Sampler::new(t, p, 11);
            let mut drawer = Sampler::new(t, p, 11);
            let draws: Vec<Draw> = (0..64).map(|_| drawer.next_draw()).collect();
            let picked: Vec<u32> = draws.iter().map(|d| d.pick(&logits)).collect();
            let sampled: Vec<u32> = (0..64).map(|_| sampler.sample(&logits)).collect();
            assert_eq!(picked, sampled, "temperature {t}, top-p {p}");
            if t > 0.0 {
                // Each draw is its own: not all the same token.
                assert!(picked.iter().any(|&x| x != picked[0]), "{picked:?}");
            }
        }
    }

    #[test]
    fn a_draw_agrees_with_near_ties_only() {
        let greedy = Draw {
            temperature: 0.0,
            top_p: 1.0,
            state: 0,
        };
        let logits = [1.0f32, 20.0, 20.0 - 1e-5, 19.0];
        assert!(greedy.agrees(&logits, 1, 1e-3));
        assert!(greedy.agrees(&logits, 2, 1e-3));
        assert!(!greedy.agrees(&logits, 3, 1e-3));
        assert!(!greedy.agrees(&logits, 0, 1e-3));
        assert!(
            !greedy.agrees(&logits, 4, 1e-3),
            "a token outside the vocabulary"
        );
    }
}
