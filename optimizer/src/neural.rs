//! Neural-linear reward models (Riquelme, Tucker & Snoek, "Deep Bayesian Bandits Showdown",
//! 2018): an MLP trunk learns a representation of the joint features by regression on the
//! logged rewards, then the Bayesian linear layer is fitted on `[1, trunk(x)]`. The trunk finds
//! interactions the outer product does not have (three-way, thresholds); the last layer keeps an
//! exact posterior, so Thompson sampling and UCB explore as they do for the linear model.
//!
//! The trunk is trained with candle in f64 (the policy format's precision) from weights drawn
//! with a seeded rng, on batches in a seeded order, so the same logs give the same policy.
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndarray::{Array1, Array2};
use nudge_policy::Trunk;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Why a trunk could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    /// A tensor operation failed.
    #[error("trunk training: {0}")]
    Candle(#[from] candle_core::Error),
    /// The examples do not form a matrix with one reward per row.
    #[error("trunk training: {rows} rows of {features} features and {rewards} rewards")]
    Shape {
        /// Rows of features.
        rows: usize,
        /// Features in the first row (every row must have as many).
        features: usize,
        /// Rewards given.
        rewards: usize,
    },
    /// A trained tensor could not be laid out as the policy format's matrix.
    #[error("trunk training: {0}")]
    Layout(#[from] ndarray::ShapeError),
    /// Training ended with NaN or infinite weights.
    #[error("trunk training: weights diverged (NaN or infinite): lower learn.model.learning_rate")]
    Diverged,
    /// A `[learn.model]` setting is out of range.
    #[error("learn.model.{field}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its allowed range.
        reason: &'static str,
    },
}

/// How the trunk is shaped and trained (`[learn.model]` with `kind = "neural_linear"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkConfig {
    /// Units of each ReLU layer; the last one is what the Bayesian layer reads.
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            hidden: vec![32, 16],
            epochs: 40,
            batch_size: 64,
            learning_rate: 3e-3,
            weight_decay: 1e-4,
        }
    }
}

impl TrunkConfig {
    pub fn validate(&self) -> Result<(), TrunkError> {
        let bad = |field: &'static str, reason: &'static str| Err(TrunkError::Setting { field, reason });
        if self.hidden.is_empty() || self.hidden.iter().any(|&h| h == 0 || h > 4096) {
            return bad("hidden", "1 or more layers of 1..=4096 units");
        }
        if !(1..=10_000).contains(&self.epochs) {
            return bad("epochs", "1..=10000");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "at least 1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "a positive number");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", "0 or more");
        }
        Ok(())
    }
}

pub use nudge_records::audit::TrunkReport;

/// PyTorch's default `Linear` initialisation: weights and biases uniform in ±1/√fan_in.
pub(crate) fn init_layer(
    rng: &mut impl Rng,
    fan_in: usize,
    fan_out: usize,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<(Var, Var)> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let w: Vec<f64> = (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound)).collect();
    let b: Vec<f64> = (0..fan_out).map(|_| rng.random_range(-bound..bound)).collect();
    Ok((
        Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), dev)?.to_dtype(dtype)?)?,
        Var::from_tensor(&Tensor::from_vec(b, fan_out, dev)?.to_dtype(dtype)?)?,
    ))
}

fn forward(x: &Tensor, layers: &[(Var, Var)], head: &(Var, Var)) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (w, b) in layers {
        h = h.matmul(&w.t()?)?.broadcast_add(b)?.relu()?;
    }
    h.matmul(&head.0.t()?)?.broadcast_add(&head.1)?.squeeze(1)
}

fn mse(pred: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    pred.sub(y)?.sqr()?.mean_all()
}

