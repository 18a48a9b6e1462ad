//! What learning *when* to offer buys, on the simulated shop (`examples/sim/`): rules only
//! (every eligible offer at the first chance), the best single-turn bandit, and the RL policies
//! (CQL, and importance-weighted policy gradient for comparison),
//! each learning for the same number of rounds against a real server (default model) and a real
//! optimizer over gRPC, then serving a final batch. Figures are means over seeds with 95 %
//! intervals (t over seeds); the exact optimum of the simulated customers (dynamic programming)
//! gives the regret. Learning curves go to `--out` as PNG, every figure as JSON.
//!
//! ```text
//! cargo bench --bench rl                                   # 3 seeds × 4 rounds × 300 conversations
//! cargo bench --bench rl -- --reward my_reward.toml        # the same with another reward file
//! cargo bench --bench rl -- --seeds 5 --rounds 6 --conversations 500 --eval 600 --out target/rl
//! ```
//! Also times the RL learner and its judgement on 100,000 conversations (`--episodes`),
//! resampled from what the RL arm logged, and compares the off-policy estimates of the final
//! RL policy (on the last round's logs) with its simulated value.
#[path = "lab/mod.rs"]
mod lab;
use lab::{customers, pg_config, rl_config, Arm, Lab};
use nudge_optimizer::episodes::{episodes, Episode};
use nudge_optimizer::ledger::Ledger;
use nudge_optimizer::reward::Reward;
use nudge_sim::{ConversationResult, Summary};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

