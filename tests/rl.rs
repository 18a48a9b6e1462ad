//! Learning when to offer, end to end: simulated customers (`examples/sim/sim.toml`) talk to a
//! real server with the default model over gRPC; a real optimizer learns from their outcomes,
//! judges its candidate off-policy and pushes it. Where timing matters (after-sales customers,
//! who take an offer once their problem is solved and are put off by one before), the RL policy
//! waits and beats the best bandit; where it does not (shoppers) it loses nothing. Needs
//! `cargo run --release -- models fetch`.
#[path = "../benches/lab/mod.rs"]
mod lab;
use lab::{customers, rl_config, Arm, Lab};
use nudge_sim::{ConversationResult, Summary};
use std::path::Path;

/// The shop's reward file: the same value the optimizer trains on.
fn reward(t: &nudge_records::OutcomeTotals) -> f64 {
    static REWARD: std::sync::OnceLock<nudge_optimizer::reward::Reward> = std::sync::OnceLock::new();
    REWARD
        .get_or_init(|| nudge_optimizer::reward::Reward::load(&Path::new(lab::SHOP).join("reward.toml")).unwrap())
        .value(Some(t))
}

/// Mean value and its 95 % half-width over the conversations of `segment`.
fn value(results: &[ConversationResult], segment: usize) -> (f64, f64, usize) {
    let v: Vec<f64> = results
        .iter()
        .filter(|r| r.segment == segment)
        .map(|r| r.value(&reward))
        .collect();
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, 1.96 * (var / n).sqrt(), v.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rl_waits_for_the_resolution_and_beats_the_bandit_where_timing_matters() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (world, messages) = customers();
    let reward_file = Path::new(lab::SHOP).join("reward.toml");
    let optimum: Vec<f64> = (0..2).map(|s| world.optimum(s, &reward).0).collect();
    let mut served = Vec::new();
    for arm in [Arm::Bandit, Arm::Rl(rl_config())] {
        let mut lab = Lab::start(&arm, &reward_file, 1).await;
        // One round logged by the first version (the prior: every option alike, so uniform).
        // 1,000 conversations: with 600, CQL missed the timing in about one run in four once
        // the default model's int8 arithmetic moved to 7-bit activations (its probabilities
        // move in the second or third digit); with 1,000 it passed 12 runs of 12.
        let logged = lab.converse(&world, &messages, 1000, 16, 1, 0).await;
        assert_eq!(logged.len(), 1000);
        let (mut pushed, _) = lab.train().await;
        // About one run in twelve, CQL's first candidate is nearly deterministic where the
        // holdout's logged choices differ (3 effective samples of 299): its DR estimate is noise
        // and the gate refuses it, as it should. An operator's next round has more data; so does
        // this test's, twice at most (the second round's candidate was refused the same way
        // once, with 6 effective samples of 448).
        for round in 2..=3 {
            if pushed.is_some() || !matches!(arm, Arm::Rl(_)) {
                break;
            }
            eprintln!(
                "RL's candidate of round {} refused: {}",
                round - 1,
                lab.optimizer.as_ref().unwrap().last_verdict()
            );
            lab.converse(&world, &messages, 500, 16, round as u64 + 1, round).await;
            pushed = lab.train().await.0;
        }
        let verdict: serde_json::Value = serde_json::from_str(&lab.optimizer.as_ref().unwrap().last_verdict()).unwrap();
        eprintln!("{}: pushed {pushed:?}, {}", arm.name(), verdict["rule"]);
        // The bandit's candidate may be refused (it is rarely much better than the first
        // version's uniform choice: it offers during open problems too); RL's must pass.
        if matches!(arm, Arm::Rl(_)) {
            assert_eq!(pushed.as_deref(), Some("v2"), "{}: {verdict}", arm.name());
        }
        // The RL verdict judges whole conversations and says how the learner trained.
        match arm {
            Arm::Rl(_) => {
                let rl = &verdict["rl"];
                assert_eq!(rl["learner"], "cql", "{verdict}");
                assert_eq!(verdict["train_examples"], rl["episodes"], "{verdict}");
                assert!(
                    rl["decisions"].as_u64().unwrap() > rl["episodes"].as_u64().unwrap(),
                    "{verdict}"
                );
            }
            _ => assert!(verdict["rl"].is_null()),
        }
        // The audit log has the verdict, for the candidate version.
        let audit = std::fs::read_dir(lab.path("audit"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect::<String>();
        assert!(audit.contains("\"candidate_version\":\"v2\""), "{audit}");
        let r = lab.converse(&world, &messages, 400, 16, 2, 1).await;
        // Every decision the server made under v2 says so.
        assert!(r.iter().all(|c| c.decisions <= c.turns));
        eprintln!(
            "{}: logged {:?}\n served {:?}\n after-sales {:?} (optimum {:.1}), shoppers {:?} (optimum {:.1})",
            arm.name(),
            Summary::of(&logged),
            Summary::of(&r),
            value(&r, 0),
            optimum[0],
            value(&r, 1),
            optimum[1],
        );
        served.push(r);
    }
    let (bandit, rl) = (&served[0], &served[1]);
    // Where timing matters, RL is better than what the bandit's optimizer serves beyond its own
    // interval, and offers far less during
    // an open problem.
    let (b, _, _) = value(bandit, 0);
    let (r, r_half, _) = value(rl, 0);
    assert!(r - r_half > b, "after-sales: RL {r} ± {r_half} vs bandit {b}");
    let (open_b, open_r) = (Summary::of(bandit).offers_while_open, Summary::of(rl).offers_while_open);
    assert!(
        open_r < open_b / 2.0,
        "offers during an open problem: RL {open_r} vs bandit {open_b}"
    );
    // Where it does not, RL loses nothing the interval can see.
    let (b, b_half, _) = value(bandit, 1);
    let (r, r_half, _) = value(rl, 1);
    assert!(
        r + r_half + b_half >= b,
        "shoppers: RL {r} ± {r_half} vs bandit {b} ± {b_half}"
    );
    // And neither beats the optimum of the simulated customers by more than noise.
    for (seg, opt) in optimum.iter().enumerate() {
        let (v, half, _) = value(rl, seg);
        assert!(v - half <= *opt, "segment {seg}: {v} ± {half} above the optimum {opt}");
    }
}
