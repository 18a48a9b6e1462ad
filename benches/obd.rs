//! The learning path on real logged data: the Open Bandit Dataset sample in ../shared/data.
//! For each campaign, the uniform-random logs are imported as Nudge decision/outcome logs; a
//! policy is trained on the older half (by time) and judged on the newer half with IPS, SNIPS
//! and DR (95 % intervals) exactly as `nudge optimizer replay` does, beside the click rate the
//! random logging policy observed on that half and the Bernoulli-TS logs' click rate.
//!
//!     cargo bench --bench obd -- [--data ../shared/data/bandit/obd] [--campaigns all,men,women]
use nudge_optimizer::learn::{GateConfig, LearnConfig, ModelConfig};
use nudge_optimizer::neural::TrunkConfig;
use nudge_optimizer::obd::{import, Campaign};
use nudge_optimizer::ope::Estimate;
use nudge_optimizer::replay::replay;
use nudge_optimizer::reward::Reward;
use nudge_policy::Exploration;
use std::path::PathBuf;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn ci(e: &Estimate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", e.value * 100.0, e.lo * 100.0, e.hi * 100.0)
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = arg("--data").map_or_else(|| root.join("../shared/data/bandit/obd"), PathBuf::from);
    let campaigns = arg("--campaigns").unwrap_or_else(|| "all,men,women".into());
    let reward = Reward::from_toml("click.toml", "reward = \"click\"\nwindow_seconds = 0\n")?;
    // Bernoulli rewards at a ~0.4 % click rate: noise variance p(1 − p) ≈ 0.004.
    let base = LearnConfig {
        ridge: 1.0,
        noise_var: 0.005,
        holdout: 0.5,
        min_examples: 100,
        gate: GateConfig::default(),
        seed: 7,
        ..Default::default()
    };
    let policies = [
        (
            "linear, greedy",
            LearnConfig {
                exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
                model: ModelConfig::Linear,
                ..base.clone()
            },
        ),
        (
            "linear, ε-greedy 0.1",
            LearnConfig {
                exploration: Exploration::EpsilonGreedy { epsilon: 0.1 },
                model: ModelConfig::Linear,
                ..base.clone()
            },
        ),
        (
            "neural-linear [32, 16], greedy",
            LearnConfig {
                exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
                model: ModelConfig::NeuralLinear(TrunkConfig::default()),
                ..base.clone()
            },
        ),
    ];
    println!("click rates in %; policies trained on the older half of the random logs, judged on the newer half\n");
    println!("| campaign | policy | IPS [95% CI] | SNIPS [95% CI] | DR [95% CI] | effective samples | s |");
    println!("|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for name in campaigns.split(',') {
        let random = Campaign::read(&data.join("random").join(name))?;
        let bts = Campaign::read(&data.join("bts").join(name))?;
        let tmp = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let summary = rt.block_on(import(&random, tmp.path()))?;
        let logs = [summary.decisions_dir.clone(), summary.outcomes_dir.clone()];
        let half = random.rows.len() / 2;
        let held_from = random.rows[half].time_ms;
        let bts_held = bts.rows.iter().position(|r| r.time_ms >= held_from).unwrap_or(0);
        let now = u64::MAX / 2;
        for (label, cfg) in &policies {
            let t = Instant::now();
            let report = replay(&reward, &logs, &summary.registry, cfg, now).map_err(anyhow::Error::msg)?;
            let c = &report.verdict.candidate;
            println!(
                "| {name} | {label} | {} | {} | {} | {:.0} | {:.1} |",
                ci(&c.ips),
                ci(&c.snips),
                ci(&c.dr),
                c.effective_samples,
                t.elapsed().as_secs_f64()
            );
            if label.starts_with("linear, greedy") {
                let s = &report.verdict.serving;
                println!(
                    "| {name} | uniform (the logging policy) | {} | {} | {} | {:.0} | |",
                    ci(&s.ips),
                    ci(&s.snips),
                    ci(&s.dr),
                    s.effective_samples
                );
            }
        }
        notes.push(format!(
            "- {name}: {} items, {} context and {} offer features ({} joint); random logs: {} rows, {} clicks, \
             click rate {:.4} (older half {:.4}, newer half {:.4}); Bernoulli-TS logs: click rate {:.4} overall, \
             {:.4} over the newer half's time span ({} rows)",
            summary.items,
            summary.context_features,
            summary.offer_features,
            (1 + summary.context_features) * (1 + summary.offer_features),
            random.rows.len(),
            random.clicks(),
            100.0 * random.click_rate(0, random.rows.len()),
            100.0 * random.click_rate(0, half),
            100.0 * random.click_rate(half, random.rows.len()),
            100.0 * bts.click_rate(0, bts.rows.len()),
            100.0 * bts.click_rate(bts_held, bts.rows.len()),
            bts.rows.len() - bts_held,
        ));
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
