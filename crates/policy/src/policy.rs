//! Choosing among options with exploration, and the probability of every choice. Logged
//! propensities must be the probabilities the policy really used, or every off-policy estimate
//! built on them is biased:
//! - ε-greedy, LinUCB (with its ε floor) and softmax have closed forms;
//! - Thompson sampling has none: `samples` posterior draws give each option's win share `p̂`,
//!   and the choice is drawn from `p̂` itself, so the logged propensity is exact for what was
//!   done; `std_error` says how far `p̂` may be from pure Thompson sampling's probabilities.
use crate::features::FeatureSchema;
use crate::linalg::cholesky;
use crate::model::RewardModel;
use ndarray::{Array1, Array2};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// How a policy trades the best-looking option against learning about the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exploration {
    /// Best mean with probability 1 − ε, otherwise uniform.
    EpsilonGreedy {
        /// Share of uniformly random choices, in [0, 1].
        epsilon: f64,
    },
    /// `p ∝ exp(mean / temperature)`.
    Softmax {
        /// > 0; lower is greedier.
        temperature: f64,
    },
    /// Best `mean + α·sd` with probability 1 − ε, otherwise uniform (ε keeps logs usable for
    /// off-policy evaluation; 0 makes it deterministic).
    #[serde(rename = "linucb")]
    LinUcb {
        /// Weight of the posterior standard deviation (optimism), ≥ 0.
        alpha: f64,
        /// Share of uniformly random choices, in [0, 1].
        epsilon: f64,
    },
    /// Thompson sampling with the posterior spread scaled by `scale`.
    Thompson {
        /// Multiplier of the posterior spread, ≥ 0 (0 is greedy).
        scale: f64,
        /// Posterior draws that estimate each option's win share, 1..=100,000.
        samples: usize,
    },
}

impl Exploration {
    /// The `kind` tag, as manifests and metrics name it.
    pub fn name(&self) -> &'static str {
        match self {
            Exploration::EpsilonGreedy { .. } => "epsilon_greedy",
            Exploration::Softmax { .. } => "softmax",
            Exploration::LinUcb { .. } => "linucb",
            Exploration::Thompson { .. } => "thompson",
        }
    }

    /// Refuses parameters outside their ranges (a negative ε, a zero temperature…).
    pub fn validate(&self) -> Result<(), crate::PolicyError> {
        let ok = match *self {
            Exploration::EpsilonGreedy { epsilon } => (0.0..=1.0).contains(&epsilon),
            Exploration::Softmax { temperature } => temperature > 0.0 && temperature.is_finite(),
            Exploration::LinUcb { alpha, epsilon } => {
                alpha >= 0.0 && alpha.is_finite() && (0.0..=1.0).contains(&epsilon)
            }
            Exploration::Thompson { scale, samples } => {
                scale >= 0.0 && scale.is_finite() && (1..=100_000).contains(&samples)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(crate::PolicyError::invalid(
                "exploration",
                format!("out-of-range parameters: {self:?}"),
            ))
        }
    }
}

/// A servable policy: what it reads, how it scores, how it explores.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The feature names it reads.
    pub schema: FeatureSchema,
    /// Its reward estimate per joint feature vector.
    pub model: RewardModel,
    /// How it explores.
    pub exploration: Exploration,
    /// `k × embedding` random projection: context features `emb_0..emb_{k-1}` from the message
    /// embedding (a fixed sketch of it, small enough for a linear model's covariance).
    pub projection: Option<Array2<f64>>,
}

/// What the policy chose among the options, with everything the decision log records.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index into the options (candidates in order, then "no offer" when allowed).
    pub option: usize,
    /// Probability of every option under the policy.
    pub probabilities: Vec<f64>,
    /// Mean reward estimate of every option.
    pub scores: Vec<f64>,
    /// Probability of the chosen option, as logged for off-policy evaluation.
    pub propensity: f64,
    /// Standard error of `propensity` (Thompson's sampled win shares; 0 for closed forms).
    pub std_error: f64,
    /// "greedy", "explore" or "sampled".
    pub how: &'static str,
}

fn argmax_set(v: &[f64]) -> Vec<usize> {
    let best = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    v.iter()
        .enumerate()
        .filter(|(_, &x)| x == best)
        .map(|(i, _)| i)
        .collect()
}

