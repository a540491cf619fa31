//! The system model of seed 002 §1 (reconstructed from the DFTSP paper): an edge node serves one
//! pending request per user in *epochs*; each epoch it picks a batch, which is uplinked, computed
//! with static batching (prompts padded to the longest, generation run to the longest output) and
//! downlinked. A batch is feasible when the weights plus its peak KV cache fit in memory, every
//! member tolerates the quantization's perplexity, and every member's latency meets its deadline.
//!
//! Two communication models: *fixed* (a measured `comm_s` per request, the Sunswarm form, where
//! a member's latency is `comm_s + T_C`), and *FDMA* (the band is shared among the batch, each
//! phase lasts the least time in which every member can send its bits, and the latency
//! `T_U + T_C + T_D` is common to the batch). FDMA phases are found with the seed's nested
//! bisection; [`fdma_identical`] is the closed form for identical users that checks it.
//!
//! Adding a request never decreases `b`, `S`, `N`, so never decreases any time or memory term and
//! never relaxes a deadline: the feasibility test is monotone, as DFTSP needs.

use serde::{Deserialize, Serialize};

use crate::DEADLINE_EPSILON;
use crate::error::{BatchError, Result, non_negative, not_nan, positive};
use crate::search::{
    self, Baseline, Candidate, SearchConfig, Selection, TraceEvent, brute_force, dftsp,
    dftsp_traced,
};

/// A decoder-only transformer, as far as cost is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decoder {
    /// `L`: layers.
    pub layers: u64,
    /// `h`: hidden size.
    pub hidden: u64,
}

/// FLOPs of one statically batched epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flops {
    /// `F_pre = L (24 b S h^2 + 4 b S^2 h)`.
    pub prefill: u128,
    /// `F_dec = L (24 b h^2 N + 4 b h (S N + N (N+1) / 2))`: decode step i attends `S + i` tokens.
    pub decode: u128,
}

impl Flops {
    /// `F_pre + F_dec`.
    pub fn total(&self) -> u128 {
        self.prefill.saturating_add(self.decode)
    }
}

// Integer arithmetic keeps D1's FLOP counts exact; saturation turns absurd inputs into a cost no
// budget admits instead of a wrapped, small one.
fn mul(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(f))
}

impl Decoder {
    /// A decoder with `layers` layers of width `hidden`.
    pub const fn new(layers: u64, hidden: u64) -> Self {
        Self { layers, hidden }
    }

    /// `P = 12 L h^2` (embeddings ignored).
    pub fn parameters(&self) -> u128 {
        mul(&[
            12,
            self.layers.into(),
            self.hidden.into(),
            self.hidden.into(),
        ])
    }

    /// FLOPs of a batch of `batch` requests padded to `prompt` tokens, generating `generate`.
    pub fn flops(&self, batch: u64, prompt: u64, generate: u64) -> Flops {
        let (l, h, b, s, n) = (
            u128::from(self.layers),
            u128::from(self.hidden),
            u128::from(batch),
            u128::from(prompt),
            u128::from(generate),
        );
        let prefill = mul(&[l, 24, b, s, h, h]).saturating_add(mul(&[l, 4, b, s, s, h]));
        // n (n + 1) is even, so halving it is exact.
        let triangle = mul(&[n, n.saturating_add(1)]) / 2;
        let attended = mul(&[s, n]).saturating_add(triangle);
        let decode = mul(&[l, 24, b, h, h, n]).saturating_add(mul(&[l, 4, b, h, attended]));
        Flops { prefill, decode }
    }

    /// `M_w = P w_q / 8` bytes.
    pub fn weight_bytes(&self, quant: &Quantization) -> u128 {
        mul(&[self.parameters(), quant.weight_bits.into()]) / 8
    }

    /// Peak KV cache `M_kv = 2 L h b (S + N) kv_q / 8` bytes.
    pub fn kv_bytes(&self, quant: &Quantization, batch: u64, prompt: u64, generate: u64) -> u128 {
        let tokens = u128::from(prompt).saturating_add(generate.into());
        mul(&[
            2,
            self.layers.into(),
            self.hidden.into(),
            batch.into(),
            tokens,
            quant.kv_bits.into(),
        ]) / 8
    }
}

/// A quantization method `q`: weight and KV-cache bits, effective compute and accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// A label for reports ("FP16", "W8A8"...).
    pub name: String,
    /// `w_q`: bits per weight.
    pub weight_bits: u32,
    /// `kv_q`: bits per KV-cache value.
    pub kv_bits: u32,
    /// `C_q`: effective compute, FLOP/s.
    pub flops_per_s: f64,
    /// `PPL_q`: perplexity; lower is better.
    pub perplexity: f64,
}

