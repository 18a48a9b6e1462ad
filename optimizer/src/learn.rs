//! Training a candidate policy on joined examples and judging it against the serving one on
//! held-out logs.
use crate::ledger::Example;
use crate::ope::{self, Estimate, Estimates, Sample};
use ndarray::Array1;
use nudge_policy::{Exploration, Policy, RewardModel};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnConfig {
    pub exploration: Exploration,
    /// Prior precision of the weights (ridge).
    pub ridge: f64,
    /// Reward noise variance assumed by the Bayesian update.
    pub noise_var: f64,
    /// Newest share of examples kept out of training, for the off-policy gate.
    pub holdout: f64,
    pub min_examples: usize,
    pub gate: GateConfig,
    pub seed: u64,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            exploration: Exploration::Thompson {
                scale: 1.0,
                samples: 256,
            },
            ridge: 1.0,
            noise_var: 0.25,
            holdout: 0.3,
            min_examples: 50,
            gate: GateConfig::default(),
            seed: 7,
        }
    }
}

/// Push only if the candidate is not worse: `estimator`'s value of the candidate (or its lower
/// bound, with `use_lower_bound`) ≥ the serving policy's value − `tolerance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    pub estimator: Estimator,
    pub use_lower_bound: bool,
    pub tolerance: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            estimator: Estimator::Dr,
            use_lower_bound: false,
            tolerance: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    Ips,
    Snips,
    Dr,
}

/// Joint feature rows of every option a logged decision had, in logged order.
fn options(policy: &Policy, e: &Example) -> Option<Vec<Vec<f64>>> {
    let s = &policy.schema;
    let ctx: HashMap<String, f64> = e.decision.context.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let c = s.context_vector(&ctx);
    let offers: Vec<Vec<f64>> = e
        .decision
        .candidates
        .iter()
        .map(|o| s.offer_vector(&o.features.iter().map(|(k, v)| (k.clone(), *v)).collect()))
        .collect();
    let xs = s.options(&c, &offers);
    // A decision made with a different option layout (e.g. "no offer" toggled) is not comparable.
    (xs.len() == e.decision.probabilities.len()).then_some(xs)
}

/// Fits the reward model on the logged option of each example and returns the candidate.
pub fn fit(base: &Policy, train: &[Example], cfg: &LearnConfig) -> Result<Policy, nudge_policy::PolicyError> {
    let mut feats = Vec::new();
    let mut rewards = Vec::new();
    for e in train {
        if let Some(xs) = options(base, e) {
            feats.push(Array1::from(xs[e.decision.option].clone()));
            rewards.push(e.reward);
        }
    }
    let weights = vec![1.0; feats.len()];
    let model = RewardModel::fit(&feats, &rewards, &weights, cfg.ridge, cfg.noise_var, None)?;
    Ok(Policy {
        schema: base.schema.clone(),
        model,
        exploration: cfg.exploration.clone(),
        projection: base.projection.clone(),
    })
}

/// IPS, SNIPS and DR of `target` on `logs`, with `q` (the candidate's reward model) for DR.
pub fn evaluate(target: &Policy, q: &Policy, logs: &[Example], seed: u64) -> Estimates {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let samples: Vec<Sample> = logs
        .iter()
        .filter_map(|e| {
            let xs = options(target, e)?;
            let (pt, _, _) = target.distribution(&xs, &mut rng);
            let qs: Vec<f64> = xs.iter().map(|x| q.model.mean(&q.model.features(x))).collect();
            let a = e.decision.option;
            Some(Sample {
                reward: e.reward,
                propensity: e.decision.propensity,
                target_prob: pt[a],
                q_logged: qs[a],
                q_target: pt.iter().zip(&qs).map(|(p, q)| p * q).sum(),
            })
        })
        .collect();
    ope::estimate(&samples)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    pub rule: String,
    pub candidate: Estimates,
    pub serving: Estimates,
    /// Mean reward actually observed on the held-out logs (the logging policies' own value).
    pub observed_mean: f64,
    pub train_examples: usize,
    pub holdout_examples: usize,
}

pub fn pick(e: &Estimates, est: Estimator) -> Estimate {
    match est {
        Estimator::Ips => e.ips,
        Estimator::Snips => e.snips,
        Estimator::Dr => e.dr,
    }
}

/// Splits off the newest `holdout` share, trains on the rest, and judges the candidate.
pub fn train_and_judge(serving: &Policy, examples: &[Example], cfg: &LearnConfig) -> Result<(Policy, Verdict), String> {
    if examples.len() < cfg.min_examples {
        return Err(format!(
            "{} examples, fewer than min_examples {}",
            examples.len(),
            cfg.min_examples
        ));
    }
    let cut = ((examples.len() as f64) * (1.0 - cfg.holdout)).round() as usize;
    let (train, held) = examples.split_at(cut.clamp(1, examples.len()));
    let candidate = fit(serving, train, cfg).map_err(|e| e.to_string())?;
    let cand_est = evaluate(&candidate, &candidate, held, cfg.seed);
    let serv_est = evaluate(serving, &candidate, held, cfg.seed);
    let c = pick(&cand_est, cfg.gate.estimator);
    let s = pick(&serv_est, cfg.gate.estimator);
    let lhs = if cfg.gate.use_lower_bound { c.lo } else { c.value };
    let pass = held.is_empty() || (lhs.is_finite() && lhs >= s.value - cfg.gate.tolerance);
    let rule = format!(
        "{:?}{} of candidate {:.5} >= serving {:.5} - {}",
        cfg.gate.estimator,
        if cfg.gate.use_lower_bound { " lower bound" } else { "" },
        lhs,
        s.value,
        cfg.gate.tolerance
    );
    let observed_mean = held.iter().map(|e| e.reward).sum::<f64>() / held.len().max(1) as f64;
    // Ship the model trained on everything once the gate has judged the held-out part.
    let full = fit(serving, examples, cfg).map_err(|e| e.to_string())?;
    Ok((
        full,
        Verdict {
            pass,
            rule,
            candidate: cand_est,
            serving: serv_est,
            observed_mean,
            train_examples: train.len(),
            holdout_examples: held.len(),
        },
    ))
}
