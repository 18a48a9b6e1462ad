//! Learning *when* and *what* to offer over a whole conversation, from logged episodes.
//!
//! Two learners, both trained with candle on the joint features `[1, c] ⊗ [1, o]` the bandits
//! read, and both written out as an ordinary [`Policy`] (a ReLU trunk and a last layer), so a
//! server loads, explores with and logs an RL policy exactly like a bandit one:
//!
//! - **`cql`**: deep Q-learning from the logs with a target network and the conservative penalty
//!   of CQL (Kumar et al. 2020). Offline, plain Q-learning trusts the max over options the logs
//!   rarely tried, and its errors compound through the bootstrap; CQL adds
//!   `α · (logsumexp_a Q(s,a) − Q(s, a_logged))`, pushing down what the logs never did. The
//!   served policy is greedy in Q with the configured exploration (ε-greedy or softmax), so the
//!   next logs stay usable for evaluation.
//! - **`policy_gradient`**: a softmax policy trained by gradient ascent on the per-decision
//!   importance-sampled return (the PDIS estimate of `seq_ope`, with cumulative weights clipped
//!   at `max_weight` and a per-step baseline), plus an entropy bonus that keeps it exploring.
//!   Served as softmax at temperature 1: its logits are its probabilities.
//!
//! Both are seeded (same logs, same seed, same policy), report progress through `tracing`
//! (every 10 %) and an optional callback (every 1 %), and checkpoint their weights every
//! `checkpoint_every` steps when a checkpoint file is given. A run of the same job (same
//! settings, data and seed; an optimizer restarted mid-training) resumes from it: the skipped
//! steps draw their batches again so the rest draw the same ones, and Adam's moments start
//! afresh.
use crate::episodes::{Credit, Episode};
use crate::neural::init_layer;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndarray::{Array1, Array2};
use nudge_policy::{Exploration, FeatureSchema, Policy, RewardModel, Trunk};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Learner {
    /// Conservative deep Q-learning with a target network.
    #[default]
    Cql,
    /// Importance-weighted policy gradient.
    PolicyGradient,
}

impl Learner {
    /// Its name in configuration and reports (`cql`, `policy_gradient`).
    pub fn name(self) -> &'static str {
        match self {
            Learner::Cql => "cql",
            Learner::PolicyGradient => "policy_gradient",
        }
    }
}

/// `[learn.rl]`: train on conversations as episodes instead of on decisions alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// The learner.
    pub learner: Learner,
    /// Discount per decision of a conversation, in [0, 1].
    pub gamma: f64,
    /// Where outcomes are credited.
    pub credit: Credit,
    /// Units of each ReLU layer.
    pub hidden: Vec<usize>,
    /// Gradient steps.
    pub steps: usize,
    /// Transitions (cql) or conversations (policy_gradient) per step.
    pub batch_size: usize,
    /// Adam's step size.
    pub learning_rate: f64,
    /// Weight of the conservative penalty (cql); 0 is plain deep Q-learning.
    pub cql_alpha: f64,
    /// Steps between copies of the Q-network into the target network (cql).
    pub target_every: usize,
    /// Largest cumulative importance weight in the policy-gradient objective.
    pub max_weight: f64,
    /// Weight of the entropy bonus (policy_gradient).
    pub entropy: f64,
    /// Ridge penalty of the fitted-Q evaluation behind the DR estimate.
    pub fqe_ridge: f64,
    /// Where training state is saved (and resumed from), if anywhere.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            learner: Learner::Cql,
            gamma: 0.95,
            credit: Credit::Decision,
            hidden: vec![32, 32],
            steps: 3000,
            batch_size: 256,
            learning_rate: 1e-3,
            cql_alpha: 0.5,
            target_every: 100,
            max_weight: 20.0,
            entropy: 0.01,
            fqe_ridge: 1.0,
            checkpoint: None,
            checkpoint_every: 500,
        }
    }
}