impl Quantization {
    /// A validated quantization: compute must be positive and finite, perplexity not NaN.
    pub fn new(
        name: impl Into<String>,
        weight_bits: u32,
        kv_bits: u32,
        flops_per_s: f64,
        perplexity: f64,
    ) -> Result<Self> {
        let q = Self {
            name: name.into(),
            weight_bits,
            kv_bits,
            flops_per_s,
            perplexity,
        };
        q.validate()?;
        Ok(q)
    }

    fn validate(&self) -> Result<()> {
        positive("quantization flops_per_s", self.flops_per_s)?;
        not_nan("quantization perplexity", self.perplexity)
    }

    /// Seed §7's illustrative FP16: 16-bit weights and KV, 1e14 FLOP/s, perplexity 5.47.
    pub fn fp16_example() -> Self {
        Self {
            name: "FP16".into(),
            weight_bits: 16,
            kv_bits: 16,
            flops_per_s: 1e14,
            perplexity: 5.47,
        }
    }

    /// Seed §7's illustrative W8A8: 8-bit weights and KV, 2e14 FLOP/s, perplexity 5.50.
    pub fn w8a8_example() -> Self {
        Self {
            name: "W8A8".into(),
            weight_bits: 8,
            kv_bits: 8,
            flops_per_s: 2e14,
            perplexity: 5.50,
        }
    }

    /// Seed §7's illustrative W4A16: 4-bit weights, 16-bit KV, 1e14 FLOP/s, perplexity 5.68.
    pub fn w4a16_example() -> Self {
        Self {
            name: "W4A16".into(),
            weight_bits: 4,
            kv_bits: 16,
            flops_per_s: 1e14,
            perplexity: 5.68,
        }
    }
}

/// One user's pending request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// `s_k`: prompt tokens.
    pub prompt_tokens: u64,
    /// `n_k`: tokens to generate; also the request's value (tokens this epoch).
    pub generate_tokens: u64,
    /// `tau_k`: latency requirement, seconds.
    pub deadline_s: f64,
    /// `rho_k`: the largest perplexity the user accepts; `f64::INFINITY` for any.
    pub max_perplexity: f64,
    /// SNR with the whole band, dB (FDMA model only).
    pub snr_db: f64,
    /// Measured time to receive the input and send the output, seconds (fixed model only).
    pub comm_s: f64,
}

impl Request {
    /// A request with no accuracy floor, 0 dB SNR and no communication time.
    pub fn new(prompt_tokens: u64, generate_tokens: u64, deadline_s: f64) -> Self {
        Self {
            prompt_tokens,
            generate_tokens,
            deadline_s,
            max_perplexity: f64::INFINITY,
            snr_db: 0.0,
            comm_s: 0.0,
        }
    }

    /// Sets the fixed communication time.
    pub fn with_comm(mut self, comm_s: f64) -> Self {
        self.comm_s = comm_s;
        self
    }

    /// Sets the accuracy requirement.
    pub fn with_max_perplexity(mut self, max_perplexity: f64) -> Self {
        self.max_perplexity = max_perplexity;
        self
    }

    /// Sets the SNR.
    pub fn with_snr_db(mut self, snr_db: f64) -> Self {
        self.snr_db = snr_db;
        self
    }

    fn validate(&self) -> Result<()> {
        not_nan("request deadline_s", self.deadline_s)?;
        not_nan("request max_perplexity", self.max_perplexity)?;
        // Infinite SNRs are fine: +inf dB sends anything at once, -inf dB never gets through.
        not_nan("request snr_db", self.snr_db)?;
        non_negative("request comm_s", self.comm_s)
    }
}

/// How the uplink and downlink phases are costed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CommModel {
    /// Each request carries its own measured `comm_s`; its latency is `comm_s + T_C`.
    Fixed,
    /// One band per direction shared by FDMA; latency `T_U + T_C + T_D`, common to the batch.
    Fdma {
        /// `W`, Hz per direction.
        bandwidth_hz: f64,
        /// `theta_up`: bits per prompt token.
        up_bits_per_token: f64,
        /// `theta_down`: bits per generated token.
        down_bits_per_token: f64,
    },
}

/// The edge node: its model, its memory and its links.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgeNode {
    /// The hosted decoder.
    pub decoder: Decoder,
    /// `M_cap`, bytes.
    pub memory_bytes: u64,
    /// Communication model.
    pub comm: CommModel,
}

/// Everything the cost model says about one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCost {
    /// `b`.
    pub size: u64,
    /// `S`: longest prompt.
    pub max_prompt: u64,
    /// `N`: longest output.
    pub max_generate: u64,
    /// FLOPs.
    pub flops: Flops,
    /// `T_C`, seconds.
    pub compute_s: f64,
    /// `T_U`, seconds (0 in the fixed model).
    pub uplink_s: f64,
    /// `T_D`, seconds (0 in the fixed model).
    pub downlink_s: f64,
    /// `M_w + M_kv`, bytes.
    pub memory_bytes: u128,
    /// Latency of each member, in the order of the batch given.
    pub latency_s: Vec<f64>,
}

