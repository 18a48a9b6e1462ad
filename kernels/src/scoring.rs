//! Decision scoring on the GPU for many candidates at once: posterior means, LinUCB scores
//! and Thompson-sampling win shares under one Bayesian linear model (θ, Σ = L·Lᵀ), the
//! model `nudge-policy` trains. A single Decide has a handful of options and stays on the
//! CPU; this is for scoring thousands of candidates (catalog-wide ranking, replays).
#![allow(unsafe_code)] // kernel launches; each says why its arguments are in bounds.

use crate::error::GpuError;
use crate::gpu::{matmul_f32, Gpu};
use crate::source::Variant;
use crate::Half;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::{Arc, Mutex};

/// A posterior `N(θ, Σ)` over reward weights, on one GPU.
pub struct GpuScorer {
    d: usize,
    theta: CudaSlice<f32>,
    /// Lᵀ, row-major `[d, d]`: G = F·L is then `matmul(F, Lᵀ)`.
    chol_t: CudaSlice<f32>,
    draws_fn: CudaFunction,
    ucb_fn: CudaFunction,
    wins_fn: CudaFunction,
    lane: Mutex<(Arc<CudaStream>, CudaBlas)>,
}

/// What `score` leaves on the device: G = F·L `[k, d]`, means and UCB scores `[k]`.
struct Scored {
    g: CudaSlice<f32>,
    means: CudaSlice<f32>,
    ucb: CudaSlice<f32>,
}

/// Means and LinUCB scores, one per candidate.
#[derive(Debug, Clone)]
pub struct UcbScores {
    /// F·θ.
    pub means: Vec<f32>,
    /// mean + α·√(fᵀΣf).
    pub ucb: Vec<f32>,
}

impl GpuScorer {
    /// `theta` `[d]` and the lower Cholesky factor `chol` of Σ, row-major `[d, d]`.
    pub fn new(gpu: &Arc<Gpu>, theta: &[f32], chol: &[f32]) -> Result<Self, GpuError> {
        let d = theta.len();
        if d == 0 || chol.len() != d * d || theta.iter().chain(chol).any(|v| !v.is_finite()) {
            return Err(GpuError::invalid(format!(
                "scorer: theta of {d} and a Cholesky factor of {} values (expected {}), all finite",
                chol.len(),
                d * d
            )));
        }
        let mut chol_t = vec![0f32; d * d];
        for i in 0..d {
            for j in 0..d {
                chol_t[j * d + i] = chol[i * d + j];
            }
        }
        let v = Variant {
            arch: gpu.arch(),
            half: Half::F16,
            head_dim: 32,
            hidden: 0,
            activation: 0,
        };
        Ok(Self {
            d,
            theta: gpu.upload(theta)?,
            chol_t: gpu.upload(&chol_t)?,
            draws_fn: gpu.function("scoring", "normal_draws", v)?,
            ucb_fn: gpu.function("scoring", "ucb_scores", v)?,
            wins_fn: gpu.function("scoring", "thompson_wins", v)?,
            lane: Mutex::new(gpu.stream()?),
        })
    }

    /// Width of a candidate's feature vector.
    pub fn dim(&self) -> usize {
        self.d
    }

    fn check(&self, feats: &[f32]) -> Result<usize, GpuError> {
        if feats.is_empty() || !feats.len().is_multiple_of(self.d) || feats.iter().any(|v| !v.is_finite()) {
            return Err(GpuError::invalid(format!(
                "candidate features: {} values are not whole finite rows of {}",
                feats.len(),
                self.d
            )));
        }
        Ok(feats.len() / self.d)
    }

