//! What the experiment reports: a line per live run, the summary table (live mean ± sd over the
//! repeats beside the simulator's mean ± the sd of one simulated run) and the results JSON.

use serde_json::{Map, Value, json};
use sunswarm_energy::policy::PolicyKind;

use super::design::{Design, LiveCounts, Spread, Summary};

/// One live run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveRun {
    /// The design's seed for this run (`--seed` + repeat).
    pub seed: u64,
    pub counts: LiveCounts,
}

/// Everything one policy produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyResult {
    pub policy: PolicyKind,
    /// In run order (repeat 0 first).
    pub live: Vec<LiveRun>,
    pub simulated: Summary,
}

impl PolicyResult {
    /// `None` without live runs.
    pub fn live_summary(&self) -> Option<Summary> {
        let outcomes: Vec<_> = self.live.iter().map(|r| r.counts.outcome()).collect();
        Summary::of(&outcomes)
    }
}

/// The JSON key of a policy, as the issue spells it.
pub fn key(p: PolicyKind) -> &'static str {
    match p {
        PolicyKind::LongTerm => "long-term",
        other => other.name(),
    }
}

/// `name`: the mean, `name_sd`: the sd (both `null` where there is none).
fn put(m: &mut Map<String, Value>, name: &str, s: Option<Spread>) {
    m.insert(name.into(), s.map_or(Value::Null, |s| json!(s.mean)));
    m.insert(
        format!("{name}_sd"),
        s.and_then(|s| s.sd).map_or(Value::Null, |sd| json!(sd)),
    );
}

fn summary_json(s: &Summary) -> Map<String, Value> {
    let mut m = Map::new();
    put(&mut m, "ps_frac", Some(s.ps_frac));
    put(&mut m, "throughput", Some(s.throughput));
    put(&mut m, "completed", Some(s.completed));
    put(&mut m, "dropped", Some(s.dropped));
    put(&mut m, "joules_per_token", s.joules_per_token);
    m
}

/// One live run as the single-run JSON had it, plus its seed.
pub fn run_json(r: &LiveRun) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(r.counts.outcome())?;
    v["offered"] = json!(r.counts.offered);
    v["tokens"] = json!(r.counts.tokens);
    v["refused_opens"] = json!(r.counts.refused_opens);
    v["wasted_hop_jobs"] = json!(r.counts.wasted_hop_jobs);
    v["seed"] = json!(r.seed);
    Ok(v)
}

/// The results document: `live` and `simulated` per policy (means under the single-run keys,
/// spreads under `KEY_sd`, the live runs under `runs`), and the parameters.
pub fn document(
    results: &[PolicyResult],
    d: &Design,
    repeats: usize,
    sim_runs: usize,
) -> anyhow::Result<Value> {
    let (mut live, mut sim) = (Map::new(), Map::new());
    for r in results {
        if let Some(s) = r.live_summary() {
            let mut m = summary_json(&s);
            let count = |f: fn(&LiveCounts) -> u64| {
                Spread::of(r.live.iter().map(|run| f(&run.counts) as f64))
            };
            put(&mut m, "offered", count(|c| c.offered));
            put(&mut m, "tokens", count(|c| c.tokens));
            put(&mut m, "refused_opens", count(|c| c.refused_opens));
            put(&mut m, "wasted_hop_jobs", count(|c| c.wasted_hop_jobs));
            let runs = r.live.iter().map(run_json).collect::<anyhow::Result<_>>()?;
            m.insert("runs".into(), Value::Array(runs));
            live.insert(key(r.policy).into(), Value::Object(m));
        }
        sim.insert(
            key(r.policy).into(),
            Value::Object(summary_json(&r.simulated)),
        );
    }
    let mut params = serde_json::to_value(d)?;
    params["repeats"] = json!(repeats);
    params["sim_runs"] = json!(sim_runs);
    Ok(json!({ "live": live, "simulated": sim, "params": params }))
}

/// `mean ± sd` with `digits` decimals; `-` for a missing value or sd.
fn pm(s: Option<Spread>, digits: usize) -> String {
    match s {
        None => "-".into(),
        Some(Spread { mean, sd: Some(sd) }) => format!("{mean:.digits$} ± {sd:.digits$}"),
        Some(Spread { mean, sd: None }) => format!("{mean:.digits$} ± -"),
    }
}

/// The line printed when a live run ends.
pub fn run_line(repeat: usize, repeats: usize, p: PolicyKind, r: &LiveRun) -> String {
    let o = r.counts.outcome();
    format!(
        "run {}/{repeats} {:<10} seed {:<4} ps_frac {:.4}  thr {:.4}  done {:>3}  drop {:>3}  J/token {:.0}",
        repeat + 1,
        key(p),
        r.seed,
        o.ps_frac,
        o.throughput,
        o.completed,
        o.dropped,
        o.joules_per_token.unwrap_or(f64::NAN)
    )
}