/// One epoch's scheduling problem at one quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    node: EdgeNode,
    quant: Quantization,
    requests: Vec<Request>,
}

impl Epoch {
    /// A validated problem.
    pub fn new(node: EdgeNode, quant: Quantization, requests: Vec<Request>) -> Result<Self> {
        quant.validate()?;
        if let CommModel::Fdma {
            bandwidth_hz,
            up_bits_per_token,
            down_bits_per_token,
        } = node.comm
        {
            positive("FDMA bandwidth_hz", bandwidth_hz)?;
            non_negative("FDMA up_bits_per_token", up_bits_per_token)?;
            non_negative("FDMA down_bits_per_token", down_bits_per_token)?;
        }
        for r in &requests {
            r.validate()?;
        }
        Ok(Self {
            node,
            quant,
            requests,
        })
    }

    /// The node.
    pub fn node(&self) -> &EdgeNode {
        &self.node
    }

    /// The quantization.
    pub fn quantization(&self) -> &Quantization {
        &self.quant
    }

    /// The requests; their indices are the ids the searches use.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// Cost of a batch of request ids (duplicates count twice; an empty batch costs nothing).
    pub fn cost(&self, batch: &[usize]) -> Result<BatchCost> {
        Ok(self.cost_of(&self.members(batch)?))
    }

    /// Constraints C1-C4 of seed §2. Out-of-range ids make a batch infeasible.
    pub fn feasible(&self, batch: &[usize]) -> bool {
        let Ok(members) = self.members(batch) else {
            return false;
        };
        // Memory and accuracy first: they are cheap, and FDMA's bisections are not.
        let (size, s, n) = shape(&members);
        if self.memory(size, s, n) > u128::from(self.node.memory_bytes) {
            return false;
        }
        if members
            .iter()
            .any(|r| self.quant.perplexity > r.max_perplexity)
        {
            return false;
        }
        let cost = self.cost_of(&members);
        members
            .iter()
            .zip(&cost.latency_s)
            .all(|(r, &latency)| latency <= r.deadline_s + DEADLINE_EPSILON)
    }

    fn members(&self, batch: &[usize]) -> Result<Vec<&Request>> {
        batch
            .iter()
            .map(|&i| {
                self.requests.get(i).ok_or(BatchError::IndexOutOfRange {
                    index: i,
                    len: self.requests.len(),
                })
            })
            .collect()
    }

    fn memory(&self, size: u64, prompt: u64, generate: u64) -> u128 {
        let d = &self.node.decoder;
        d.weight_bytes(&self.quant)
            .saturating_add(d.kv_bytes(&self.quant, size, prompt, generate))
    }

    fn cost_of(&self, members: &[&Request]) -> BatchCost {
        let (size, max_prompt, max_generate) = shape(members);
        let flops = self.node.decoder.flops(size, max_prompt, max_generate);
        let compute_s = flops.total() as f64 / self.quant.flops_per_s;
        let (uplink_s, downlink_s, latency_s) = match self.node.comm {
            CommModel::Fixed => (
                0.0,
                0.0,
                members.iter().map(|r| r.comm_s + compute_s).collect(),
            ),
            CommModel::Fdma {
                bandwidth_hz,
                up_bits_per_token,
                down_bits_per_token,
            } if !members.is_empty() => {
                let snr: Vec<f64> = members.iter().map(|r| db_to_linear(r.snr_db)).collect();
                let bits = |per_token: f64, tokens: fn(&Request) -> u64| -> Vec<f64> {
                    members
                        .iter()
                        .map(|r| tokens(r) as f64 * per_token)
                        .collect()
                };
                let t_u = fdma_phase(
                    &bits(up_bits_per_token, |r| r.prompt_tokens),
                    &snr,
                    bandwidth_hz,
                );
                let t_d = fdma_phase(
                    &bits(down_bits_per_token, |r| r.generate_tokens),
                    &snr,
                    bandwidth_hz,
                );
                (t_u, t_d, vec![t_u + compute_s + t_d; members.len()])
            }
            CommModel::Fdma { .. } => (0.0, 0.0, Vec::new()),
        };
        BatchCost {
            size,
            max_prompt,
            max_generate,
            flops,
            compute_s,
            uplink_s,
            downlink_s,
            memory_bytes: self.memory(size, max_prompt, max_generate),
            latency_s,
        }
    }