    /// Uploads `feats` (`[k, d]`) and computes G = F·L, the means and the UCB scores on the
    /// lane's stream.
    fn score(
        &self,
        stream: &Arc<CudaStream>,
        blas: &CudaBlas,
        feats: &[f32],
        k: usize,
        alpha: f32,
    ) -> Result<Scored, GpuError> {
        let f = stream.clone_htod(feats)?;
        let mut g = stream.alloc_zeros::<f32>(k * self.d)?;
        matmul_f32(blas, stream, &f, &self.chol_t, &mut g, k, self.d, self.d)?;
        let mut means = stream.alloc_zeros::<f32>(k)?;
        let mut ucb = stream.alloc_zeros::<f32>(k)?;
        let (k_i, d_i) = (k as i32, self.d as i32);
        // SAFETY: f and g are [k, d], theta [d], means and ucb [k].
        unsafe {
            let mut l = stream.launch_builder(&self.ucb_fn);
            l.arg(&f)
                .arg(&self.theta)
                .arg(&g)
                .arg(&k_i)
                .arg(&d_i)
                .arg(&alpha)
                .arg(&mut means)
                .arg(&mut ucb);
            l.launch(LaunchConfig {
                grid_dim: (k.div_ceil(8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })?;
        }
        Ok(Scored { g, means, ucb })
    }

    /// Means and UCB scores (α the exploration width) for `feats`, row-major `[k, d]`.
    pub fn ucb(&self, feats: &[f32], alpha: f32) -> Result<UcbScores, GpuError> {
        let k = self.check(feats)?;
        let lane = self
            .lane
            .lock()
            .map_err(|_| GpuError::invalid("scorer lane poisoned"))?;
        let (stream, blas) = (&lane.0, &lane.1);
        let Scored { means, ucb, .. } = self.score(stream, blas, feats, k, alpha)?;
        let out = UcbScores {
            means: stream.clone_dtoh(&means)?,
            ucb: stream.clone_dtoh(&ucb)?,
        };
        stream.synchronize()?;
        Ok(out)
    }

    /// Each candidate's share of `samples` posterior draws won (ties share), with the
    /// posterior spread scaled by `scale`; draws come from Philox keyed by `seed`.
    pub fn thompson(&self, feats: &[f32], scale: f32, samples: usize, seed: u64) -> Result<Vec<f32>, GpuError> {
        let k = self.check(feats)?;
        if samples == 0 || samples > i32::MAX as usize / self.d.max(k) {
            return Err(GpuError::invalid(format!(
                "samples: {samples} is not a usable number of draws"
            )));
        }
        let lane = self
            .lane
            .lock()
            .map_err(|_| GpuError::invalid("scorer lane poisoned"))?;
        let (stream, blas) = (&lane.0, &lane.1);
        let Scored { g, means, .. } = self.score(stream, blas, feats, k, 0.0)?;
        let (k_i, s_i) = (k as i32, samples as i32);
        let n = samples * self.d;
        let n_i = n as i32;
        let mut z = stream.alloc_zeros::<f32>(n)?;
        let (seed_lo, seed_hi) = (seed as u32, (seed >> 32) as u32);
        // SAFETY: z holds samples·d draws.
        unsafe {
            let mut l = stream.launch_builder(&self.draws_fn);
            l.arg(&seed_lo).arg(&seed_hi).arg(&n_i).arg(&mut z);
            l.launch(LaunchConfig {
                grid_dim: (n.div_ceil(4).div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })?;
        }
        // D = Z·Gᵀ: [samples, k], each draw's k values contiguous.
        let mut draws = stream.alloc_zeros::<f32>(samples * k)?;
        matmul_f32(blas, stream, &z, &g, &mut draws, samples, k, self.d)?;
        let mut wins = stream.alloc_zeros::<f32>(k)?;
        // SAFETY: draws [samples, k], means and wins [k].
        unsafe {
            let mut l = stream.launch_builder(&self.wins_fn);
            l.arg(&means).arg(&draws).arg(&scale).arg(&k_i).arg(&s_i).arg(&mut wins);
            l.launch(LaunchConfig {
                grid_dim: (samples.div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })?;
        }
        let wins = stream.clone_dtoh(&wins)?;
        stream.synchronize()?;
        Ok(wins.into_iter().map(|w| w / samples as f32).collect())
    }
}
