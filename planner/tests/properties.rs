//! Property tests: the exact planner against brute force and against the seed's literal DP on
//! small random instances (at most 5 peers, 8 blocks), for both objectives, with and without
//! the return hop in the bottleneck and with energy floors; and the paper's DPs against their
//! brute force.

use proptest::prelude::*;
use sunswarm_planner::paper::{self, PaperInstance, PaperObjective};
use sunswarm_planner::reference::{brute_force, two_phase};
use sunswarm_planner::{Instance, Objective, PeerCost, PlanError, solve};

/// Times from a coarse grid (many exact ties, which is where tie-breaks go wrong) or anywhere.
fn time() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, 3.0, 5.0]),
        0.0f64..10.0,
    ]
}

fn per_block() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![0.5, 1.0, 1.5, 2.0, 3.0]),
        0.1f64..5.0,
    ]
}

fn floor() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0),
        1 => prop::sample::select(vec![1.0, 2.5, 4.0]),
        1 => 0.0f64..6.0,
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    (1usize..=5, 1u32..=8).prop_flat_map(|(n, blocks)| {
        let peer = (per_block(), 0..=blocks, time(), time(), floor()).prop_map(
            |(ms_per_block, max_blocks, up_ms, down_ms, floor_ms)| PeerCost {
                ms_per_block,
                max_blocks,
                up_ms,
                down_ms,
                floor_ms,
            },
        );
        (
            prop::collection::vec(peer, n),
            prop::collection::vec(prop::collection::vec(time(), n), n),
        )
            .prop_map(move |(peers, links_ms)| Instance {
                blocks,
                peers,
                links_ms,
            })
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn segment_dp_matches_brute_force_and_the_literal_dp(
        inst in instance(),
        include_return in any::<bool>(),
    ) {
        let bf = brute_force(&inst, include_return).unwrap();
        for objective in [Objective::Latency, Objective::Throughput] {
            let fast = solve(&inst, objective, include_return);
            let literal = two_phase(&inst, objective, include_return).unwrap();
            let Some((best_lat, _)) = &bf.latency else {
                prop_assert!(matches!(fast, Err(PlanError::Infeasible { .. })), "{:?}", fast);
                prop_assert!(literal.is_none());
                continue;
            };
            let fast = fast.unwrap();
            let literal = literal.unwrap();
            // The plan is valid and its totals are what the evaluation says.
            let e = inst.evaluate(&fast.stages, include_return).unwrap();
            prop_assert!(close(e.latency_ms, fast.latency_ms));
            prop_assert!(close(e.bottleneck_ms, fast.bottleneck_ms));
            match objective {
                Objective::Latency => {
                    prop_assert!(close(fast.latency_ms, *best_lat),
                        "fast {} brute {}", fast.latency_ms, best_lat);
                    prop_assert!(close(literal.latency_ms, *best_lat));
                }
                Objective::Throughput => {
                    let (m, lat, _) = bf.throughput.as_ref().unwrap();
                    prop_assert!(close(fast.bottleneck_ms, *m),
                        "fast {} brute {}", fast.bottleneck_ms, m);
                    prop_assert!(close(fast.latency_ms, *lat),
                        "tie-break: fast {} brute {}", fast.latency_ms, lat);
                    prop_assert!(close(literal.bottleneck_ms, *m));
                    prop_assert!(close(literal.latency_ms, *lat));
                }
            }
        }
    }
}

fn paper_instance() -> impl Strategy<Value = PaperInstance> {
    (1usize..=4, 1usize..=6).prop_flat_map(|(n, l)| {
        (
            prop::collection::vec(prop::collection::vec(0.5f64..10.0, l), n),
            prop::collection::vec(prop::sample::select(vec![0.5, 1.0, 2.0]), l),
            prop::collection::vec(prop::sample::select(vec![1.0, 2.0, 3.0, 6.0, 100.0]), n),
            prop::collection::vec(prop::collection::vec(1.0f64..1000.0, n), n),
            prop::collection::vec(prop::collection::vec(0.0f64..2.0, n), n),
            0..n,
        )
            .prop_map(
                |(layer_ms, layer_mem, device_mem, bw, lat, src)| PaperInstance {
                    layer_ms,
                    layer_mem,
                    device_mem,
                    bandwidth_mbps: bw,
                    latency_ms: lat,
                    act_kbit: 64.0,
                    out_kbit: 512.0,
                    src,
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn paper_segment_dp_matches_its_brute_force(
        inst in paper_instance(),
        include_return in any::<bool>(),
    ) {
        for objective in [PaperObjective::Sum, PaperObjective::Max] {
            let dp = paper::segment_dp(&inst, objective, include_return).unwrap();
            let bf = paper::brute_force_stages(&inst, objective, include_return).unwrap();
            match (dp, bf) {
                (None, None) => {}
                (Some(a), Some(b)) => prop_assert!(close(a.value_ms, b.value_ms),
                    "dp {} brute {}", a.value_ms, b.value_ms),
                (a, b) => prop_assert!(false, "feasibility differs: {:?} vs {:?}", a, b),
            }
        }
    }

    #[test]
    fn algorithm1_is_never_better_than_exact_and_exact_when_memory_is_ample(
        mut inst in paper_instance(),
    ) {
        let exact = paper::brute_force_latency(&inst).unwrap();
        let a1 = paper::algorithm1(&inst).unwrap().best;
        if let (Some(a), Some(e)) = (&a1, &exact) {
            prop_assert!(a.latency_ms >= e.latency_ms - 1e-9);
            prop_assert_eq!(paper::placement_latency(&inst, &a.devices).map(|v| close(v, a.latency_ms)), Some(true));
        }
        if exact.is_none() {
            prop_assert!(a1.is_none(), "Algorithm 1 found a placement brute force did not");
        }
        // With memory that never binds, carrying it per cell loses nothing.
        let total: f64 = inst.layer_mem.iter().sum();
        inst.device_mem = vec![total; inst.device_mem.len()];
        let exact = paper::brute_force_latency(&inst).unwrap().unwrap();
        let a1 = paper::algorithm1(&inst).unwrap().best.unwrap();
        prop_assert!(close(a1.latency_ms, exact.latency_ms));
    }
}