/// Why an RL candidate could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    /// A `[learn.rl]` setting is out of range.
    #[error("learn.rl.{field}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// A tensor operation failed.
    #[error("rl training: {0}")]
    Candle(#[from] candle_core::Error),
    /// No step to learn from.
    #[error("rl training: no decisions in the episodes")]
    NoSteps,
    /// Training ended with NaN or infinite weights.
    #[error("rl training: weights diverged (NaN or infinite): lower learn.rl.learning_rate")]
    Diverged,
    /// The trained weights do not form a valid policy.
    #[error(transparent)]
    Policy(#[from] nudge_policy::PolicyError),
    /// A trained tensor could not be laid out as the policy format's matrix.
    #[error("rl training: {0}")]
    Layout(#[from] ndarray::ShapeError),
    /// The checkpoint could not be written.
    #[error("rl checkpoint {path}: {source}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: candle_core::Error,
    },
}

impl RlConfig {
    /// Checks every setting, naming the one at fault.
    pub fn validate(&self, exploration: &Exploration) -> Result<(), RlError> {
        let bad = |field: &'static str, reason: &'static str| Err(RlError::Setting { field, reason });
        if !(0.0..=1.0).contains(&self.gamma) {
            return bad("gamma", "a discount in [0, 1]");
        }
        if self.hidden.is_empty() || self.hidden.iter().any(|&h| h == 0 || h > 4096) {
            return bad("hidden", "1 or more layers of 1..=4096 units");
        }
        if !(1..=10_000_000).contains(&self.steps) {
            return bad("steps", "1..=10000000");
        }
        if !(1..=1_000_000).contains(&self.batch_size) {
            return bad("batch_size", "1..=1000000");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "a positive number");
        }
        if !(self.cql_alpha >= 0.0 && self.cql_alpha.is_finite()) {
            return bad("cql_alpha", "0 or more");
        }
        if self.target_every == 0 || self.checkpoint_every == 0 {
            return bad("target_every", "target_every and checkpoint_every must be at least 1");
        }
        if !(self.max_weight >= 1.0 && self.max_weight.is_finite()) {
            return bad("max_weight", "at least 1");
        }
        if !(self.entropy >= 0.0 && self.entropy.is_finite()) {
            return bad("entropy", "0 or more");
        }
        if !(self.fqe_ridge > 0.0 && self.fqe_ridge.is_finite()) {
            return bad("fqe_ridge", "a positive number");
        }
        if self.learner == Learner::Cql
            && !matches!(
                exploration,
                Exploration::EpsilonGreedy { .. } | Exploration::Softmax { .. }
            )
        {
            return bad(
                "learner",
                "a Q-learned policy explores with learn.exploration epsilon_greedy or softmax (its last layer has no posterior)",
            );
        }
        Ok(())
    }
}

pub use nudge_records::audit::RlReport;

/// One training step: the loss of step `i` on a batch drawn with the rng.
type StepLoss<'a> = Box<dyn FnMut(&mut rand::rngs::StdRng, usize) -> candle_core::Result<Tensor> + 'a>;

/// Progress: `(step, steps, loss)` every 1 % of the steps.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, f64);

struct Net {
    layers: Vec<(Var, Var)>,
    head: (Var, Var),
}

impl Net {
    fn new(rng: &mut impl Rng, input: usize, hidden: &[usize], dev: &Device) -> candle_core::Result<Net> {
        let mut layers = Vec::new();
        let mut fan_in = input;
        for &h in hidden {
            layers.push(init_layer(rng, fan_in, h, DType::F32, dev)?);
            fan_in = h;
        }
        let head = init_layer(rng, fan_in, 1, DType::F32, dev)?;
        Ok(Net { layers, head })
    }

    fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.layers.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect();
        v.extend([self.head.0.clone(), self.head.1.clone()]);
        v
    }

    fn snapshot(&self) -> candle_core::Result<Vec<Tensor>> {
        self.vars().iter().map(|v| v.as_tensor().copy()).collect()
    }

    /// `[rows, D] → [rows]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let params: Vec<Tensor> = self.vars().iter().map(|v| v.as_tensor().clone()).collect();
        forward(x, &params)
    }

    /// Trunk and last layer as the policy format has them, the last layer times `scale`.
    fn export(&self, scale: f64) -> Result<(Trunk, Array1<f64>), RlError> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (w, b) in &self.layers {
            let (rows, cols) = w.dims2()?;
            let w = w.as_tensor().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let b = b.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?;
            layers.push((Array2::from_shape_vec((rows, cols), w)?, Array1::from(b)));
        }
        let hw = self
            .head
            .0
            .as_tensor()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let hb = self.head.1.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let theta: Array1<f64> = std::iter::once(hb[0]).chain(hw).map(|v| v * scale).collect();
        let trunk = Trunk { layers };
        let finite = trunk
            .layers
            .iter()
            .all(|(w, b)| w.iter().chain(b.iter()).all(|v| v.is_finite()))
            && theta.iter().all(|v| v.is_finite());
        if !finite {
            return Err(RlError::Diverged);
        }
        Ok((trunk, theta))
    }
}

/// The MLP on explicit parameters `[w1, b1, …, w_head, b_head]` (the target network is one).
fn forward(x: &Tensor, params: &[Tensor]) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    let (hidden, head) = params.split_at(params.len() - 2);
    for wb in hidden.chunks(2) {
        h = h.matmul(&wb[0].t()?)?.broadcast_add(&wb[1])?.relu()?;
    }
    h.matmul(&head[0].t()?)?.broadcast_add(&head[1])?.squeeze(1)
}

/// Joint rows of `steps`' options padded to `width` options each, with their mask: rows
/// `[steps·width, D]`, mask `[steps, width]`.
fn padded(
    schema: &FeatureSchema,
    steps: &[&crate::episodes::Step],
    width: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let d = schema.dim();
    let mut rows = vec![0f32; steps.len() * width * d];
    let mut mask = vec![0f32; steps.len() * width];
    for (i, s) in steps.iter().enumerate() {
        for (k, x) in s.options(schema).iter().enumerate().take(width) {
            let at = (i * width + k) * d;
            for (r, v) in rows[at..at + d].iter_mut().zip(x) {
                *r = *v as f32;
            }
            mask[i * width + k] = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(rows, (steps.len() * width, d), dev)?,
        Tensor::from_vec(mask, (steps.len(), width), dev)?,
    ))
}

/// `log Σₐ mask·exp(q)` per row, and `q` with masked-out options at −1e9.
fn masked_logsumexp(q: &Tensor, mask: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let off = ((mask - 1.0)? * 1e9)?;
    let qm = (q + off)?;
    let m = qm.max_keepdim(D::Minus1)?.detach();
    let lse = (qm.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &m)?.squeeze(1)?;
    Ok((lse, qm))
}

fn one_hot(actions: &[usize], width: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let mut v = vec![0f32; actions.len() * width];
    for (i, &a) in actions.iter().enumerate() {
        v[i * width + a] = 1.0;
    }
    Tensor::from_vec(v, (actions.len(), width), dev)
}

/// A fingerprint of everything a run depends on, so a checkpoint resumes only the same run.
fn fingerprint(cfg: &RlConfig, schema: &FeatureSchema, episodes: &[Episode], seed: u64) -> String {
    let mut h = Sha256::new();
    let mut c = cfg.clone();
    c.checkpoint = None;
    c.checkpoint_every = 0;
    h.update(serde_json::to_vec(&c).unwrap_or_default());
    h.update(serde_json::to_vec(schema).unwrap_or_default());
    h.update(seed.to_le_bytes());
    for e in episodes {
        h.update(e.id.as_bytes());
        for s in &e.steps {
            h.update(s.decision_id.as_bytes());
            h.update(s.reward.to_le_bytes());
        }
    }
    hex::encode(&h.finalize()[..8])
}

fn save_checkpoint(path: &Path, net: &Net, step: usize, print: &str) -> Result<(), RlError> {
    let mut map: HashMap<String, Tensor> = net
        .vars()
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i}"), v.as_tensor().clone()))
        .collect();
    let meta = |e| RlError::Checkpoint {
        path: path.to_path_buf(),
        source: e,
    };
    map.insert("step".into(), Tensor::new(&[step as u32], &Device::Cpu).map_err(meta)?);
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(meta)?;
    std::fs::write(path.with_extension("run"), print).map_err(|e| meta(e.into()))?;
    std::fs::rename(&tmp, path).map_err(|e| meta(e.into()))
}

