//! The CPU reference of every kernel: the same arithmetic in plain Rust, in f32 (f64 where the
//! kernel's answer is checked against the exact value), with halves rounded to nearest even
//! as the kernels round them. Tests run each kernel through [`crate::Single`] and compare.
use crate::Half;

fn normalize_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (c, v) in row.iter_mut().enumerate() {
        *v = (*v - mean) * rstd * gamma[c] + beta[c];
    }
}

/// Word row + position row, then LayerNorm: (f32 rows, half rows).
#[allow(clippy::too_many_arguments)]
pub fn embed_layer_norm(
    ids: &[u32],
    pos: &[u32],
    word: &[f32],
    position: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    half: Half,
) -> (Vec<f32>, Vec<u16>) {
    let h = gamma.len();
    let mut out = Vec::with_capacity(ids.len() * h);
    for (&id, &p) in ids.iter().zip(pos) {
        let (id, p) = (id as usize, p as usize);
        let mut row: Vec<f32> = (0..h).map(|c| word[id * h + c] + position[p * h + c]).collect();
        normalize_row(&mut row, gamma, beta, eps);
        out.extend(row);
    }
    let xh = out.iter().map(|&v| half.encode(v)).collect();
    (out, xh)
}

/// `resid ← LayerNorm(acc + bias + resid)` for the product's half output `acc`: (f32 rows,
/// half rows).
pub fn bias_residual_layer_norm(
    acc: &[u16],
    bias: &[f32],
    resid: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    half: Half,
) -> (Vec<f32>, Vec<u16>) {
    let h = bias.len();
    let mut out = resid.to_vec();
    for (row, a) in out.chunks_exact_mut(h).zip(acc.chunks_exact(h)) {
        for c in 0..h {
            row[c] += half.decode(a[c]) + bias[c];
        }
        normalize_row(row, gamma, beta, eps);
    }
    let xh = out.iter().map(|&v| half.encode(v)).collect();
    (out, xh)
}

/// The activation numbered as the kernel's `ACT`: 0 erf GELU, 1 tanh GELU, 2 ReLU.
pub fn activate(v: f32, activation: u32) -> f32 {
    match activation {
        0 => {
            let x = v as f64;
            (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
        }
        1 => 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh()),
        _ => v.max(0.0),
    }
}

/// erf to ~1e-15 (Abramowitz–Stegun would be too coarse to judge a kernel by).
fn erf(x: f64) -> f64 {
    // Series for small |x|, continued fraction (Lentz) for large.
    let a = x.abs();
    let r = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

/// Bias + activation on the product's half output, rounded to half.
pub fn bias_activation(acc: &[u16], bias: &[f32], activation: u32, half: Half) -> Vec<u16> {
    let cols = bias.len();
    acc.iter()
        .enumerate()
        .map(|(i, &v)| half.encode(activate(half.decode(v) + bias[i % cols], activation)))
        .collect()
}

/// Softmax attention of each packed sequence over its own rows: `qkv` `[tokens, 3·hidden]`
/// (the product's half output, without bias), `bias` `[3·hidden]`; returns the context
/// `[tokens, hidden]` in half.
pub fn attention(qkv: &[u16], bias: &[f32], offsets: &[u32], heads: usize, half: Half) -> Vec<u16> {
    let hidden = bias.len() / 3;
    let d = hidden / heads;
    let tokens = qkv.len() / (3 * hidden);
    let at = |t: usize, part: usize, c: usize| {
        half.decode(qkv[t * 3 * hidden + part * hidden + c]) + bias[part * hidden + c]
    };
    let mut out = vec![0u16; tokens * hidden];
    for w in offsets.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for h in 0..heads {
            for i in start..end {
                let scores: Vec<f64> = (start..end)
                    .map(|j| {
                        (0..d)
                            .map(|c| at(i, 0, h * d + c) as f64 * at(j, 1, h * d + c) as f64)
                            .sum()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 = (start..end).zip(&e).map(|(j, p)| p * at(j, 2, h * d + c) as f64).sum();
                    out[i * hidden + h * d + c] = half.encode((v / sum) as f32);
                }
            }
        }
    }
    out
}

/// Mean (or first) row of each packed sequence.
pub fn pool(x: &[f32], offsets: &[u32], hidden: usize, cls: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity((offsets.len() - 1) * hidden);
    for w in offsets.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for c in 0..hidden {
            out.push(if cls {
                x[start * hidden + c]
            } else {
                (start..end).map(|t| x[t * hidden + c] as f64).sum::<f64>() as f32 / (end - start) as f32
            });
        }
    }
    out
}

/// softmax(W·x̂ + b) per row, x̂ = x/‖x‖ when `normalize`.
pub fn linear_softmax(x: &[f32], hidden: usize, normalize: bool, w: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for row in x.chunks_exact(hidden) {
        let scale = if normalize {
            1.0 / row
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum::<f64>()
                .sqrt()
                .max(1e-12)
        } else {
            1.0
        };
        let logits: Vec<f64> = w
            .chunks_exact(hidden)
            .zip(bias)
            .map(|(wr, b)| wr.iter().zip(row).map(|(a, v)| *a as f64 * *v as f64).sum::<f64>() * scale + *b as f64)
            .collect();
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / s) as f32));
    }
    out
}

