//! Off-policy estimates of a policy's value over whole conversations, from episodes another
//! policy logged: what a conversation would earn, Σₜ γᵗ rₜ, had the target policy decided.
//!
//! - **PDIS**, per-decision importance sampling (Precup et al. 2000): each reward weighted by
//!   the product of ratios up to its own step, `ρ₀:ₜ = Πᵤ≤ₜ π(aᵤ|sᵤ)/μ(aᵤ|sᵤ)`; unbiased, its
//!   variance grows with the length of the conversation.
//! - **WPDIS**, the weighted (self-normalised) form: each step's weights normalised over the
//!   episodes; biased, far steadier. A conversation that ended keeps its last weight and earns 0.
//! - **DR**, the sequential doubly-robust estimate (Jiang & Li 2016): a model q̂ of the target's
//!   value corrects each step, `Σₜ γᵗ [ρ₀:ₜ (rₜ − q̂(sₜ,aₜ)) + ρ₀:ₜ₋₁ v̂(sₜ)]` with
//!   `v̂(s) = Σₐ π(a|s) q̂(s,a)`; unbiased when the propensities are right, whatever q̂ is, and
//!   low-variance when q̂ is good. q̂ comes from fitted-Q evaluation of the target on the same
//!   logs (ridge regression on the joint features, iterated to the longest conversation).
//!
//! Intervals are 95 %: normal over per-episode contributions for PDIS and DR, a seeded
//! percentile bootstrap over episodes for WPDIS (a ratio has no per-episode contribution).
//! All three rest on the logged propensities being the probabilities really used, which the
//! server guarantees (see `nudge_policy::Policy::choose`).
use crate::episodes::Episode;
use crate::ope::{mean_ci, Estimate, Estimates};
use ndarray::{Array1, Array2};
use nudge_policy::linalg::spd_inverse;
use nudge_policy::{FeatureSchema, Policy};
use rand::{Rng, SeedableRng};

/// What the estimators read of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSample {
    /// Reward credited to the step.
    pub reward: f64,
    /// π(aₜ|sₜ) / μ(aₜ|sₜ).
    pub ratio: f64,
    /// q̂(sₜ, aₜ).
    pub q_logged: f64,
    /// v̂(sₜ) = Σₐ π(a|sₜ) q̂(sₜ, a).
    pub v_target: f64,
}

/// PDIS, WPDIS and DR of `samples` (one vector per episode, steps in order).
pub fn estimate(samples: &[Vec<StepSample>], gamma: f64, seed: u64) -> Estimates {
    let pdis: Vec<f64> = samples.iter().map(|e| pdis_episode(e, gamma)).collect();
    let dr: Vec<f64> = samples.iter().map(|e| dr_episode(e, gamma)).collect();
    let wpdis_value = wpdis(samples, gamma);
    let wpdis_ci = bootstrap(samples, gamma, seed, 200);
    let finals: Vec<f64> = samples
        .iter()
        .map(|e| e.iter().map(|s| s.ratio).product::<f64>())
        .collect();
    let (sum, sq) = finals.iter().fold((0.0, 0.0), |(s, q), w| (s + w, q + w * w));
    Estimates {
        ips: mean_ci(&pdis),
        snips: Estimate {
            value: wpdis_value,
            lo: wpdis_ci.0,
            hi: wpdis_ci.1,
            n: samples.len(),
        },
        dr: mean_ci(&dr),
        effective_samples: if sq > 0.0 { sum * sum / sq } else { 0.0 },
    }
}

fn pdis_episode(e: &[StepSample], gamma: f64) -> f64 {
    let (mut rho, mut disc, mut v) = (1.0, 1.0, 0.0);
    for s in e {
        rho *= s.ratio;
        v += disc * rho * s.reward;
        disc *= gamma;
    }
    v
}

fn dr_episode(e: &[StepSample], gamma: f64) -> f64 {
    let (mut rho_prev, mut disc, mut v) = (1.0, 1.0, 0.0);
    for s in e {
        let rho = rho_prev * s.ratio;
        v += disc * (rho * (s.reward - s.q_logged) + rho_prev * s.v_target);
        rho_prev = rho;
        disc *= gamma;
    }
    v
}

fn wpdis(samples: &[Vec<StepSample>], gamma: f64) -> f64 {
    wpdis_of(samples.iter(), gamma)
}