/// The checkpoint's step, loaded into `net`, when it belongs to this run.
fn resume(path: &Path, net: &Net, print: &str) -> usize {
    let same = std::fs::read_to_string(path.with_extension("run")).is_ok_and(|p| p == print);
    if !same {
        return 0;
    }
    let Ok(map) = candle_core::safetensors::load(path, &Device::Cpu) else {
        return 0;
    };
    let vars = net.vars();
    for (i, v) in vars.iter().enumerate() {
        let ok = map.get(&format!("p{i}")).is_some_and(|t| v.set(t).is_ok());
        if !ok {
            return 0;
        }
    }
    map.get("step")
        .and_then(|t| t.to_vec1::<u32>().ok())
        .and_then(|v| v.first().copied())
        .map_or(0, |s| s as usize)
}

/// Trains a candidate on `episodes` with the schema of `base`, explored per `exploration`
/// (a Q-learned policy) or as softmax (a policy-gradient one).
pub fn train(
    base: &Policy,
    episodes: &[Episode],
    cfg: &RlConfig,
    exploration: &Exploration,
    seed: u64,
    mut progress: Option<Progress<'_>>,
) -> Result<(Policy, RlReport), RlError> {
    cfg.validate(exploration)?;
    let start = std::time::Instant::now();
    let schema = &base.schema;
    let decisions: usize = episodes.iter().map(|e| e.steps.len()).sum();
    if decisions == 0 {
        return Err(RlError::NoSteps);
    }
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let net = Net::new(&mut rng, schema.dim(), &cfg.hidden, &dev)?;
    let print = fingerprint(cfg, schema, episodes, seed);
    let resumed_at = cfg.checkpoint.as_deref().map_or(0, |p| resume(p, &net, &print));
    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    // Rewards in units of their root mean square: the learning rate then means the same
    // whatever currency the reward file speaks.
    let rms = (episodes
        .iter()
        .flat_map(|e| e.steps.iter().map(|s| s.reward * s.reward))
        .sum::<f64>()
        / decisions as f64)
        .sqrt();
    let scale = if rms > 1e-12 { rms } else { 1.0 };
    let width = episodes
        .iter()
        .flat_map(|e| e.steps.iter().map(|s| s.option_count(schema)))
        .max()
        .unwrap_or(1);
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut trainer: StepLoss<'_> = match cfg.learner {
        Learner::Cql => Box::new(cql_step(&net, schema, episodes, cfg, width, scale, &dev)?),
        Learner::PolicyGradient => Box::new(pg_step(&net, schema, episodes, cfg, width, scale, &dev)),
    };
    // The steps of a resumed run draw the same batches they would have drawn.
    for step in 0..cfg.steps {
        let loss = trainer(&mut rng, step)?;
        if step < resumed_at {
            continue;
        }
        opt.backward_step(&loss)?;
        let l = f64::from(loss.to_scalar::<f32>()?);
        losses.push(l);
        if (step + 1).is_multiple_of((cfg.steps / 100).max(1)) {
            if let Some(p) = progress.as_mut() {
                p(step + 1, cfg.steps, l);
            }
        }
        if (step + 1).is_multiple_of((cfg.steps / 10).max(1)) {
            tracing::info!(learner = ?cfg.learner, step = step + 1, steps = cfg.steps, loss = l, "rl training");
        }
        if let Some(p) = &cfg.checkpoint {
            if (step + 1).is_multiple_of(cfg.checkpoint_every) {
                save_checkpoint(p, &net, step + 1, &print)?;
            }
        }
    }
    drop(trainer);
    let tenth = (losses.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (loss_start, loss_end) = (
        mean(&losses[..tenth.min(losses.len())]),
        mean(&losses[losses.len().saturating_sub(tenth)..]),
    );
    let (policy_scale, exploration) = match cfg.learner {
        Learner::Cql => (scale, exploration.clone()),
        Learner::PolicyGradient => (1.0, Exploration::Softmax { temperature: 1.0 }),
    };
    let (trunk, theta) = net.export(policy_scale)?;
    let mut model = RewardModel::prior(theta.len(), 1e-8);
    model.theta = theta;
    model.trunk = Some(trunk);
    let policy = Policy {
        schema: schema.clone(),
        model,
        exploration,
        projection: base.projection.clone(),
    };
    policy.validate()?;
    Ok((
        policy,
        RlReport {
            learner: cfg.learner.name().into(),
            episodes: episodes.len(),
            decisions,
            steps: losses.len(),
            resumed_at,
            loss_start,
            loss_end,
            reward_scale: scale,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// One CQL step's loss on a batch of transitions drawn uniformly from all decisions.
fn cql_step<'a>(
    net: &'a Net,
    schema: &'a FeatureSchema,
    episodes: &'a [Episode],
    cfg: &'a RlConfig,
    width: usize,
    scale: f64,
    dev: &'a Device,
) -> candle_core::Result<impl FnMut(&mut rand::rngs::StdRng, usize) -> candle_core::Result<Tensor> + 'a> {
    let index: Vec<(usize, usize)> = episodes
        .iter()
        .enumerate()
        .flat_map(|(i, e)| (0..e.steps.len()).map(move |t| (i, t)))
        .collect();
    let mut target = net.snapshot()?;
    Ok(move |rng: &mut rand::rngs::StdRng, step: usize| {
        if step.is_multiple_of(cfg.target_every) && step > 0 {
            target = net.snapshot()?;
        }
        let picks: Vec<(usize, usize)> = (0..cfg.batch_size)
            .map(|_| index[rng.random_range(0..index.len())])
            .collect();
        let now: Vec<&crate::episodes::Step> = picks.iter().map(|&(i, t)| &episodes[i].steps[t]).collect();
        let next: Vec<Option<&crate::episodes::Step>> =
            picks.iter().map(|&(i, t)| episodes[i].steps.get(t + 1)).collect();
        let b = now.len();
        let (x, mask) = padded(schema, &now, width, dev)?;
        let placeholder = now[0];
        let next_steps: Vec<&crate::episodes::Step> = next.iter().map(|n| n.unwrap_or(placeholder)).collect();
        let (xn, mask_n) = padded(schema, &next_steps, width, dev)?;
        let alive: Vec<f32> = next.iter().map(|n| if n.is_some() { 1.0 } else { 0.0 }).collect();
        let alive = Tensor::from_vec(alive, b, dev)?;
        let rewards: Vec<f32> = now.iter().map(|s| (s.reward / scale) as f32).collect();
        let rewards = Tensor::from_vec(rewards, b, dev)?;
        let act = one_hot(&now.iter().map(|s| s.action).collect::<Vec<_>>(), width, dev)?;

        let q = net.forward(&x)?.reshape((b, width))?;
        let q_logged = (&q * &act)?.sum(1)?;
        let qn = forward(&xn, &target)?.reshape((b, width))?;
        let (_, qn_masked) = masked_logsumexp(&qn, &mask_n)?;
        let best_next = qn_masked.max(1)?;
        let y = (rewards + (best_next * alive)?.affine(cfg.gamma, 0.0)?)?.detach();
        let td = (&q_logged - &y)?.sqr()?.mean_all()?;
        if cfg.cql_alpha == 0.0 {
            return Ok(td);
        }
        let (lse, _) = masked_logsumexp(&q, &mask)?;
        let penalty = (lse - &q_logged)?.mean_all()?;
        td + penalty.affine(cfg.cql_alpha, 0.0)?
    })
}

/// One policy-gradient step's loss (the negated clipped PDIS objective and entropy bonus) on
/// a batch of conversations.
fn pg_step<'a>(
    net: &'a Net,
    schema: &'a FeatureSchema,
    episodes: &'a [Episode],
    cfg: &'a RlConfig,
    width: usize,
    scale: f64,
    dev: &'a Device,
) -> impl FnMut(&mut rand::rngs::StdRng, usize) -> candle_core::Result<Tensor> + 'a {
    // Baseline: the mean reward at each step index.
    let horizon = episodes.iter().map(|e| e.steps.len()).max().unwrap_or(0);
    let mut sums = vec![(0.0, 0usize); horizon];
    for e in episodes {
        for (t, s) in e.steps.iter().enumerate() {
            sums[t].0 += s.reward;
            sums[t].1 += 1;
        }
    }
    let baseline: Vec<f64> = sums.iter().map(|(s, n)| s / (*n).max(1) as f64).collect();
    let mut order: Vec<usize> = (0..episodes.len()).collect();
    let mut at = order.len();
    move |rng: &mut rand::rngs::StdRng, _step: usize| {
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size.min(episodes.len()) {
            if at == order.len() {
                order.shuffle(rng);
                at = 0;
            }
            batch.push(order[at]);
            at += 1;
        }
        let steps: Vec<(usize, usize, &crate::episodes::Step)> = batch
            .iter()
            .enumerate()
            .flat_map(|(k, &i)| episodes[i].steps.iter().enumerate().map(move |(t, s)| (k, t, s)))
            .collect();
        let n = steps.len();
        let refs: Vec<&crate::episodes::Step> = steps.iter().map(|x| x.2).collect();
        let (x, mask) = padded(schema, &refs, width, dev)?;
        let act = one_hot(&refs.iter().map(|s| s.action).collect::<Vec<_>>(), width, dev)?;
        // lower[i][j] = 1 when j is an earlier-or-same step of i's conversation.
        let mut lower = vec![0f32; n * n];
        for (i, a) in steps.iter().enumerate() {
            for (j, b) in steps.iter().enumerate() {
                if a.0 == b.0 && b.1 <= a.1 {
                    lower[i * n + j] = 1.0;
                }
            }
        }
        let lower = Tensor::from_vec(lower, (n, n), dev)?;
        let log_mu: Vec<f32> = refs.iter().map(|s| s.propensity.ln() as f32).collect();
        let log_mu = Tensor::from_vec(log_mu, n, dev)?;
        let adv: Vec<f32> = steps
            .iter()
            .map(|(_, t, s)| (cfg.gamma.powi(*t as i32) * (s.reward - baseline[*t]) / scale) as f32)
            .collect();
        let adv = Tensor::from_vec(adv, n, dev)?;

        let logits = net.forward(&x)?.reshape((n, width))?;
        let (lse, masked) = masked_logsumexp(&logits, &mask)?;
        let log_pi_all = masked.broadcast_sub(&lse.unsqueeze(1)?)?;
        let log_pi = (&log_pi_all * &act)?.sum(1)?;
        let cum = lower.matmul(&(log_pi - log_mu)?.unsqueeze(1)?)?.squeeze(1)?;
        let cap = cfg.max_weight.ln();
        let clipped = (&cum - (&cum - cap)?.relu()?)?;
        let objective = (clipped.exp()? * adv)?
            .sum_all()?
            .affine(1.0 / batch.len() as f64, 0.0)?;
        let pi = (log_pi_all.exp()? * &mask)?;
        let entropy = ((&pi * (log_pi_all * &mask)?)?.sum_all()?.affine(-1.0 / n as f64, 0.0))?;
        objective.neg()? - entropy.affine(cfg.entropy, 0.0)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episodes::Step;
    use crate::learn::{evaluate_episodes, fit, LearnConfig};

    // A conversation where timing matters. Turn 1, the problem is open: an offer is accepted
    // with probability 0.3 (reward 1) and ends the talk either way (the customer is annoyed
    // or done); no offer goes on. Turn 2, the problem is solved: an offer is accepted with
    // probability 0.8. A myopic learner offers at turn 1 (0.3 > 0); the optimum waits:
    // γ · 0.8 = 0.76.
    const GAMMA: f64 = 0.95;
    const OPTIMUM: f64 = GAMMA * 0.8;

    fn schema() -> FeatureSchema {
        FeatureSchema {
            context: vec!["stage=issue".into(), "stage=resolved".into()],
            offer: vec!["offer=coupon".into()],
            allow_none: true,
        }
    }

    fn context(resolved: bool) -> Vec<f64> {
        if resolved {
            vec![0.0, 1.0]
        } else {
            vec![1.0, 0.0]
        }
    }

    /// Conversations logged by a uniform policy (offer or not, ½ each).
    fn uniform_logs(n: usize, seed: u64) -> Vec<Episode> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let mut steps = Vec::new();
                for (t, resolved) in [false, true].into_iter().enumerate() {
                    let offer = rng.random_bool(0.5);
                    let p = if resolved { 0.8 } else { 0.3 };
                    let reward = f64::from(u8::from(offer && rng.random_bool(p)));
                    steps.push(Step {
                        decision_id: format!("{i}-{t}"),
                        context: context(resolved),
                        offers: vec![vec![1.0]],
                        action: if offer { 0 } else { 1 },
                        propensity: 0.5,
                        reward,
                    });
                    if offer {
                        break;
                    }
                }
                Episode {
                    id: format!("c{i}"),
                    steps,
                }
            })
            .collect()
    }

    /// Probability of offering in each stage under `p`.
    fn offer_probs(p: &Policy) -> [f64; 2] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        [false, true].map(|r| {
            let xs = p.schema.options(&context(r), &[vec![1.0]]);
            p.distribution(&xs, &mut rng).0[0]
        })
    }

    /// The exact value of `p` in this conversation.
    fn value(p: &Policy) -> f64 {
        let [issue, resolved] = offer_probs(p);
        issue * 0.3 + (1.0 - issue) * GAMMA * resolved * 0.8
    }

    fn greedy(p: &Policy) -> Policy {
        Policy {
            exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
            ..p.clone()
        }
    }

    fn base() -> Policy {
        let s = schema();
        Policy {
            model: RewardModel::prior(s.dim(), 1.0),
            schema: s,
            exploration: Exploration::EpsilonGreedy { epsilon: 1.0 },
            projection: None,
        }
    }

    #[test]
    fn rl_learners_wait_for_the_resolution_where_a_bandit_offers_at_once() {
        let logs = uniform_logs(3000, 5);
        let cfg = RlConfig {
            steps: 1500,
            batch_size: 128,
            hidden: vec![16],
            learning_rate: 3e-3,
            gamma: GAMMA,
            ..Default::default()
        };
        let eps = Exploration::EpsilonGreedy { epsilon: 0.1 };
        let mut seen = 0;
        let mut progress = |_: usize, _: usize, _: f64| seen += 1;
        let (cql, report) = train(&base(), &logs, &cfg, &eps, 3, Some(&mut progress)).unwrap();
        assert_eq!(seen, 100);
        assert_eq!((report.episodes, report.steps), (3000, 1500));
        let v = value(&greedy(&cql));
        eprintln!(
            "cql: {report:?}, greedy value {v}, optimum {OPTIMUM}, offer probs {:?}",
            offer_probs(&cql)
        );
        assert!(v >= OPTIMUM - 1e-9, "cql greedy value {v}");
        // The served policy explores as configured: ε/2 at the stage it avoids.
        assert!((offer_probs(&cql)[0] - 0.05).abs() < 1e-9);

        let pg_cfg = RlConfig {
            learner: Learner::PolicyGradient,
            batch_size: 64,
            learning_rate: 1e-2,
            ..cfg.clone()
        };
        let (pg, report) = train(&base(), &logs, &pg_cfg, &eps, 3, None).unwrap();
        let v = value(&pg);
        eprintln!("pg: {report:?}, value {v}, offer probs {:?}", offer_probs(&pg));
        assert!(matches!(pg.exploration, Exploration::Softmax { .. }));
        assert!(v >= OPTIMUM - 0.05, "policy-gradient value {v}");

        // The same logs and seed give the same policy.
        let (again, _) = train(&base(), &logs, &cfg, &eps, 3, None).unwrap();
        assert_eq!(again, cql);

        // A bandit fitted on the same decisions, each alone, offers at once.
        let bandit_value = {
            let (b, _) = fit(&base(), &bandit_examples(&logs), &LearnConfig::default()).unwrap();
            value(&greedy(&b))
        };
        assert!(bandit_value < 0.35, "bandit {bandit_value}");
    }

    /// The same logs as decision records, for the bandit.
    fn bandit_examples(logs: &[Episode]) -> Vec<crate::ledger::Example> {
        use nudge_records::{DecisionRecord, LoggedOffer, DECISION_SCHEMA};
        logs.iter()
            .flat_map(|e| e.steps.iter())
            .map(|s| crate::ledger::Example {
                decision: DecisionRecord {
                    schema: DECISION_SCHEMA,
                    decision_id: s.decision_id.clone(),
                    time_ms: 0,
                    conversation_id: String::new(),
                    customer: String::new(),
                    channel: String::new(),
                    policy_version: "v1".into(),
                    model_version: String::new(),
                    offer_id: String::new(),
                    scores: vec![],
                    how: "explore".into(),
                    context: schema()
                        .context
                        .iter()
                        .cloned()
                        .zip(s.context.iter().copied())
                        .collect(),
                    candidates: vec![LoggedOffer {
                        id: "coupon".into(),
                        features: [("offer=coupon".to_string(), 1.0)].into(),
                    }],
                    option: s.action,
                    propensity: s.propensity,
                    probabilities: vec![0.5, 0.5],
                },
                reward: s.reward,
            })
            .collect()
    }

    #[test]
    fn a_checkpointed_run_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let logs = uniform_logs(500, 8);
        let eps = Exploration::EpsilonGreedy { epsilon: 0.1 };
        let cfg = RlConfig {
            steps: 200,
            batch_size: 64,
            hidden: vec![8],
            checkpoint: Some(dir.path().join("rl.ckpt")),
            checkpoint_every: 100,
            ..Default::default()
        };
        let (full, report) = train(&base(), &logs, &cfg, &eps, 4, None).unwrap();
        assert_eq!((report.resumed_at, report.steps), (0, 200));
        // The same job again (a restarted optimizer): it resumes from the last checkpoint.
        let (again, report) = train(&base(), &logs, &cfg, &eps, 4, None).unwrap();
        assert_eq!((report.resumed_at, report.steps), (200, 0));
        assert_eq!(again, full);
        // Another job (other data, or other settings) does not resume from it.
        let (_, report) = train(&base(), &logs[..400], &cfg, &eps, 4, None).unwrap();
        assert_eq!(report.resumed_at, 0);
        let longer = RlConfig {
            steps: 300,
            ..cfg.clone()
        };
        let (_, report) = train(&base(), &logs, &longer, &eps, 4, None).unwrap();
        assert_eq!(report.resumed_at, 0);
    }

    #[test]
    fn sequential_estimates_of_a_fixed_policy_cover_its_true_value() {
        // A fixed policy: offers with probability 0.2 while the problem is open, 0.9 after.
        let s = schema();
        let mut model = RewardModel::prior(s.dim(), 1.0);
        // Softmax logits: joint [1, o, issue, issue·o, resolved, resolved·o].
        let logit = |p: f64| (p / (1.0 - p)).ln();
        model.theta = Array1::from(vec![0.0, 0.0, 0.0, logit(0.2), 0.0, logit(0.9)]);
        let target = Policy {
            model,
            schema: s,
            exploration: Exploration::Softmax { temperature: 1.0 },
            projection: None,
        };
        let [a, b] = offer_probs(&target);
        assert!((a - 0.2).abs() < 1e-9 && (b - 0.9).abs() < 1e-9);
        let truth = value(&target);
        let rl = RlConfig {
            gamma: GAMMA,
            ..Default::default()
        };
        let mut covered = 0;
        for seed in 0..10 {
            let logs = uniform_logs(2000, 100 + seed);
            let est = evaluate_episodes(&target, &logs, &logs, &rl, seed);
            for e in [est.ips, est.snips, est.dr] {
                covered += usize::from(e.lo <= truth && truth <= e.hi);
                assert!((e.value - truth).abs() < 0.08, "{est:?} vs {truth}");
            }
            // DR with a fitted q̂ is no wider than plain PDIS.
            assert!(est.dr.hi - est.dr.lo <= est.ips.hi - est.ips.lo + 1e-9, "{est:?}");
        }
        // 95 % intervals: about 28.5 of 30 cover; fewer than 25 would be a broken interval.
        assert!(covered >= 25, "{covered} of 30 intervals cover the true value {truth}");
    }
}