/// `x[rows, k] · w[n, k]ᵀ` with half inputs, exact (f64) accumulation, not yet rounded to
/// the half output.
pub fn matmul(x: &[u16], w: &[u16], rows: usize, n: usize, k: usize, half: Half) -> Vec<f32> {
    let xf: Vec<f64> = x.iter().map(|&v| half.decode(v) as f64).collect();
    let wf: Vec<f64> = w.iter().map(|&v| half.decode(v) as f64).collect();
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for j in 0..n {
            y[r * n + j] = (0..k).map(|i| xf[r * k + i] * wf[j * k + i]).sum::<f64>() as f32;
        }
    }
    y
}

/// Philox4x32-10 of `counter` under `seed`: the kernel's generator, bit for bit (the kernel
/// uses counters `(i, 0, 0, 0)`).
pub fn philox(counter: u32, seed: u64) -> [u32; 4] {
    philox_block([counter, 0, 0, 0], [seed as u32, (seed >> 32) as u32])
}

fn philox_block(mut c: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut k0, mut k1] = key;
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0];
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    c
}

/// The kernel's standard normal draws `0..n` under `seed`.
pub fn normal_draws(seed: u64, n: usize) -> Vec<f32> {
    let unit = |x: u32| ((x >> 8) + 1) as f32 * 5.960_464_5e-8;
    let mut out = Vec::with_capacity(n);
    for g in 0..n.div_ceil(4) {
        let r = philox(g as u32, seed);
        let a = (-2.0 * unit(r[0]).ln()).sqrt();
        let t = std::f32::consts::TAU * unit(r[1]);
        let b = (-2.0 * unit(r[2]).ln()).sqrt();
        let u = std::f32::consts::TAU * unit(r[3]);
        for z in [a * t.cos(), a * t.sin(), b * u.cos(), b * u.sin()] {
            if out.len() < n {
                out.push(z);
            }
        }
    }
    out
}

/// G = F·L in f64: `[k, d]`.
fn g_rows(feats: &[f32], chol: &[f32], d: usize) -> Vec<f64> {
    let k = feats.len() / d;
    let mut g = vec![0f64; k * d];
    for j in 0..k {
        for i in 0..d {
            g[j * d + i] = (0..d).map(|m| feats[j * d + m] as f64 * chol[m * d + i] as f64).sum();
        }
    }
    g
}

/// (means, UCB scores) as [`crate::GpuScorer::ucb`] defines them, in f64.
pub fn ucb(feats: &[f32], theta: &[f32], chol: &[f32], alpha: f32) -> (Vec<f32>, Vec<f32>) {
    let d = theta.len();
    let g = g_rows(feats, chol, d);
    let means: Vec<f64> = feats
        .chunks_exact(d)
        .map(|f| f.iter().zip(theta).map(|(a, b)| *a as f64 * *b as f64).sum())
        .collect();
    let ucb = means
        .iter()
        .zip(g.chunks_exact(d))
        .map(|(m, g)| (m + alpha as f64 * g.iter().map(|v| v * v).sum::<f64>().sqrt()) as f32)
        .collect();
    (means.into_iter().map(|m| m as f32).collect(), ucb)
}

/// Win shares as [`crate::GpuScorer::thompson`] defines them (same draws, f64 products).
pub fn thompson(feats: &[f32], theta: &[f32], chol: &[f32], scale: f32, samples: usize, seed: u64) -> Vec<f32> {
    let d = theta.len();
    let k = feats.len() / d;
    let g = g_rows(feats, chol, d);
    let (means, _) = ucb(feats, theta, chol, 0.0);
    let z = normal_draws(seed, samples * d);
    let mut wins = vec![0f64; k];
    let mut vals = vec![0f64; k];
    for s in 0..samples {
        let zs = &z[s * d..(s + 1) * d];
        for j in 0..k {
            let dj: f64 = (0..d).map(|i| g[j * d + i] * zs[i] as f64).sum();
            vals[j] = means[j] as f64 + scale as f64 * dj;
        }
        let best = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ties = vals.iter().filter(|v| **v == best).count() as f64;
        for j in 0..k {
            if vals[j] == best {
                wins[j] += 1.0 / ties;
            }
        }
    }
    wins.into_iter().map(|w| (w / samples as f64) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answers() {
        assert_eq!(
            philox_block([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox_block(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn normal_draws_look_standard() {
        let z = normal_draws(7, 200_000);
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "mean {mean}, variance {var}"
        );
        assert_ne!(normal_draws(8, 4), normal_draws(7, 4), "the seed must matter");
    }

    #[test]
    fn erf_is_accurate_on_both_branches() {
        // erf(0.5), erf(1), erf(3) to 1e-15.
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (3.0, 0.999_977_909_503_001_4),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14);
        }
    }

    #[test]
    fn bf16_and_f16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(Half::Bf16.decode(Half::Bf16.encode(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(Half::F16.decode(Half::F16.encode(65504.0)), 65504.0);
    }
}