fn wpdis_of<'a>(samples: impl Iterator<Item = &'a Vec<StepSample>> + Clone, gamma: f64) -> f64 {
    let horizon = samples.clone().map(Vec::len).max().unwrap_or(0);
    // Per episode: cumulative weights, carried past the episode's end with reward 0.
    let mut num = vec![0.0; horizon];
    let mut den = vec![0.0; horizon];
    for e in samples {
        let mut rho = 1.0;
        for t in 0..horizon {
            let r = match e.get(t) {
                Some(s) => {
                    rho *= s.ratio;
                    s.reward
                }
                None => 0.0,
            };
            num[t] += rho * r;
            den[t] += rho;
        }
    }
    let mut disc = 1.0;
    let mut v = 0.0;
    for t in 0..horizon {
        if den[t] > 0.0 {
            v += disc * num[t] / den[t];
        }
        disc *= gamma;
    }
    v
}

/// 2.5 % and 97.5 % percentiles of WPDIS over `rounds` resamples of the episodes.
fn bootstrap(samples: &[Vec<StepSample>], gamma: f64, seed: u64, rounds: usize) -> (f64, f64) {
    let n = samples.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_b007);
    let mut values: Vec<f64> = (0..rounds)
        .map(|_| {
            let pick: Vec<&Vec<StepSample>> = (0..n).map(|_| &samples[rng.random_range(0..n)]).collect();
            wpdis_of(pick.iter().copied(), gamma)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((rounds as f64 - 1.0) * q).round() as usize];
    (at(0.025), at(0.975))
}

/// Fitted-Q evaluation settings.
#[derive(Debug, Clone, Copy)]
pub struct Fqe {
    /// Discount.
    pub gamma: f64,
    /// Ridge penalty of each regression.
    pub ridge: f64,
}

/// The joint feature rows of a step, sparse: `(index, value)` of the non-zero entries.
fn sparse(x: &[f64]) -> Vec<(usize, f64)> {
    x.iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, v)| (i, *v))
        .collect()
}

fn dot(theta: &Array1<f64>, x: &[(usize, f64)]) -> f64 {
    x.iter().map(|(i, v)| theta[*i] * v).sum()
}

/// Per-episode step samples of `target` on `episodes`: the ratios of its probabilities to the
/// logged ones, and q̂ / v̂ from fitted-Q evaluation of `target` on `model_episodes` (all the
/// logs there are: q̂ is only a control variate, and DR stays unbiased whatever it is, while
/// a q̂ fitted on the few held-out conversations alone would be poor).
pub fn samples(
    target: &Policy,
    schema: &FeatureSchema,
    episodes: &[Episode],
    model_episodes: &[Episode],
    fqe: Fqe,
    seed: u64,
) -> Vec<Vec<StepSample>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Options (sparse) and the target's probabilities of each, for every step.
    let mut rows_of = |episodes: &[Episode]| -> Vec<Vec<StepRows>> {
        episodes
            .iter()
            .map(|e| {
                e.steps
                    .iter()
                    .map(|s| {
                        let xs = s.options(schema);
                        let (p, _, _) = target.distribution(&xs, &mut rng);
                        (xs.iter().map(|x| sparse(x)).collect::<Vec<_>>(), p)
                    })
                    .collect()
            })
            .collect()
    };
    let rows = rows_of(episodes);
    let model_rows = rows_of(model_episodes);
    let theta = fitted_q(schema.dim(), model_episodes, &model_rows, fqe);
    episodes
        .iter()
        .zip(&rows)
        .map(|(e, steps)| {
            e.steps
                .iter()
                .zip(steps)
                .map(|(s, (xs, p))| {
                    let qs: Vec<f64> = xs.iter().map(|x| dot(&theta, x)).collect();
                    StepSample {
                        reward: s.reward,
                        ratio: p[s.action] / s.propensity,
                        q_logged: qs[s.action],
                        v_target: p.iter().zip(&qs).map(|(p, q)| p * q).sum(),
                    }
                })
                .collect()
        })
        .collect()
}

type StepRows = (Vec<Vec<(usize, f64)>>, Vec<f64>);