/// One draw's win, shared equally by the options that tie for best.
fn credit_winners(wins: &mut [f64], vals: &[f64]) {
    let best = argmax_set(vals);
    for &i in &best {
        wins[i] += 1.0 / best.len() as f64;
    }
}

/// ε spread uniformly, the rest shared by the best options.
fn epsilon_probs(values: &[f64], epsilon: f64) -> Vec<f64> {
    let k = values.len() as f64;
    let best = argmax_set(values);
    let mut p = vec![epsilon / k; values.len()];
    for &i in &best {
        p[i] += (1.0 - epsilon) / best.len() as f64;
    }
    p
}

fn draw(p: &[f64], rng: &mut impl Rng) -> usize {
    let u: f64 = rng.random::<f64>() * p.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, &x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return i;
        }
    }
    p.iter().rposition(|&x| x > 0.0).unwrap_or(0)
}

impl Policy {
    /// Checks exploration parameters, the model's shapes and that the model reads what the
    /// schema makes.
    pub fn validate(&self) -> Result<(), crate::PolicyError> {
        self.exploration.validate()?;
        self.model.validate()?;
        if self.model.input_dim() != self.schema.dim() {
            return Err(crate::PolicyError::invalid(
                "policy",
                format!(
                    "model reads {} features but the schema makes {}",
                    self.model.input_dim(),
                    self.schema.dim()
                ),
            ));
        }
        if let Some(p) = &self.projection {
            let k = p.nrows();
            let named = (0..k).all(|i| self.schema.context.iter().any(|c| *c == format!("emb_{i}")));
            if !named || p.iter().any(|v| !v.is_finite()) {
                return Err(crate::PolicyError::invalid(
                    "policy",
                    "projection rows need context features emb_0..emb_{k-1} and finite values",
                ));
            }
        }
        Ok(())
    }

    /// The action distribution for joint feature rows `xs` (one per option). Monte-Carlo for
    /// Thompson sampling (hence the rng), exact otherwise. Returns (probabilities, means,
    /// standard error of the probabilities).
    pub fn distribution(&self, xs: &[Vec<f64>], rng: &mut impl Rng) -> (Vec<f64>, Vec<f64>, f64) {
        let feats: Vec<_> = xs.iter().map(|x| self.model.features(x)).collect();
        let means: Vec<f64> = feats.iter().map(|f| self.model.mean(f)).collect();
        if xs.is_empty() {
            return (Vec::new(), means, 0.0);
        }
        match self.exploration {
            Exploration::EpsilonGreedy { epsilon } => (epsilon_probs(&means, epsilon), means, 0.0),
            Exploration::LinUcb { alpha, epsilon } => {
                let ucb: Vec<f64> = feats
                    .iter()
                    .zip(&means)
                    .map(|(f, m)| m + alpha * self.model.variance(f).sqrt())
                    .collect();
                (epsilon_probs(&ucb, epsilon), means, 0.0)
            }
            Exploration::Softmax { temperature } => {
                let max = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = means.iter().map(|m| ((m - max) / temperature).exp()).collect();
                let s: f64 = e.iter().sum();
                (e.iter().map(|v| v / s).collect(), means, 0.0)
            }
            Exploration::Thompson { scale, samples } => {
                let wins = self.thompson_wins(&feats, &means, scale, samples, rng);
                let p: Vec<f64> = wins.iter().map(|w| w / samples as f64).collect();
                let worst = p
                    .iter()
                    .map(|p| (p * (1.0 - p) / samples as f64).sqrt())
                    .fold(0.0, f64::max);
                (p, means, worst)
            }
        }
    }

    /// How often each option wins over `samples` posterior draws (ties share a win). Drawing
    /// θ costs d² per draw; drawing the options' rewards jointly, `r ~ N(means, s² F Σ Fᵀ)`,
    /// costs k² per draw after k·d² + k²·d once. The cheaper one is used: with a few candidates
    /// and a rich schema that is several times less work.
    fn thompson_wins(
        &self,
        feats: &[Array1<f64>],
        means: &[f64],
        scale: f64,
        samples: usize,
        rng: &mut impl Rng,
    ) -> Vec<f64> {
        let (k, d, s) = (feats.len() as f64, self.model.dim() as f64, samples as f64);
        let theta_cost = s * (d * d + k * d);
        let option_cost = k * d * d + k * k * d + k * k * k / 3.0 + s * k * k;
        if option_cost < theta_cost {
            if let Some(w) = self.thompson_wins_joint(feats, means, scale, samples, rng) {
                return w;
            }
        }
        self.thompson_wins_theta(feats, scale, samples, rng)
    }

