//! Readable tables on stdout and the results document of spec sec. 9.

use serde_json::{Map, Value, json};
use sunswarm_energy::PolicyKind;

use super::args::SimParams;
use super::fig2::{Fig2aRow, Fig2bRow};
use super::network::{Series, Sweep, Sweeps};

/// The paper's Fig. 2a numbers (spec sec. 0): jobs and mean battery in %.
pub fn paper_fig2a(mode: &str) -> Option<(f64, f64)> {
    match mode {
        "15W" => Some((31.0, 89.0)),
        "30W" => Some((45.0, 42.0)),
        "60W" => Some((58.0, 16.0)),
        "dynamic" => Some((47.0, 60.0)),
        _ => None,
    }
}

pub fn print_fig2a(rows: &[Fig2aRow]) {
    println!("Fig. 2a: one device, mean over runs (paper in brackets)");
    println!(
        "{:<8} {:>16} {:>22} {:>10}",
        "mode", "jobs", "avg battery %", "ps %"
    );
    for r in rows {
        let (pj, pb) = paper_fig2a(&r.mode).unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<8} {:>6.2} ±{:<4.2} [{:>2}] {:>8.1} ±{:<4.1} [{:>3}] {:>10.1}",
            r.mode,
            r.jobs.mean,
            r.jobs.sd,
            pj,
            100.0 * r.avg_battery.mean,
            100.0 * r.avg_battery.sd,
            pb,
            100.0 * r.ps_frac.mean
        );
    }
    println!();
}

pub fn print_fig2b(rows: &[Fig2bRow], delta: f64) {
    println!("Fig. 2b: maximum input rate at risk delta = {delta}");
    println!(
        "{:<8} {:>8} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "mode", "reached", "lambda*", "Nbar", "lam_max", "1/Nbar", "R(lam_max)"
    );
    for r in rows {
        println!(
            "{:<8} {:>8} {:>10.4} {:>8.4} {:>10.4} {:>10.4} {:>10.4}",
            r.mode,
            r.reached,
            r.lam_star,
            r.nbar,
            r.lam_max,
            1.0 / r.nbar,
            r.risk_at_max
        );
    }
    println!();
}

fn print_metric(
    title: &str,
    x_name: &str,
    sweep: &Sweep,
    metric: impl Fn(&Series, usize) -> (f64, f64),
    scale: f64,
) {
    println!("{title}");
    print!("{x_name:>8}");
    for s in &sweep.series {
        print!(" {:>18}", s.policy.name());
    }
    println!();
    for (j, x) in sweep.xs.iter().enumerate() {
        print!("{x:>8}");
        for s in &sweep.series {
            let (m, sd) = metric(s, j);
            print!(" {:>10.3} ±{:<6.3}", m * scale, sd * scale);
        }
        println!();
    }
    println!();
}

pub fn print_sweeps(s: &Sweeps, ps: bool, thr: bool) {
    let sweeps = [
        ("mu_bar", &s.vs_energy, format!("p = {}", s.net_p)),
        ("p", &s.vs_arrival, format!("mu_bar = {}", s.mu_bar)),
    ];
    for (x, sweep, fixed) in &sweeps {
        if ps {
            print_metric(
                &format!("Fig. 3: power-saving fraction % vs {x} ({fixed})"),
                x,
                sweep,
                |s, j| (s.ps_frac[j].mean, s.ps_frac[j].sd),
                100.0,
            );
        }
        if thr {
            print_metric(
                &format!("Fig. 4: throughput vs {x} ({fixed})"),
                x,
                sweep,
                |s, j| (s.throughput[j].mean, s.throughput[j].sd),
                1.0,
            );
            print_metric(
                &format!("Fig. 4: dropped jobs vs {x} ({fixed})"),
                x,
                sweep,
                |s, j| (s.dropped[j].mean, s.dropped[j].sd),
                1.0,
            );
        }
    }
    if ps {
        for (mu, row) in &s.ps_at_p1 {
            let cells: Vec<String> = row
                .iter()
                .map(|(k, st)| format!("{} {:.2}%", k.name(), 100.0 * st.mean))
                .collect();
            println!("power saving at p = 1, mu_bar = {mu}: {}", cells.join(", "));
        }
        for (name, sweep) in [("energy", &s.vs_energy), ("arrival", &s.vs_arrival)] {
            let cells: Vec<String> = sweep
                .series
                .iter()
                .map(|se| format!("{} {:.2}%", se.policy.name(), 100.0 * mean_ps(se)))
                .collect();
            println!(
                "mean power saving over the {name} sweep: {}",
                cells.join(", ")
            );
        }
        println!();
    }
}