struct Args {
    reward: PathBuf,
    seeds: u64,
    rounds: usize,
    conversations: usize,
    eval: usize,
    concurrency: usize,
    episodes: usize,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        reward: Path::new(lab::SHOP).join("reward.toml"),
        seeds: 3,
        rounds: 4,
        conversations: 300,
        eval: 400,
        concurrency: 16,
        episodes: 100_000,
        out: PathBuf::from("target/rl-bench"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{}: a number", argv[i]));
        match argv[i].as_str() {
            "--reward" => a.reward = PathBuf::from(&v),
            "--seeds" => a.seeds = n() as u64,
            "--rounds" => a.rounds = n(),
            "--conversations" => a.conversations = n(),
            "--eval" => a.eval = n(),
            "--concurrency" => a.concurrency = n(),
            "--episodes" => a.episodes = n(),
            "--out" => a.out = PathBuf::from(&v),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// Mean and 95 % half-width (Student t) of per-seed figures.
fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // t quantiles for 1..=9 degrees of freedom, then the normal's.
    let t = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]
        .get(v.len() - 2)
        .copied()
        .unwrap_or(1.96);
    (m, t * sd / n.sqrt())
}

struct ArmRun {
    /// Mean value per conversation of each round's conversations, then of the final batch.
    curve: Vec<f64>,
    last: Vec<ConversationResult>,
    train_seconds: f64,
    dir: Option<tempfile::TempDir>,
    /// OPE of the final policy on the first and on the last learning round's logs.
    ope: Option<[nudge_optimizer::ope::Estimates; 2]>,
}

async fn run_arm(arm: &Arm, a: &Args, seed: u64, value: &dyn Fn(&ConversationResult) -> f64) -> ArmRun {
    let (world, messages) = customers();
    let mut lab = Lab::start(arm, &a.reward, seed).await;
    let mut curve = Vec::new();
    let mut train_seconds = 0.0;
    for round in 0..a.rounds {
        let r = lab
            .converse(&world, &messages, a.conversations, a.concurrency, seed, round)
            .await;
        curve.push(r.iter().map(value).sum::<f64>() / r.len() as f64);
        let (pushed, seconds) = lab.train().await;
        train_seconds += seconds;
        eprintln!(
            "  {} seed {seed} round {round}: value {:.1}, pushed {pushed:?}",
            arm.name(),
            curve[round]
        );
    }
    let last = lab
        .converse(&world, &messages, a.eval, a.concurrency, seed, a.rounds)
        .await;
    curve.push(last.iter().map(value).sum::<f64>() / last.len() as f64);
    let ope = match arm {
        Arm::Rl(rl) => {
            let rounds = [0, a.rounds.saturating_sub(1)];
            let est = rounds.map(|r| final_ope(&lab, &a.reward, rl, r, a.rounds));
            match est {
                [Some(first), Some(last)] => Some([first, last]),
                _ => None,
            }
        }
        _ => None,
    };
    let dir = matches!(arm, Arm::Rl(_)).then_some(lab.dir);
    ArmRun {
        curve,
        last,
        train_seconds,
        dir,
        ope,
    }
}

/// The logs of a lab's folder as conversations of the schema.
fn logged_episodes(dir: &Path, reward: &Reward, rl: &nudge_optimizer::rl::RlConfig) -> Vec<Episode> {
    let (mut ledger, _) = Ledger::read(&[dir.join("decisions"), dir.join("outcomes")]).expect("the lab's logs");
    episodes(&lab::schema(), &ledger.examples(reward, u64::MAX), rl.credit).episodes
}

/// Off-policy estimates of the serving (final) policy on the conversations of learning round
/// `round` (round 0: logged by the first version, uniform; the last round: by the version
/// before the final one, or the final one itself when the last candidate was refused), to
/// compare with its simulated value on the final batch. The final policy trained on most of
/// these conversations.
fn final_ope(
    lab: &Lab,
    reward_file: &Path,
    rl: &nudge_optimizer::rl::RlConfig,
    round: usize,
    final_batch: usize,
) -> Option<nudge_optimizer::ope::Estimates> {
    let reward = Reward::load(reward_file).ok()?;
    let registry = nudge_policy::Registry::existing(lab.path("registry")).ok()?;
    let serving = registry.serving().ok()??;
    let all = logged_episodes(lab.dir.path(), &reward, rl);
    // Conversation ids carry their batch: "sim-s<seed>-b<round>-<index>".
    let round = format!("-b{round}-");
    let final_batch = format!("-b{final_batch}-");
    let learning: Vec<Episode> = all.into_iter().filter(|e| !e.id.contains(&final_batch)).collect();
    let logged: Vec<Episode> = learning.iter().filter(|e| e.id.contains(&round)).cloned().collect();
    // Undiscounted (γ = 1), as the simulated value is.
    let undiscounted = nudge_optimizer::rl::RlConfig {
        gamma: 1.0,
        ..rl.clone()
    };
    Some(nudge_optimizer::learn::evaluate_episodes(
        &serving.policy,
        &logged,
        &learning,
        &undiscounted,
        1,
    ))
}

fn write_curves(path: &Path, curves: &[(&str, Vec<f64>)], optimum: f64) {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let xmax = curves.iter().map(|c| c.1.len()).max().unwrap_or(1) as f64;
    let ymax = curves.iter().flat_map(|c| c.1.iter().copied()).fold(optimum, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .unwrap();
    chart
        .draw_series(LineSeries::new(
            [(0.0, optimum), (xmax, optimum)],
            BLACK.stroke_width(1),
        ))
        .unwrap();
    for ((_, c), colour) in curves.iter().zip([RED, BLUE, GREEN, MAGENTA]) {
        chart
            .draw_series(LineSeries::new(
                c.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)),
                colour.stroke_width(2),
            ))
            .unwrap();
    }
    root.present().unwrap();
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.out).expect("the output folder");
    let reward = Reward::load(&a.reward).expect("the reward file");
    let value = |r: &ConversationResult| r.value(&|t| reward.value(Some(t)));
    let (world, _) = customers();
    let total: f64 = world.cfg.segment.iter().map(|s| s.share).sum();
    let optimum: f64 = (0..world.cfg.segment.len())
        .map(|s| world.cfg.segment[s].share / total * world.optimum(s, &|t| reward.value(Some(t))).0)
        .sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let arms = [Arm::Rules, Arm::Bandit, Arm::Rl(rl_config()), Arm::Rl(pg_config())];
    let mut runs: Vec<Vec<ArmRun>> = Vec::new();
    let started = std::time::Instant::now();
    for arm in &arms {
        let mut per_seed = Vec::new();
        for seed in 1..=a.seeds {
            per_seed.push(rt.block_on(run_arm(arm, &a, seed, &value)));
        }
        runs.push(per_seed);
    }
    let wall = started.elapsed().as_secs_f64();

    println!(
        "\nSimulated shop, {} seeds × ({} rounds × {} conversations, then {} served), reward `{}`",
        a.seeds,
        a.rounds,
        a.conversations,
        a.eval,
        reward.source.trim()
    );
    println!("optimum (dynamic programming over the customers' hidden states): {optimum:.1} per conversation\n");
    println!(
        "| figure (final batch, mean ± 95 % over seeds) | {} |",
        arms.iter().map(Arm::name).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(arms.len()));
    type Fig = (&'static str, fn(&Summary) -> f64);
    let figures: [Fig; 9] = [
        ("conversion rate", |s| s.conversion_rate),
        ("revenue per conversation", |s| s.revenue),
        ("margin per conversation", |s| s.margin),
        ("offers per conversation", |s| s.offers),
        ("offer acceptance rate", |s| s.acceptance_rate),
        ("offers made during an open problem (share)", |s| s.offers_while_open),
        ("complaint rate", |s| s.complaint_rate),
        ("opt-out rate", |s| s.opt_out_rate),
        ("hand-off rate", |s| s.handoff_rate),
    ];
    let mut json = serde_json::Map::new();
    let mut row = |name: &str, per_arm: Vec<Vec<f64>>, digits: usize| {
        let cells: Vec<String> = per_arm
            .iter()
            .map(|v| {
                let (m, h) = mean_ci(v);
                format!("{m:.digits$} ± {h:.digits$}")
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
        json.insert(name.to_string(), serde_json::json!(per_arm));
    };
    for (name, f) in figures {
        let digits = if name.contains("per conversation") && !name.starts_with("offers") {
            1
        } else {
            3
        };
        row(
            name,
            runs.iter()
                .map(|r| r.iter().map(|x| f(&Summary::of(&x.last))).collect())
                .collect(),
            digits,
        );
    }
    row(
        "reward per conversation",
        runs.iter()
            .map(|r| r.iter().map(|x| *x.curve.last().unwrap()).collect())
            .collect(),
        1,
    );
    row(
        "regret per conversation (optimum − reward)",
        runs.iter()
            .map(|r| r.iter().map(|x| optimum - x.curve.last().unwrap()).collect())
            .collect(),
        1,
    );
    row(
        "training seconds (all rounds)",
        runs.iter()
            .map(|r| r.iter().map(|x| x.train_seconds).collect())
            .collect(),
        2,
    );

    // Learning curves: mean over seeds per round.
    let curves: Vec<(&str, Vec<f64>)> = arms
        .iter()
        .zip(&runs)
        .map(|(arm, r)| {
            let len = r[0].curve.len();
            (
                arm.name(),
                (0..len)
                    .map(|i| r.iter().map(|x| x.curve[i]).sum::<f64>() / r.len() as f64)
                    .collect(),
            )
        })
        .collect();
    let png = a.out.join("learning_curves.png");
    write_curves(&png, &curves, optimum);
    println!("\nlearning curves (reward per conversation by round; last point: final batch; black: optimum; red rules, blue bandit, green RL (CQL), magenta RL (policy gradient)): {}", png.display());
    for (name, c) in &curves {
        println!(
            "  {name}: {}",
            c.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" → ")
        );
    }

    // OPE of the final RL (CQL) policy on the logs before it served, against its simulated value.
    let rl_runs = &runs[2];
    println!("\nOPE (γ = 1) of the final RL (CQL) policy on the first (uniform) and the last learning round's conversations, vs its simulated value on the final batch:");
    for (seed, r) in rl_runs.iter().enumerate() {
        for (which, e) in ["first", "last"].iter().zip(r.ope.iter().flatten()) {
            println!(
                "  seed {} {which}: PDIS {:.1} [{:.1}, {:.1}], WPDIS {:.1} [{:.1}, {:.1}], DR {:.1} [{:.1}, {:.1}] (effective conversations {:.0} of {}); simulated {:.1}",
                seed + 1,
                e.ips.value, e.ips.lo, e.ips.hi,
                e.snips.value, e.snips.lo, e.snips.hi,
                e.dr.value, e.dr.lo, e.dr.hi,
                e.effective_samples, e.dr.n,
                r.curve.last().unwrap()
            );
        }
    }

    // The learner at scale: 100k conversations resampled from the RL arm's logs.
    let rl = rl_config();
    if let Some(dir) = rl_runs.first().and_then(|r| r.dir.as_ref()) {
        let logged = logged_episodes(dir.path(), &reward, &rl);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let many: Vec<Episode> = (0..a.episodes)
            .map(|i| {
                let mut e = logged[rng.random_range(0..logged.len())].clone();
                e.id = format!("{}-{i}", e.id);
                e
            })
            .collect();
        let decisions: usize = many.iter().map(|e| e.steps.len()).sum();
        let base = nudge_policy::Policy {
            model: nudge_policy::RewardModel::prior(lab::schema().dim(), 1.0),
            schema: lab::schema(),
            exploration: nudge_policy::Exploration::EpsilonGreedy { epsilon: 0.1 },
            projection: None,
        };
        let t0 = std::time::Instant::now();
        let (policy, report) =
            nudge_optimizer::rl::train(&base, &many, &rl, &base.exploration, 1, None).expect("training");
        let train_s = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let est = nudge_optimizer::learn::evaluate_episodes(&policy, &many, &many, &rl, 1);
        let judge_s = t1.elapsed().as_secs_f64();
        println!(
            "\nRL learner on {} conversations ({decisions} decisions), {} steps of {}: training {train_s:.1} s, judging (FQE + PDIS/WPDIS/DR) {judge_s:.1} s; loss {:.3} → {:.3}; DR {:.1}",
            a.episodes, report.steps, rl.batch_size, report.loss_start, report.loss_end, est.dr.value
        );
        json.insert("train_100k".into(), serde_json::json!({"episodes": a.episodes, "decisions": decisions, "train_seconds": train_s, "judge_seconds": judge_s}));
    }
    json.insert("optimum".into(), serde_json::json!(optimum));
    json.insert("curves".into(), serde_json::json!(curves));
    json.insert("wall_seconds".into(), serde_json::json!(wall));
    let out = a.out.join("rl.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nall figures: {} (wall {wall:.0} s)", out.display());
}