    fn thompson_wins_theta(&self, feats: &[Array1<f64>], scale: f64, samples: usize, rng: &mut impl Rng) -> Vec<f64> {
        let mut wins = vec![0f64; feats.len()];
        for _ in 0..samples {
            let th = self.model.sample_theta(scale, rng);
            let vals: Vec<f64> = feats.iter().map(|f| th.dot(f)).collect();
            credit_winners(&mut wins, &vals);
        }
        wins
    }

    /// `None` when the options' covariance has no Cholesky factor even with a little jitter.
    fn thompson_wins_joint(
        &self,
        feats: &[Array1<f64>],
        means: &[f64],
        scale: f64,
        samples: usize,
        rng: &mut impl Rng,
    ) -> Option<Vec<f64>> {
        let k = feats.len();
        let d = self.model.dim();
        let f = Array2::from_shape_fn((k, d), |(i, j)| feats[i][j]);
        let mut c = f.dot(&self.model.cov).dot(&f.t()) * (scale * scale);
        // Options with equal features make C singular; a jitter of 1e-10 of the largest
        // variance keeps the factor defined (their draws then differ by ~1e-5 of a standard
        // deviation instead of tying). An all-zero C has no factor: θ draws handle it.
        let jitter = 1e-10 * c.diag().iter().copied().fold(0.0, f64::max);
        for i in 0..k {
            for j in 0..i {
                let m = 0.5 * (c[[i, j]] + c[[j, i]]);
                c[[i, j]] = m;
                c[[j, i]] = m;
            }
            c[[i, i]] += jitter;
        }
        let l = cholesky(&c)?;
        let mu = Array1::from(means.to_vec());
        let mut wins = vec![0f64; k];
        for _ in 0..samples {
            let z: Array1<f64> = (0..k).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
            let vals = &mu + &l.dot(&z);
            credit_winners(&mut wins, vals.as_slice()?);
        }
        Some(wins)
    }