/// Mean ps_frac over a sweep's grid (the checker's ordering test).
pub fn mean_ps(s: &Series) -> f64 {
    s.ps_frac.iter().map(|x| x.mean).sum::<f64>() / s.ps_frac.len().max(1) as f64
}

fn series_json(s: &Series) -> Value {
    let m = |v: &[super::runner::Stat]| v.iter().map(|x| x.mean).collect::<Vec<_>>();
    let sd = |v: &[super::runner::Stat]| v.iter().map(|x| x.sd).collect::<Vec<_>>();
    json!({
        "ps_frac": m(&s.ps_frac), "throughput": m(&s.throughput), "dropped": m(&s.dropped),
        "ps_frac_sd": sd(&s.ps_frac), "throughput_sd": sd(&s.throughput), "dropped_sd": sd(&s.dropped),
    })
}

fn key(x: f64) -> String {
    format!("{x}")
}

/// The policies section for the given policies (the paper's go under `policies`, ours under
/// `extensions`, so the document keeps exactly the spec's keys).
fn policies_json(s: &Sweeps, keep: impl Fn(PolicyKind) -> bool) -> Value {
    let mut ve = Map::new();
    ve.insert("mu_bar".into(), json!(s.vs_energy.xs));
    ve.insert("p".into(), json!(s.net_p));
    let mut va = Map::new();
    va.insert("mu_bar".into(), json!(s.mu_bar));
    va.insert("p".into(), json!(s.vs_arrival.xs));
    for se in s.vs_energy.series.iter().filter(|se| keep(se.policy)) {
        ve.insert(se.policy.name().into(), series_json(se));
    }
    for se in s.vs_arrival.series.iter().filter(|se| keep(se.policy)) {
        va.insert(se.policy.name().into(), series_json(se));
    }
    let mut p1 = Map::new();
    for (mu, row) in &s.ps_at_p1 {
        let cells: Map<String, Value> = row
            .iter()
            .filter(|(k, _)| keep(*k))
            .map(|(k, st)| (k.name().to_string(), json!(st.mean)))
            .collect();
        p1.insert(key(*mu), Value::Object(cells));
    }
    json!({ "vs_energy": ve, "vs_arrival": va, "ps_at_p1": p1 })
}

/// The spec sec. 9 document for whatever was computed.
pub fn document(
    p: &SimParams,
    fig2a: Option<&Vec<Fig2aRow>>,
    fig2b: Option<&Vec<Fig2bRow>>,
    sweeps: Option<&Sweeps>,
) -> Value {
    let mut doc = Map::new();
    doc.insert("schema".into(), json!("edge-llm-eh/1"));
    let mut params = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut params {
        m.insert("fig2a_runs".into(), json!(p.fig2a_reps()));
        m.insert("net_runs".into(), json!(p.net_reps()));
        m.insert(
            "policies".into(),
            json!(p.policies.iter().map(|k| k.name()).collect::<Vec<_>>()),
        );
        m.insert("generator".into(), json!("sunswarm swarm-testnet sim"));
        m.insert(
            "rng".into(),
            json!("ChaCha8, per-run seed = SplitMix64(seed, stream, run)"),
        );
    }
    doc.insert("params".into(), params);
    if let Some(rows) = fig2a {
        let m: Map<String, Value> = rows
            .iter()
            .map(|r| {
                (r.mode.clone(), json!({
                    "jobs": r.jobs.mean, "avg_battery": r.avg_battery.mean, "jobs_sd": r.jobs.sd,
                    "avg_battery_sd": r.avg_battery.sd, "ps_frac": r.ps_frac.mean,
                }))
            })
            .collect();
        doc.insert("fig2a".into(), Value::Object(m));
    }
    if let Some(rows) = fig2b {
        let m: Map<String, Value> = rows
            .iter()
            .map(|r| {
                let curve: Vec<[f64; 2]> = r.risk_curve.iter().map(|&(x, y)| [x, y]).collect();
                (r.mode.clone(), json!({
                    "lam_star": r.lam_star, "reached": r.reached, "nbar": r.nbar, "lam_max": r.lam_max,
                    "risk_curve": curve,
                }))
            })
            .collect();
        doc.insert("fig2b".into(), Value::Object(m));
    }
    if let Some(s) = sweeps {
        let paper = |k: PolicyKind| PolicyKind::PAPER.contains(&k);
        doc.insert("policies".into(), policies_json(s, paper));
        if s.vs_energy.series.iter().any(|se| !paper(se.policy)) {
            doc.insert(
                "extensions".into(),
                json!({ "policies": policies_json(s, |k| !paper(k)) }),
            );
        }
    }
    Value::Object(doc)
}
