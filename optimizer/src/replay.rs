//! `nudge optimizer replay`: what a reward file would do, on logged data, without pushing.
//! Joins the logs with the reward, trains a candidate on the older part exactly as the service
//! would, and estimates it and the serving policy on the newer part.
use crate::learn::{train_and_judge, LearnConfig, Verdict};
use crate::ledger::Ledger;
use crate::reward::Reward;
use crate::OptimizerError;
use nudge_policy::Registry;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub reward: String,
    pub reward_sha256: String,
    pub serving_version: String,
    pub decisions: usize,
    pub outcomes: u64,
    pub late_outcomes: u64,
    pub examples: usize,
    /// Log lines that were not valid records (each logged with its file and line).
    pub malformed_records: u64,
    pub verdict: Verdict,
}

/// Trains and judges a candidate on `logs` with `reward`, against the registry's serving
/// version, exactly as the service would; pushes nothing.
pub fn replay(
    reward: &Reward,
    logs: &[PathBuf],
    registry: &Path,
    learn: &LearnConfig,
    now_ms: u64,
) -> Result<ReplayReport, OptimizerError> {
    let registry = Registry::existing(registry)?;
    let serving = registry.serving()?.ok_or(OptimizerError::NoServingPolicy)?;
    let (mut ledger, malformed_records) = Ledger::read(logs)?;
    let examples = ledger.examples(reward, now_ms);
    let (_, verdict) = train_and_judge(&serving.policy, &examples, learn)?;
    Ok(ReplayReport {
        reward: reward.source.clone(),
        reward_sha256: reward.sha256.clone(),
        serving_version: serving.manifest.version.clone(),
        decisions: ledger.decisions(),
        outcomes: ledger.outcomes_recorded,
        late_outcomes: ledger.late_outcomes,
        examples: examples.len(),
        malformed_records,
        verdict,
    })
}

impl ReplayReport {
    pub fn markdown(&self) -> String {
        let v = &self.verdict;
        let row = |name: &str, e: &crate::ope::Estimates| {
            format!(
                "| {name} | {:.5} [{:.5}, {:.5}] | {:.5} [{:.5}, {:.5}] | {:.5} [{:.5}, {:.5}] | {:.0} |\n",
                e.ips.value,
                e.ips.lo,
                e.ips.hi,
                e.snips.value,
                e.snips.lo,
                e.snips.hi,
                e.dr.value,
                e.dr.lo,
                e.dr.hi,
                e.effective_samples
            )
        };
        let mut s = format!(
            "reward `{}` (sha256 {}…): {} decisions, {} outcomes ({} late), {} malformed log lines, {} closed examples: {} trained on, {} held out\n\n",
            self.reward,
            &self.reward_sha256[..12],
            self.decisions,
            self.outcomes,
            self.late_outcomes,
            self.malformed_records,
            self.examples,
            v.train_examples,
            v.holdout_examples
        );
        s.push_str("| policy (held-out logs) | IPS [95% CI] | SNIPS [95% CI] | DR [95% CI] | effective samples |\n|---|---|---|---|---|\n");
        s.push_str(&row("candidate", &v.candidate));
        s.push_str(&row(&format!("serving {}", self.serving_version), &v.serving));
        s.push_str(&format!(
            "\nobserved mean reward of the logging policies on those logs: {:.5}\ngate: {} → {}\n",
            v.observed_mean,
            v.rule,
            if v.pass { "would push" } else { "would not push" }
        ));
        s
    }
}
