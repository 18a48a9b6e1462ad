//! Reward models: Bayesian linear regression on the joint features, optionally on top of an
//! MLP trunk (neural-linear: the trunk is trained by the optimizer, only its last layer is
//! Bayesian). The posterior (mean and covariance) is what UCB and Thompson sampling explore with.
use crate::linalg::{cholesky, spd_inverse};
use crate::PolicyError;
use ndarray::{Array1, Array2};
use rand::Rng;
use rand_distr::StandardNormal;

/// A ReLU MLP: every layer is `relu(W x + b)`. The Bayesian layer reads `[1, h]` (its own
/// bias, since a ReLU output has no unit that is always on).
#[derive(Debug, Clone, PartialEq)]
pub struct Trunk {
    /// `(weight [out, in], bias [out])` per layer.
    pub layers: Vec<(Array2<f64>, Array1<f64>)>,
}

impl Trunk {
    /// Width of the input it expects.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |(w, _)| w.ncols())
    }

    /// Size of what the Bayesian layer reads: the last layer's units and the constant 1.
    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(0, |(w, _)| w.nrows()) + 1
    }

    /// `[1, relu(… relu(W₁x + b₁) …)]`: the representation the Bayesian layer reads.
    pub fn forward(&self, x: &[f64]) -> Array1<f64> {
        let mut h = Array1::from(x.to_vec());
        for (w, b) in &self.layers {
            h = (w.dot(&h) + b).mapv(|v| v.max(0.0));
        }
        let mut out = Array1::ones(h.len() + 1);
        out.slice_mut(ndarray::s![1..]).assign(&h);
        out
    }
}

/// Expected reward of a joint feature vector, with the uncertainty that exploration needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardModel {
    /// Posterior mean of the last layer's weights.
    pub theta: Array1<f64>,
    /// Posterior covariance of `theta`.
    pub cov: Array2<f64>,
    /// Lower Cholesky factor of `cov`, for drawing `theta` samples.
    pub cov_chol: Array2<f64>,
    /// The MLP below the Bayesian layer (neural-linear), if any.
    pub trunk: Option<Trunk>,
}

impl RewardModel {
    /// The prior: mean 0, covariance `prior_var · I` (what a brand-new policy explores with).
    pub fn prior(dim: usize, prior_var: f64) -> Self {
        let cov = Array2::eye(dim) * prior_var;
        let cov_chol = Array2::eye(dim) * prior_var.sqrt();
        Self {
            theta: Array1::zeros(dim),
            cov,
            cov_chol,
            trunk: None,
        }
    }

    /// Bayesian ridge regression of `rewards` on `features` (rows), each row weighted:
    /// precision `A = λI + Σ w f fᵀ / σ²`, mean `A⁻¹ Σ w r f / σ²`, covariance `A⁻¹`.
    pub fn fit(
        features: &[Array1<f64>],
        rewards: &[f64],
        weights: &[f64],
        ridge: f64,
        noise_var: f64,
        trunk: Option<Trunk>,
    ) -> Result<Self, PolicyError> {
        let d = match (&trunk, features.first()) {
            (_, Some(f)) => f.len(),
            (Some(t), None) => t.output_dim(),
            (None, None) => return Err(PolicyError::invalid("training data", "no rows")),
        };
        let mut a = Array2::<f64>::eye(d) * ridge;
        let mut b = Array1::<f64>::zeros(d);
        for ((f, &r), &w) in features.iter().zip(rewards).zip(weights) {
            let wf = f * (w / noise_var);
            // Rank-one update, upper triangle then mirrored (d is small, rows are many).
            for i in 0..d {
                let wi = wf[i];
                if wi == 0.0 {
                    continue;
                }
                for j in i..d {
                    a[[i, j]] += wi * f[j];
                }
            }
            b.scaled_add(r, &wf);
        }
        for i in 0..d {
            for j in 0..i {
                a[[i, j]] = a[[j, i]];
            }
        }
        let cov = spd_inverse(&a)
            .ok_or_else(|| PolicyError::invalid("training data", "precision matrix is not positive definite"))?;
        let theta = cov.dot(&b);
        let cov_chol = cholesky(&cov)
            .ok_or_else(|| PolicyError::invalid("training data", "covariance is not positive definite"))?;
        Ok(Self {
            theta,
            cov,
            cov_chol,
            trunk,
        })
    }