    /// The requests as search candidates: value `n_k`, deadline `tau_k`, arrival = id, size
    /// `s_k + n_k`.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.requests
            .iter()
            .enumerate()
            .map(|(id, r)| Candidate {
                value: r.generate_tokens,
                deadline: r.deadline_s,
                arrival: id as u64,
                size: r.prompt_tokens.saturating_add(r.generate_tokens),
            })
            .collect()
    }

    /// DFTSP on this epoch.
    pub fn dftsp(&self, config: &SearchConfig) -> Result<Selection> {
        dftsp(&self.candidates(), config, |b| self.feasible(b))
    }

    /// DFTSP with its trace.
    pub fn dftsp_traced(&self, config: &SearchConfig) -> Result<(Selection, Vec<TraceEvent>)> {
        dftsp_traced(&self.candidates(), config, |b| self.feasible(b))
    }

    /// Brute force on this epoch.
    pub fn brute_force(&self) -> Result<Selection> {
        brute_force(&self.candidates(), |b| self.feasible(b))
    }

    /// A greedy baseline on this epoch.
    pub fn baseline(&self, kind: Baseline) -> Result<Selection> {
        search::greedy(&self.candidates(), kind, |b| self.feasible(b))
    }
}

/// The result of solving an epoch once per quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantChoice {
    /// Index of the best quantization (the first one among equals).
    pub best: usize,
    /// DFTSP's selection for each quantization, in the order given.
    pub per_quantization: Vec<Selection>,
}

/// Seed §2: the node solves the problem once per available quantization and keeps the best.
pub fn best_quantization(
    node: EdgeNode,
    quantizations: &[Quantization],
    requests: &[Request],
    config: &SearchConfig,
) -> Result<QuantChoice> {
    if quantizations.is_empty() {
        return Err(BatchError::NoQuantization);
    }
    let mut per_quantization = Vec::with_capacity(quantizations.len());
    let mut best = 0;
    for (i, q) in quantizations.iter().enumerate() {
        let sel = Epoch::new(node, q.clone(), requests.to_vec())?.dftsp(config)?;
        if sel.value
            > per_quantization
                .get(best)
                .map_or(0, |s: &Selection| s.value)
        {
            best = i;
        }
        per_quantization.push(sel);
    }
    Ok(QuantChoice {
        best,
        per_quantization,
    })
}

/// `(b, S, N)` of a batch.
fn shape(members: &[&Request]) -> (u64, u64, u64) {
    (
        members.len() as u64,
        members.iter().map(|r| r.prompt_tokens).max().unwrap_or(0),
        members.iter().map(|r| r.generate_tokens).max().unwrap_or(0),
    )
}

/// `10^(dB/10)`.
pub fn db_to_linear(db: f64) -> f64 {
    10f64.powf(db / 10.0)
}

/// Rate of a user with band fraction `beta` of `bandwidth_hz` and whole-band SNR `snr`: its power
/// is spread over `beta W`, so `beta W log2(1 + snr / beta)` bit/s.
fn rate(beta: f64, snr: f64, bandwidth_hz: f64) -> f64 {
    beta * bandwidth_hz * (1.0 + snr / beta).log2()
}

/// Doublings before giving up on bracketing; f64 overflows after ~1024 anyway.
const MAX_DOUBLINGS: u32 = 2_100;
/// The seed's bisection steps; the loops stop earlier once the interval stops shrinking in f64,
/// which returns exactly what the remaining no-op steps would.
const BISECTION_STEPS: u32 = 200;