/// Two rows per policy: live (mean ± sd over the repeats) and simulated (mean ± sd of one run).
pub fn table(results: &[PolicyResult]) -> String {
    let mut out = format!(
        "{:<10} {:<10} {:>17} {:>17} {:>13} {:>11} {:>13}\n",
        "policy", "side", "ps_frac", "throughput", "completed", "dropped", "J/token"
    );
    let row = |out: &mut String, name: &str, side: String, s: &Summary| {
        out.push_str(&format!(
            "{:<10} {:<10} {:>17} {:>17} {:>13} {:>11} {:>13}\n",
            name,
            side,
            pm(Some(s.ps_frac), 4),
            pm(Some(s.throughput), 4),
            pm(Some(s.completed), 1),
            pm(Some(s.dropped), 1),
            pm(s.joules_per_token, 0)
        ));
    };
    for r in results {
        if let Some(l) = r.live_summary() {
            row(&mut out, key(r.policy), format!("live x{}", l.runs), &l);
        }
        row(
            &mut out,
            "",
            format!("sim x{}", r.simulated.runs),
            &r.simulated,
        );
    }
    out.push_str(
        "live: mean ± sample sd over the repeats; sim: mean ± sd of one simulated run \
         (- : one run, no spread)\n",
    );
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::experiment::design::Outcome;

    pub(crate) fn results() -> Vec<PolicyResult> {
        let counts = |completed: u64, dropped: u64, saving: u64| LiveCounts {
            offered: completed + dropped,
            completed,
            dropped,
            node_slots: 100,
            saving_node_slots: saving,
            tokens: 4 * completed,
            kilojoules: 23.0 * completed as f64,
            refused_opens: dropped,
            wasted_hop_jobs: 2 * dropped,
        };
        let sim = |ps: f64| {
            let o = |x: f64| Outcome {
                ps_frac: x,
                throughput: 0.9,
                completed: 27.0,
                dropped: 3.0,
                joules_per_token: None,
            };
            Summary::of(&[o(ps - 0.05), o(ps + 0.05)]).unwrap()
        };
        vec![
            PolicyResult {
                policy: PolicyKind::Uniform,
                live: vec![
                    LiveRun {
                        seed: 1,
                        counts: counts(26, 3, 30),
                    },
                    LiveRun {
                        seed: 2,
                        counts: counts(28, 1, 20),
                    },
                ],
                simulated: sim(0.34),
            },
            PolicyResult {
                policy: PolicyKind::LongTerm,
                live: vec![
                    LiveRun {
                        seed: 1,
                        counts: counts(29, 0, 25),
                    },
                    LiveRun {
                        seed: 2,
                        counts: counts(29, 0, 35),
                    },
                ],
                simulated: sim(0.30),
            },
            PolicyResult {
                policy: PolicyKind::Adaptive,
                live: vec![LiveRun {
                    seed: 1,
                    counts: counts(0, 29, 90),
                }],
                simulated: sim(0.29),
            },
        ]
    }

    fn close(v: &Value, x: f64) -> bool {
        v.as_f64().is_some_and(|v| (v - x).abs() < 1e-9)
    }

    #[test]
    fn the_document_keeps_the_single_run_keys_and_adds_the_spread() {
        let d = crate::experiment::design::tests::design();
        let doc = document(&results(), &d, 2, 300).unwrap();
        let u = &doc["live"]["uniform"];
        for k in [
            "ps_frac",
            "throughput",
            "completed",
            "dropped",
            "joules_per_token",
            "offered",
            "tokens",
        ] {
            assert!(u[k].is_number(), "{k}: {u}");
            assert!(u[format!("{k}_sd")].is_number(), "{k}_sd: {u}");
        }
        assert!(close(&u["ps_frac"], 0.25));
        assert!(close(&u["ps_frac_sd"], 0.05f64.hypot(0.05)));
        assert!(close(&u["completed"], 27.0));
        assert!(close(&u["offered"], 29.0) && close(&u["offered_sd"], 0.0));
        assert!(close(&u["tokens"], 108.0));
        // 23 kJ per job over 4 tokens, in every run: no spread.
        assert!(close(&u["joules_per_token"], 5750.0) && close(&u["joules_per_token_sd"], 0.0));
        let runs = u["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1]["seed"], 2);
        assert!(close(&runs[0]["ps_frac"], 0.3) && close(&runs[1]["completed"], 28.0));
        assert_eq!(runs[0]["offered"], 29);
        // Refusals and the hop jobs they wasted are counted per run and averaged.
        assert_eq!(
            runs[0]["wasted_hop_jobs"],
            2 * runs[0]["refused_opens"].as_u64().unwrap()
        );
        assert!(close(
            &u["wasted_hop_jobs"],
            2.0 * u["refused_opens"].as_f64().unwrap()
        ));
        assert!(doc["live"]["long-term"]["runs"].is_array());

        // One run: no spread (null), and no energy where no token was generated.
        let a = &doc["live"]["adaptive"];
        assert!(close(&a["dropped"], 29.0));
        assert!(a["dropped_sd"].is_null() && a["ps_frac_sd"].is_null());
        assert!(a["joules_per_token"].is_null() && a["joules_per_token_sd"].is_null());

        let s = &doc["simulated"]["long-term"];
        assert!(close(&s["ps_frac"], 0.30) && close(&s["ps_frac_sd"], 0.05f64.hypot(0.05)));
        assert!(close(&s["throughput_sd"], 0.0));
        assert!(s["joules_per_token"].is_null() && s.get("runs").is_none());
        assert_eq!(doc["params"]["repeats"], 2);
        assert_eq!(doc["params"]["sim_runs"], 300);
        assert_eq!(doc["params"]["energy_mean"], 5.0);
    }

    #[test]
    fn the_table_shows_mean_and_sd_per_side() {
        let t = table(&results());
        assert!(t.contains("live x2"), "{t}");
        assert!(t.contains("sim x2"), "{t}");
        assert!(t.contains("0.2500 ± 0.0707"), "{t}");
        // Adaptive: one live run, so no sd.
        assert!(t.contains("0.9000 ± -"), "{t}");
        assert_eq!(t.lines().count(), 1 + 6 + 1);
    }
}