/// Linear fitted-Q evaluation: `q̂(s,a) = θ·x(s,a)` with θ the ridge solution of
/// `x(sₜ,aₜ) → rₜ + γ v̂(sₜ₊₁)`, iterated (one more step of look-ahead each time) as often as the
/// longest episode has steps. The regression's matrix is the same every time: it is inverted once.
fn fitted_q(dim: usize, episodes: &[Episode], rows: &[Vec<StepRows>], fqe: Fqe) -> Array1<f64> {
    let mut a = Array2::<f64>::eye(dim) * fqe.ridge;
    for (e, steps) in episodes.iter().zip(rows) {
        for (s, (xs, _)) in e.steps.iter().zip(steps) {
            let x = &xs[s.action];
            for &(i, vi) in x {
                for &(j, vj) in x {
                    a[[i, j]] += vi * vj;
                }
            }
        }
    }
    let Some(inv) = spd_inverse(&a) else {
        return Array1::zeros(dim);
    };
    let horizon = episodes.iter().map(|e| e.steps.len()).max().unwrap_or(0);
    let mut theta = Array1::<f64>::zeros(dim);
    for _ in 0..horizon {
        let mut b = Array1::<f64>::zeros(dim);
        for (e, steps) in episodes.iter().zip(rows) {
            for (t, (s, (xs, _))) in e.steps.iter().zip(steps).enumerate() {
                let next = steps.get(t + 1).map_or(0.0, |(nx, np)| {
                    nx.iter().zip(np).map(|(x, p)| p * dot(&theta, x)).sum::<f64>()
                });
                let y = s.reward + fqe.gamma * next;
                for &(i, v) in &xs[s.action] {
                    b[i] += v * y;
                }
            }
        }
        theta = inv.dot(&b);
    }
    theta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(reward: f64, ratio: f64) -> StepSample {
        StepSample {
            reward,
            ratio,
            q_logged: 0.0,
            v_target: 0.0,
        }
    }

    #[test]
    fn estimators_equal_hand_computed_values() {
        // Two episodes, γ = 0.5.
        //   e1: (r 1, ρ 2), (r 2, ρ 0.5)  → PDIS 1·2 + 0.5·(2·0.5)·2 = 3
        //   e2: (r 0, ρ 0.5)              → PDIS 0
        let s = vec![vec![step(1.0, 2.0), step(2.0, 0.5)], vec![step(0.0, 0.5)]];
        let e = estimate(&s, 0.5, 1);
        assert!((e.ips.value - 1.5).abs() < 1e-12, "{e:?}");
        // WPDIS: t0: (2·1 + 0.5·0)/(2.5) = 0.8; t1: e2 carries ρ 0.5 with reward 0:
        // (1·2 + 0)/(1 + 0.5) = 4/3, discounted by 0.5 → 0.8 + 2/3.
        assert!((e.snips.value - (0.8 + 2.0 / 3.0)).abs() < 1e-12, "{e:?}");
        // DR with q̂ = v̂ = 0 is PDIS.
        assert!((e.dr.value - e.ips.value).abs() < 1e-12);
        // With q̂ = v̂ = c everywhere: each step adds γᵗ(ρ₀:ₜ₋₁ − ρ₀:ₜ)c to PDIS.
        let c = 0.7;
        let sq: Vec<Vec<StepSample>> = s
            .iter()
            .map(|e| {
                e.iter()
                    .map(|x| StepSample {
                        q_logged: c,
                        v_target: c,
                        ..*x
                    })
                    .collect()
            })
            .collect();
        let dr = estimate(&sq, 0.5, 1).dr.value;
        let e1 = 3.0 + (1.0 - 2.0) * c + 0.5 * (2.0 - 1.0) * c;
        let e2 = (1.0 - 0.5) * c;
        assert!((dr - (e1 + e2) / 2.0).abs() < 1e-12, "{dr}");
        // Effective episodes: final weights 1 and 0.5 → 1.5² / 1.25.
        assert!((e.effective_samples - 1.8).abs() < 1e-12);
        assert!(e.snips.lo <= e.snips.value && e.snips.value <= e.snips.hi, "{e:?}");
    }

    #[test]
    fn on_policy_episodes_estimate_the_mean_return() {
        let s: Vec<Vec<StepSample>> = (0..50)
            .map(|i| vec![step(f64::from(i % 3), 1.0), step(1.0, 1.0)])
            .collect();
        let mean = s.iter().map(|e| pdis_episode(e, 0.9)).sum::<f64>() / 50.0;
        let e = estimate(&s, 0.9, 3);
        for v in [e.ips.value, e.snips.value, e.dr.value] {
            assert!((v - mean).abs() < 1e-9, "{v} vs {mean}");
        }
        assert!((e.effective_samples - 50.0).abs() < 1e-9);
    }
}