/// The least band fraction with which a user sends `bits` in `seconds`; infinite when no fraction
/// suffices (the rate tends to `W snr / ln 2` as the fraction grows).
fn band_fraction(bits: f64, snr: f64, seconds: f64, bandwidth_hz: f64) -> f64 {
    let target = bits / seconds;
    if target.is_nan() || target >= bandwidth_hz * snr / std::f64::consts::LN_2 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut doublings = 0;
    while rate(hi, snr, bandwidth_hz) < target {
        hi *= 2.0;
        doublings += 1;
        if doublings > MAX_DOUBLINGS {
            return f64::INFINITY;
        }
    }
    for _ in 0..BISECTION_STEPS {
        let mid = (lo + hi) / 2.0;
        if mid <= lo || mid >= hi {
            break;
        }
        if rate(mid, snr, bandwidth_hz) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The least phase duration `T` with `sum_k beta_k(T) <= 1` (seed §1), by the seed's nested
/// bisection: `bits[k]` to send by a user of whole-band SNR `snr[k]` (linear). Infinite when the
/// lengths differ, the bandwidth is not positive, or no duration is found.
pub fn fdma_phase(bits: &[f64], snr: &[f64], bandwidth_hz: f64) -> f64 {
    if bits.len() != snr.len() || bandwidth_hz.is_nan() || bandwidth_hz <= 0.0 {
        return f64::INFINITY;
    }
    let load = |t: f64| -> f64 {
        bits.iter()
            .zip(snr)
            .map(|(&d, &g)| band_fraction(d, g, t, bandwidth_hz))
            .sum()
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut doublings = 0;
    // A NaN load counts as too much: keep doubling.
    while matches!(
        load(hi).partial_cmp(&1.0),
        Some(std::cmp::Ordering::Greater) | None
    ) {
        hi *= 2.0;
        doublings += 1;
        if doublings > MAX_DOUBLINGS || !hi.is_finite() {
            return f64::INFINITY;
        }
    }
    for _ in 0..BISECTION_STEPS {
        let mid = (lo + hi) / 2.0;
        if mid <= lo || mid >= hi {
            break;
        }
        if load(mid) > 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Closed form for `users` identical users (same bits, same linear SNR): each gets `1/users` of the
/// band and `T = users * bits / (W log2(1 + users * snr))`.
pub fn fdma_identical(users: u64, bits: f64, snr: f64, bandwidth_hz: f64) -> f64 {
    let k = users as f64;
    k * bits / (bandwidth_hz * (1.0 + k * snr).log2())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::TraceAction;

    const GIB: u64 = 1 << 30;
    const LLAMA7B: Decoder = Decoder::new(32, 4096);

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Seed §7's eight requests; ids in the seed are these indices + 1.
    fn d2_requests() -> Vec<Request> {
        let s = [512, 1024, 512, 1024, 64, 1024, 64, 64];
        let n = [256, 256, 128, 64, 512, 64, 128, 128];
        let tau = [0.5, 2.0, 3.0, 1.5, 1.5, 1.5, 2.0, 2.0];
        let comm = [0.10, 0.10, 0.05, 0.05, 0.20, 0.05, 0.20, 0.10];
        (0..8)
            .map(|i| Request::new(s[i], n[i], tau[i]).with_comm(comm[i]))
            .collect()
    }

    fn d3_requests() -> Vec<Request> {
        let rho = [6.0, 5.5, 6.0, 5.6, 6.0, 6.0, 5.5, 6.0];
        let snr = [20.0, 10.0, 10.0, 5.0, 20.0, 10.0, 5.0, 20.0];
        d2_requests()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Request { comm_s: 0.0, ..r }
                    .with_max_perplexity(rho[i])
                    .with_snr_db(snr[i])
            })
            .collect()
    }

    fn fdma() -> CommModel {
        CommModel::Fdma {
            bandwidth_hz: 200e3,
            up_bits_per_token: 32.0,
            down_bits_per_token: 32.0,
        }
    }

    /// Seed ids (1-based) of request indices.
    fn ids(indices: &[usize]) -> Vec<usize> {
        indices.iter().map(|i| i + 1).collect()
    }

    #[test]
    fn d1_cost_model() {
        assert_eq!(LLAMA7B.parameters(), 6_442_450_944);
        let f = LLAMA7B.flops(2, 200, 100);
        assert_eq!(f.prefill, 5_195_903_795_200);
        assert_eq!(f.decode, 2_603_247_206_400);
        assert_eq!(f.total(), 7_799_151_001_600);

        let (fp16, w8, w4) = (
            Quantization::fp16_example(),
            Quantization::w8a8_example(),
            Quantization::w4a16_example(),
        );
        let t = |q: &Quantization| f.total() as f64 / q.flops_per_s;
        assert!(close(t(&fp16), 0.077991510016, 1e-15));
        assert!(close(t(&w4), 0.077991510016, 1e-15));
        assert!(close(t(&w8), 0.038995755008, 1e-15));

        assert_eq!(LLAMA7B.weight_bytes(&fp16), 12_884_901_888);
        assert_eq!(LLAMA7B.weight_bytes(&fp16), 12 * u128::from(GIB));
        assert_eq!(LLAMA7B.weight_bytes(&w8), 6_442_450_944);
        assert_eq!(LLAMA7B.weight_bytes(&w4), 3_221_225_472);
        assert_eq!(LLAMA7B.kv_bytes(&fp16, 2, 200, 100), 314_572_800);
        assert_eq!(LLAMA7B.kv_bytes(&w8, 2, 200, 100), 157_286_400);

        // The same through an Epoch: b, S, N of the two requests.
        let node = EdgeNode {
            decoder: LLAMA7B,
            memory_bytes: 16 * GIB,
            comm: CommModel::Fixed,
        };
        let reqs = vec![Request::new(100, 50, 1.0), Request::new(200, 100, 1.0)];
        let cost = Epoch::new(node, fp16, reqs).unwrap().cost(&[0, 1]).unwrap();
        assert_eq!(
            (cost.size, cost.max_prompt, cost.max_generate),
            (2, 200, 100)
        );
        assert_eq!(cost.flops, f);
        assert_eq!(cost.memory_bytes, 12_884_901_888 + 314_572_800);
    }

    #[test]
    fn d1_fdma_bisection_matches_the_closed_form() {
        let snr = db_to_linear(10.0);
        let closed = fdma_identical(3, 32_768.0, snr, 200e3);
        assert!(close(closed, 0.099213, 1e-6), "{closed}");
        let bisected = fdma_phase(&[32_768.0; 3], &[snr; 3], 200e3);
        assert!(close(bisected, closed, 1e-6), "{bisected} vs {closed}");
    }

    #[test]
    fn fdma_degenerate_inputs_are_infinite_not_panics() {
        assert_eq!(fdma_phase(&[1.0], &[1.0, 2.0], 1e3), f64::INFINITY);
        assert_eq!(fdma_phase(&[1.0], &[1.0], 0.0), f64::INFINITY);
        assert_eq!(fdma_phase(&[1.0], &[1.0], f64::NAN), f64::INFINITY);
        // No SNR: no rate at any band fraction, so no duration suffices.
        assert_eq!(fdma_phase(&[1.0], &[0.0], 1e3), f64::INFINITY);
        // Nothing to send takes (next to) no time.
        assert!(fdma_phase(&[0.0, 0.0], &[1.0, 1.0], 1e3) < 1e-9);
    }

    fn d2_epoch() -> Epoch {
        let node = EdgeNode {
            decoder: LLAMA7B,
            memory_bytes: 16 * GIB,
            comm: CommModel::Fixed,
        };
        Epoch::new(node, Quantization::fp16_example(), d2_requests()).unwrap()
    }

    #[test]
    fn d2_optimum_and_its_costs() {
        let epoch = d2_epoch();
        let batch = [1, 2, 4, 6, 7]; // seed ids 2, 3, 5, 7, 8
        assert!(epoch.feasible(&batch));
        let cost = epoch.cost(&batch).unwrap();
        assert_eq!(
            (cost.size, cost.max_prompt, cost.max_generate),
            (5, 1024, 512)
        );
        assert!(close(cost.compute_s, 1.034235, 1e-6), "{}", cost.compute_s);
        assert_eq!(
            cost.memory_bytes,
            15 * u128::from(GIB) + u128::from(GIB) * 3 / 4
        );
        let want = [1.134235, 1.084235, 1.234235, 1.234235, 1.134235];
        for (got, want) in cost.latency_s.iter().zip(want) {
            assert!(close(*got, want, 1e-6), "{got} vs {want}");
        }
        // Adding any of 1, 4, 6 needs 16.5 GiB, and 1 also breaks its 0.5 s.
        for extra in [0, 3, 5] {
            let mut bigger = batch.to_vec();
            bigger.push(extra);
            let cost = epoch.cost(&bigger).unwrap();
            assert_eq!(
                cost.memory_bytes,
                16 * u128::from(GIB) + u128::from(GIB) / 2
            );
            assert!(!epoch.feasible(&bigger));
        }
    }

    #[test]
    fn d2_dftsp_search_and_trace() {
        let epoch = d2_epoch();
        let (sel, trace) = epoch.dftsp_traced(&SearchConfig::default()).unwrap();
        assert_eq!(ids(&sel.chosen), vec![2, 3, 5, 7, 8]);
        assert_eq!(sel.value, 1152);
        assert_eq!(sel.rejected, Vec::<usize>::new());
        assert_eq!(sel.stats.nodes, 21);
        assert_eq!(sel.stats.oracle_calls, 21);
        assert!(!sel.stats.capped);
        assert_eq!(trace.len(), 21);

        let row = |e: &TraceEvent| {
            let action = match e.action {
                TraceAction::Include { item, feasible } => {
                    format!(
                        "try {} {}",
                        item + 1,
                        if feasible { "ok" } else { "infeasible" }
                    )
                }
                TraceAction::Leaf => "leaf".into(),
                TraceAction::BoundPrune => "prune".into(),
            };
            (e.depth, ids(&e.batch), e.value, action)
        };
        let rows: Vec<_> = trace.iter().map(row).collect();
        let r = |d: usize, b: &[usize], v: u64, a: &str| (d, b.to_vec(), v, a.to_string());
        // The seed's trace: the {5, 1} branch fails at every level down to its leaf...
        assert_eq!(rows[0], r(0, &[], 0, "try 5 ok"));
        assert_eq!(rows[1], r(1, &[5], 512, "try 1 ok"));
        assert_eq!(rows[2], r(2, &[5, 1], 768, "try 2 infeasible"));
        for (i, item) in [7, 8, 3, 4, 6].into_iter().enumerate() {
            assert_eq!(
                rows[3 + i],
                r(3 + i, &[5, 1], 768, &format!("try {item} infeasible"))
            );
        }
        assert_eq!(rows[8], r(8, &[5, 1], 768, "leaf"));
        // ...then excluding 1 finds the optimum...
        assert_eq!(rows[9], r(2, &[5], 512, "try 2 ok"));
        assert_eq!(rows[10], r(3, &[5, 2], 768, "try 7 ok"));
        assert_eq!(rows[11], r(4, &[5, 2, 7], 896, "try 8 ok"));
        assert_eq!(rows[12], r(5, &[5, 2, 7, 8], 1024, "try 3 ok"));
        assert_eq!(rows[13], r(6, &[5, 2, 7, 8, 3], 1152, "try 4 infeasible"));
        assert_eq!(rows[14], r(7, &[5, 2, 7, 8, 3], 1152, "try 6 infeasible"));
        assert_eq!(rows[15], r(8, &[5, 2, 7, 8, 3], 1152, "leaf"));
        // ...and five bound prunes close the tree.
        assert_eq!(rows[16], r(6, &[5, 2, 7, 8], 1024, "prune"));
        assert_eq!(rows[17], r(5, &[5, 2, 7], 896, "prune"));
        assert_eq!(rows[18], r(4, &[5, 2], 768, "prune"));
        assert_eq!(rows[19], r(3, &[5], 512, "prune"));
        assert_eq!(rows[20], r(1, &[], 0, "prune"));
    }

    #[test]
    fn d2_brute_force_and_baselines() {
        let epoch = d2_epoch();
        let bf = epoch.brute_force().unwrap();
        assert_eq!((ids(&bf.chosen), bf.value), (vec![2, 3, 5, 7, 8], 1152));
        assert_eq!(bf.stats.oracle_calls, 255);
        let base = |kind| {
            let s = epoch.baseline(kind).unwrap();
            (s.value, ids(&s.chosen))
        };
        assert_eq!(base(Baseline::Fcfs), (512, vec![1, 2]));
        assert_eq!(base(Baseline::Edf), (320, vec![1, 4]));
        assert_eq!(base(Baseline::ShortestJobFirst), (960, vec![3, 4, 5, 7, 8]));
        assert_eq!(base(Baseline::ValueGreedy), (768, vec![1, 5]));
    }

    #[test]
    fn d2_optimum_is_unique() {
        let epoch = d2_epoch();
        let optima: Vec<u64> = (1u32..256)
            .filter_map(|mask| {
                let batch: Vec<usize> = (0..8).filter(|i| mask & (1 << i) != 0).collect();
                let value: u64 = batch
                    .iter()
                    .map(|&i| epoch.requests()[i].generate_tokens)
                    .sum();
                (epoch.feasible(&batch) && value == 1152).then_some(u64::from(mask))
            })
            .collect();
        assert_eq!(optima.len(), 1);
    }

    fn d3_epoch(quant: Quantization, memory_gib: u64) -> Epoch {
        let node = EdgeNode {
            decoder: LLAMA7B,
            memory_bytes: memory_gib * GIB,
            comm: fdma(),
        };
        Epoch::new(node, quant, d3_requests()).unwrap()
    }

    #[test]
    fn d3_fp16_fits_nothing_in_10_gib() {
        let sel = d3_epoch(Quantization::fp16_example(), 10)
            .dftsp(&SearchConfig::default())
            .unwrap();
        assert_eq!(sel.value, 0);
        assert!(sel.chosen.is_empty());
        assert_eq!(sel.rejected, (0..8).collect::<Vec<_>>());
        assert_eq!((sel.stats.nodes, sel.stats.oracle_calls), (1, 8));
    }

    #[test]
    fn d3_w8a8() {
        let epoch = d3_epoch(Quantization::w8a8_example(), 10);
        let sel = epoch.dftsp(&SearchConfig::default()).unwrap();
        assert_eq!(
            (ids(&sel.chosen), sel.value),
            (vec![2, 3, 4, 5, 6, 7, 8], 1280)
        );
        assert_eq!((sel.stats.nodes, sel.stats.oracle_calls), (39, 31));
        let cost = epoch.cost(&sel.chosen).unwrap();
        assert!(close(cost.uplink_s, 0.127651, 1e-5), "{}", cost.uplink_s);
        assert!(close(cost.compute_s, 0.723964, 1e-6), "{}", cost.compute_s);
        assert!(
            close(cost.downlink_s, 0.030287, 1e-5),
            "{}",
            cost.downlink_s
        );
        assert!(
            close(cost.latency_s[0], 0.881902, 1e-5),
            "{}",
            cost.latency_s[0]
        );
        assert!(cost.latency_s.iter().all(|&l| l <= 1.5));
        assert_eq!(
            cost.memory_bytes,
            8 * u128::from(GIB) + u128::from(GIB) * 5 / 8
        );
        // Unique: brute force finds the same batch and no other reaches 1280.
        let bf = epoch.brute_force().unwrap();
        assert_eq!((bf.chosen, bf.value), (sel.chosen, 1280));
    }

    #[test]
    fn d3_w4a16() {
        let epoch = d3_epoch(Quantization::w4a16_example(), 10);
        let sel = epoch.dftsp(&SearchConfig::default()).unwrap();
        assert_eq!((ids(&sel.chosen), sel.value), (vec![1, 5, 8], 896));
        // C3 excludes 2, 4, 7 (5.68 > rho) in the prefilter.
        assert_eq!(ids(&sel.rejected), vec![2, 4, 7]);
        // Not in the seed; from its reference code run on the same input.
        assert_eq!((sel.stats.nodes, sel.stats.oracle_calls), (12, 14));
        let cost = epoch.cost(&sel.chosen).unwrap();
        assert!(close(cost.uplink_s, 0.013871, 1e-5), "{}", cost.uplink_s);
        assert!(close(cost.compute_s, 0.406136, 1e-6), "{}", cost.compute_s);
        assert!(
            close(cost.downlink_s, 0.018036, 1e-5),
            "{}",
            cost.downlink_s
        );
        assert!(
            close(cost.latency_s[0], 0.438043, 1e-5),
            "{}",
            cost.latency_s[0]
        );
        // The other optimum the seed names is feasible and worth the same.
        assert!(epoch.feasible(&[0, 2, 4]));
        let other: u64 = [0, 2, 4]
            .iter()
            .map(|&i| epoch.requests()[i].generate_tokens)
            .sum();
        assert_eq!(other, 896);
    }

    #[test]
    fn d3_best_quantization() {
        let node = |gib| EdgeNode {
            decoder: LLAMA7B,
            memory_bytes: gib * GIB,
            comm: fdma(),
        };
        let quants = [
            Quantization::fp16_example(),
            Quantization::w8a8_example(),
            Quantization::w4a16_example(),
        ];
        let values = |c: &QuantChoice| {
            c.per_quantization
                .iter()
                .map(|s| s.value)
                .collect::<Vec<_>>()
        };
        let choice =
            best_quantization(node(10), &quants, &d3_requests(), &SearchConfig::default()).unwrap();
        assert_eq!(choice.best, 1);
        assert_eq!(values(&choice), vec![0, 1280, 896]);
        // With 16 GiB FP16 fits, with 1152 on {2, 3, 5, 7, 8}, still below W8A8.
        let choice =
            best_quantization(node(16), &quants, &d3_requests(), &SearchConfig::default()).unwrap();
        assert_eq!(choice.best, 1);
        assert_eq!(choice.per_quantization[0].value, 1152);
        assert_eq!(ids(&choice.per_quantization[0].chosen), vec![2, 3, 5, 7, 8]);
        let fp16 = d3_epoch(Quantization::fp16_example(), 16);
        let latency = fp16
            .cost(&choice.per_quantization[0].chosen)
            .unwrap()
            .latency_s[0];
        assert!(close(latency, 1.122066, 1e-5), "{latency}");
        assert_eq!(
            best_quantization(node(16), &[], &d3_requests(), &SearchConfig::default()),
            Err(BatchError::NoQuantization)
        );
    }

    #[test]
    fn invalid_inputs_are_typed_errors() {
        let node = EdgeNode {
            decoder: LLAMA7B,
            memory_bytes: GIB,
            comm: CommModel::Fixed,
        };
        let nan = Request::new(1, 1, f64::NAN);
        assert_eq!(
            Epoch::new(node, Quantization::fp16_example(), vec![nan]),
            Err(BatchError::NotANumber {
                what: "request deadline_s"
            })
        );
        assert!(matches!(
            Quantization::new("x", 16, 16, 0.0, 5.0),
            Err(BatchError::NotPositive { .. })
        ));
        let bad_comm = Request::new(1, 1, 1.0).with_comm(-1.0);
        assert!(matches!(
            Epoch::new(node, Quantization::fp16_example(), vec![bad_comm]),
            Err(BatchError::Negative { .. })
        ));
        let epoch = Epoch::new(node, Quantization::fp16_example(), vec![]).unwrap();
        assert_eq!(
            epoch.cost(&[3]),
            Err(BatchError::IndexOutOfRange { index: 3, len: 0 })
        );
        assert!(!epoch.feasible(&[3]));
        // Absurd sizes saturate into "infeasible" instead of wrapping into something small.
        let huge = Decoder::new(u64::MAX, u64::MAX);
        assert_eq!(huge.flops(u64::MAX, u64::MAX, u64::MAX).total(), u128::MAX);
    }
}