/// Trains a trunk (and a throw-away linear head) to predict `rewards` from `features` (one
/// joint feature row per example).
pub fn train_trunk(
    features: &[Vec<f64>],
    rewards: &[f64],
    cfg: &TrunkConfig,
    seed: u64,
) -> Result<(Trunk, TrunkReport), TrunkError> {
    cfg.validate()?;
    let n = features.len();
    let d = features.first().map_or(0, Vec::len);
    if n == 0 || d == 0 || rewards.len() != n || features.iter().any(|f| f.len() != d) {
        return Err(TrunkError::Shape {
            rows: n,
            features: d,
            rewards: rewards.len(),
        });
    }
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let x = Tensor::from_vec(features.concat(), (n, d), &dev)?;
    let y = Tensor::from_vec(rewards.to_vec(), n, &dev)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut layers = Vec::new();
    let mut fan_in = d;
    for &h in &cfg.hidden {
        layers.push(init_layer(&mut rng, fan_in, h, DType::F64, &dev)?);
        fan_in = h;
    }
    let head = init_layer(&mut rng, fan_in, 1, DType::F64, &dev)?;
    // Start the head at the mean reward: rewards are often rare events near 0, and the first
    // steps should learn features, not the offset.
    let mean = rewards.iter().sum::<f64>() / n as f64;
    head.1.set(&Tensor::from_vec(vec![mean], 1, &dev)?)?;
    let mut params: Vec<Var> = layers.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect();
    params.extend([head.0.clone(), head.1.clone()]);
    let mut opt = AdamW::new(
        params,
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mse_start = mse(&forward(&x, &layers, &head)?, &y)?.to_scalar::<f64>()?;
    let mut order: Vec<u32> = (0..n as u32).collect();
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::new(batch, &dev)?;
            let loss = mse(
                &forward(&x.index_select(&idx, 0)?, &layers, &head)?,
                &y.index_select(&idx, 0)?,
            )?;
            opt.backward_step(&loss)?;
        }
    }
    let mse_end = mse(&forward(&x, &layers, &head)?, &y)?.to_scalar::<f64>()?;
    let mut trunk_layers = Vec::with_capacity(layers.len());
    for (w, b) in &layers {
        let (rows, cols) = w.dims2()?;
        let w = Array2::from_shape_vec((rows, cols), w.flatten_all()?.to_vec1::<f64>()?)?;
        trunk_layers.push((w, Array1::from(b.to_vec1::<f64>()?)));
    }
    let trunk = Trunk { layers: trunk_layers };
    if trunk
        .layers
        .iter()
        .any(|(w, b)| w.iter().chain(b.iter()).any(|v| !v.is_finite()))
    {
        return Err(TrunkError::Diverged);
    }
    Ok((
        trunk,
        TrunkReport {
            hidden: cfg.hidden.clone(),
            epochs: cfg.epochs,
            examples: n,
            mse_start,
            mse_end,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_learns_xor_a_linear_model_cannot() {
        // y = x0 XOR x1 on the four corners (plus a constant input): no linear function of
        // the inputs fits it better than 0.0625 MSE; a small ReLU net fits it.
        let corners = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]];
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..400 {
            let c = corners[i % 4];
            xs.push(vec![1.0, c[0], c[1]]);
            ys.push(if (c[0] > 0.5) != (c[1] > 0.5) { 1.0 } else { 0.0 });
        }
        let cfg = TrunkConfig {
            hidden: vec![8],
            epochs: 200,
            batch_size: 32,
            learning_rate: 1e-2,
            weight_decay: 0.0,
        };
        let (trunk, report) = train_trunk(&xs, &ys, &cfg, 3).unwrap();
        assert!(report.mse_end < 0.01, "{report:?}");
        assert_eq!(trunk.input_dim(), 3);
        assert_eq!(trunk.output_dim(), 9);
        // The same data and seed give the same weights.
        let (again, _) = train_trunk(&xs, &ys, &cfg, 3).unwrap();
        assert_eq!(trunk, again);
        // Bad shapes and settings are refused, not trained.
        assert!(train_trunk(&xs[..3], &ys, &cfg, 3).is_err());
        let bad = TrunkConfig {
            hidden: vec![],
            ..cfg.clone()
        };
        assert!(train_trunk(&xs, &ys, &bad, 3)
            .unwrap_err()
            .to_string()
            .contains("hidden"));
    }
}