    /// The input the Bayesian layer sees for joint features `x`.
    pub fn features(&self, x: &[f64]) -> Array1<f64> {
        match &self.trunk {
            Some(t) => t.forward(x),
            None => Array1::from(x.to_vec()),
        }
    }

    /// Width of the Bayesian layer.
    pub fn dim(&self) -> usize {
        self.theta.len()
    }

    /// Width of the joint feature vector it reads.
    pub fn input_dim(&self) -> usize {
        self.trunk.as_ref().map_or(self.dim(), |t| t.input_dim())
    }

    /// Posterior mean reward of a represented vector `f`.
    pub fn mean(&self, f: &Array1<f64>) -> f64 {
        self.theta.dot(f)
    }

    /// Posterior variance of the mean reward at `f`: `fᵀ Σ f`.
    pub fn variance(&self, f: &Array1<f64>) -> f64 {
        f.dot(&self.cov.dot(f)).max(0.0)
    }

    /// One draw of `theta` from the posterior, its spread scaled by `scale`.
    pub fn sample_theta(&self, scale: f64, rng: &mut impl Rng) -> Array1<f64> {
        let z: Array1<f64> = (0..self.dim()).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        &self.theta + &(self.cov_chol.dot(&z) * scale)
    }

    /// Shapes agree, every number is finite, and the covariance is a covariance.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let d = self.dim();
        let bad = |r: &str| Err(PolicyError::invalid("policy model", r.to_string()));
        if d == 0 {
            return bad("empty theta");
        }
        if self.cov.dim() != (d, d) || self.cov_chol.dim() != (d, d) {
            return bad("covariance shape does not match theta");
        }
        if let Some(t) = &self.trunk {
            if t.output_dim() != d {
                return bad("trunk output size does not match theta");
            }
            for (i, pair) in t.layers.windows(2).enumerate() {
                if pair[1].0.ncols() != pair[0].0.nrows() {
                    return bad(&format!("trunk layer {} input does not match layer {i} output", i + 1));
                }
            }
            if t.layers.iter().any(|(w, b)| b.len() != w.nrows()) {
                return bad("trunk bias size does not match its weight");
            }
            if t.layers
                .iter()
                .any(|(w, b)| w.iter().chain(b.iter()).any(|v| !v.is_finite()))
            {
                return bad("trunk has NaN or infinite weights");
            }
        }
        if self
            .theta
            .iter()
            .chain(self.cov.iter())
            .chain(self.cov_chol.iter())
            .any(|v| !v.is_finite())
        {
            return bad("NaN or infinite values");
        }
        for i in 0..d {
            if self.cov[[i, i]] < 0.0 {
                return bad("covariance has a negative variance");
            }
            for j in 0..i {
                if (self.cov[[i, j]] - self.cov[[j, i]]).abs() > 1e-6 * (1.0 + self.cov[[i, j]].abs()) {
                    return bad("covariance is not symmetric");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fit_recovers_a_linear_reward_and_shrinks_uncertainty() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let truth = [0.5, -1.0, 2.0];
        let mut xs = Vec::new();
        let mut rs = Vec::new();
        for _ in 0..2000 {
            let x: Array1<f64> = (0..3).map(|_| rng.random_range(-1.0..1.0)).collect();
            let noise: f64 = rng.sample::<f64, _>(StandardNormal) * 0.1;
            rs.push(x.iter().zip(truth).map(|(a, b)| a * b).sum::<f64>() + noise);
            xs.push(x);
        }
        let w = vec![1.0; xs.len()];
        let m = RewardModel::fit(&xs, &rs, &w, 1.0, 0.01, None).unwrap();
        for (t, e) in m.theta.iter().zip(truth) {
            assert!((t - e).abs() < 0.02, "{t} vs {e}");
        }
        m.validate().unwrap();
        let f = Array1::from(vec![1.0, 1.0, 1.0]);
        assert!(m.variance(&f) < RewardModel::prior(3, 1.0).variance(&f) / 100.0);
    }
}