    /// Picks an option for joint feature rows `xs` and says with what probability.
    pub fn choose(&self, xs: &[Vec<f64>], rng: &mut impl Rng) -> Option<Choice> {
        if xs.is_empty() {
            return None;
        }
        let (probabilities, scores, std_error) = self.distribution(xs, rng);
        let option = draw(&probabilities, rng);
        let how = match self.exploration {
            Exploration::Thompson { .. } | Exploration::Softmax { .. } => "sampled",
            _ => {
                let greedy = probabilities.iter().copied().fold(0.0, f64::max);
                if probabilities[option] == greedy {
                    "greedy"
                } else {
                    "explore"
                }
            }
        };
        Some(Choice {
            option,
            propensity: probabilities[option],
            probabilities,
            scores,
            std_error,
            how,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;
    use rand::SeedableRng;

    fn policy(exploration: Exploration) -> Policy {
        let schema = FeatureSchema {
            context: vec![],
            offer: vec!["a".into(), "b".into()],
            allow_none: true,
        };
        let mut model = RewardModel::prior(3, 0.04);
        model.theta = Array1::from(vec![0.1, 0.2, 0.05]); // none 0.1, a 0.3, b 0.15
        Policy {
            schema,
            model,
            exploration,
            projection: None,
        }
    }

    fn options(p: &Policy) -> Vec<Vec<f64>> {
        p.schema.options(&[], &[vec![1.0, 0.0], vec![0.0, 1.0]])
    }

    #[test]
    fn closed_form_propensities() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = policy(Exploration::EpsilonGreedy { epsilon: 0.3 });
        let (probs, means, _) = p.distribution(&options(&p), &mut rng);
        assert!((means[0] - 0.3).abs() < 1e-12 && (means[2] - 0.1).abs() < 1e-12);
        for (p, e) in probs.iter().zip([0.8, 0.1, 0.1]) {
            assert!((p - e).abs() < 1e-12, "{probs:?}");
        }
        let p = policy(Exploration::Softmax { temperature: 0.1 });
        let (probs, _, _) = p.distribution(&options(&p), &mut rng);
        let z = 1.0 + (-1.5f64).exp() + (-2.0f64).exp();
        assert!((probs[0] - 1.0 / z).abs() < 1e-12 && (probs[2] - (-2.0f64).exp() / z).abs() < 1e-12);
        // UCB bonus: the same prior variance everywhere, so the best mean still wins.
        let p = policy(Exploration::LinUcb {
            alpha: 1.0,
            epsilon: 0.0,
        });
        let (probs, _, _) = p.distribution(&options(&p), &mut rng);
        assert_eq!(probs, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn logged_propensities_match_observed_frequencies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for e in [
            Exploration::EpsilonGreedy { epsilon: 0.2 },
            Exploration::Softmax { temperature: 0.05 },
            Exploration::Thompson {
                scale: 1.0,
                samples: 400,
            },
        ] {
            let p = policy(e.clone());
            let xs = options(&p);
            let n = 20_000;
            let mut counts = [0f64; 3];
            let mut mean_prop = [0f64; 3];
            for _ in 0..n {
                let c = p.choose(&xs, &mut rng).unwrap();
                counts[c.option] += 1.0;
                for (m, p) in mean_prop.iter_mut().zip(&c.probabilities) {
                    *m += p / n as f64;
                }
                assert_eq!(c.propensity, c.probabilities[c.option]);
            }
            for i in 0..3 {
                let freq = counts[i] / n as f64;
                assert!(
                    (freq - mean_prop[i]).abs() < 0.015,
                    "{e:?} option {i}: {freq} vs {}",
                    mean_prop[i]
                );
            }
        }
    }

    #[test]
    fn joint_reward_draws_match_parameter_draws() {
        // A 12-dimensional posterior with correlations, 4 offers + none, one offer duplicated:
        // win shares from drawing θ and from drawing the options' rewards jointly agree.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let schema = FeatureSchema {
            context: vec!["c1".into(), "c2".into()],
            offer: vec!["a".into(), "b".into(), "c".into()],
            allow_none: true,
        };
        let d = schema.dim();
        let a = Array2::from_shape_fn((d, d), |_| rng.random_range(-1.0..1.0));
        let mut model = RewardModel::prior(d, 1.0);
        model.cov = a.dot(&a.t()) * (0.02 / d as f64) + Array2::<f64>::eye(d) * 1e-3;
        model.cov_chol = cholesky(&model.cov).unwrap();
        model.theta = Array1::from_shape_fn(d, |i| ((i * 7) % 5) as f64 * 0.02);
        let p = policy(Exploration::Thompson {
            scale: 1.0,
            samples: 40_000,
        });
        let p = Policy { schema, model, ..p };
        let offers = [
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![0.0, 1.0, 0.0],
        ];
        let xs = p.schema.options(&[0.5, -1.0], &offers);
        let feats: Vec<Array1<f64>> = xs.iter().map(|x| p.model.features(x)).collect();
        let means: Vec<f64> = feats.iter().map(|f| p.model.mean(f)).collect();
        let n = 40_000;
        let by_theta = p.thompson_wins_theta(&feats, 1.0, n, &mut rng);
        let joint = p.thompson_wins_joint(&feats, &means, 1.0, n, &mut rng).unwrap();
        for (t, j) in by_theta.iter().zip(&joint) {
            assert!((t - j).abs() / (n as f64) < 0.012, "{by_theta:?} vs {joint:?}");
        }
        // The duplicated offer (1 and 3) wins as often as its twin.
        assert!((joint[1] - joint[3]).abs() / (n as f64) < 0.012, "{joint:?}");
        assert!(
            by_theta.iter().filter(|&&w| w > 0.02 * n as f64).count() >= 3,
            "{by_theta:?}"
        );
        // 5 options, 12 features, 256 draws: the joint draw is the cheaper one and is used.
        let (k, d, s) = (5.0, d as f64, 256.0);
        assert!(k * d * d + k * k * d + k * k * k / 3.0 + s * k * k < s * (d * d + k * d));
    }
}
