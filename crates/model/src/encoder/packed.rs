//! The serving forward on packed sequences: a batch's sequences laid end to end as
//! `[tokens, hidden]` rows, with no padding at all, on plain buffers.
//!
//! Every part of a BERT layer but attention works token by token, so only attention needs to
//! know where one sequence ends and the next begins. A padded batch costs `longest × texts`
//! positions in every dense layer; customer messages run from 4 to 60 tokens, so even a
//! length-sorted batch of real traffic carries a fifth to a half of padding. Packing removes
//! it: the dense layers see exactly the real tokens, and [`attention`] reads each sequence's
//! rows of the fused QKV projection in place, head by head.
//!
//! The elementwise steps are fused into in-place passes over the layer's buffers (residual
//! add with layer norm, the activation), rather than candle ops that each allocate a fresh
//! tensor: fresh multi-megabyte buffers are fresh pages, and the kernel zeroing them cost
//! more than the layer norms themselves. Training keeps the padded candle graph (it needs the
//! backward); the two are checked against each other on mixed-length batches.
use super::ops::rows_per_task;
use rayon::prelude::*;

/// `a · b` for short vectors (a head's 32 or 64 values), in eight independent lanes so the
/// compiler vectorises it (a plain fold would have to keep the sequential rounding order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() & !7);
    let (b8, b_tail) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for every value: Cephes' `expf` (range reduction by ln 2, degree-6 polynomial; relative
/// error ~1e-7) in plain arithmetic, so the loop vectorizes. libm's scalar `expf` was a third of
/// attention's time on short texts, which take one exponential per query and key.
fn exp_in_place(x: &mut [f32]) {
    // 1.5·2²³: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    for v in x.iter_mut() {
        let x = v.clamp(-87.0, 88.0);
        let n = x * std::f32::consts::LOG2_E + MAGIC;
        let k = n - MAGIC;
        let r = x - k * LN2_HI - k * LN2_LO;
        let mut y = 1.987_569_1e-4f32;
        y = y * r + 1.398_199_9e-3;
        y = y * r + 8.333_452e-3;
        y = y * r + 4.166_579_6e-2;
        y = y * r + 1.666_666_5e-1;
        y = y * r + 0.5;
        y = y * r * r + r + 1.0;
        // 2^k from k's bits: |k| ≤ 127 here, so the exponent field stays in range.
        let k_int = n.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
        *v = y * f32::from_bits(((k_int + 127) as u32) << 23);
    }
}

/// Softmax attention over packed sequences: `qkv` is `[tokens, 3 × hidden]` (Q with the
/// 1/√d scale folded in, then K, then V, as the fused projection writes them); returns
/// `[tokens, hidden]`. Sequence `s` is rows `offsets[s]..offsets[s + 1]`.
pub(super) fn attention(qkv: &[f32], offsets: &[usize], heads: usize, head_dim: usize) -> Vec<f32> {
    let hidden = heads * head_dim;
    let row = 3 * hidden;
    let tokens = qkv.len() / row;
    let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    // One task per head (independent, and as many as the cores want for one text or many),
    // each writing head-major rows; interleaving them back into token rows is one copy of
    // tokens × hidden floats, small beside the products.
    let mut by_head = vec![0f32; tokens * hidden];
    by_head
        .par_chunks_mut((tokens * head_dim).max(1))
        .enumerate()
        .for_each(|(h, out)| {
            let (q_at, k_at, v_at) = (h * head_dim, hidden + h * head_dim, 2 * hidden + h * head_dim);
            let mut p = vec![0f32; longest];
            for w in offsets.windows(2) {
                let rows = &qkv[w[0] * row..w[1] * row];
                let p = &mut p[..w[1] - w[0]];
                for (i, query) in rows.chunks_exact(row).enumerate() {
                    let q = &query[q_at..q_at + head_dim];
                    let mut max = f32::NEG_INFINITY;
                    for (p, key) in p.iter_mut().zip(rows.chunks_exact(row)) {
                        *p = dot(q, &key[k_at..k_at + head_dim]);
                        max = max.max(*p);
                    }
                    p.iter_mut().for_each(|p| *p -= max);
                    exp_in_place(p);
                    let sum: f32 = p.iter().sum();
                    let o = &mut out[(w[0] + i) * head_dim..][..head_dim];
                    for (&p, value) in p.iter().zip(rows.chunks_exact(row)) {
                        for (o, &v) in o.iter_mut().zip(&value[v_at..v_at + head_dim]) {
                            *o += p * v;
                        }
                    }
                    let inv = 1.0 / sum;
                    o.iter_mut().for_each(|v| *v *= inv);
                }
            }
        });
    let mut out = vec![0f32; tokens * hidden];
    for (t, dst) in out.chunks_exact_mut(hidden).enumerate() {
        for (h, dst) in dst.chunks_exact_mut(head_dim).enumerate() {
            dst.copy_from_slice(&by_head[(h * tokens + t) * head_dim..][..head_dim]);
        }
    }
    out
}

/// `x ← LayerNorm(x + residual)` row by row (`weight`, `bias`: one value per column).
pub(super) fn add_layer_norm(x: &mut [f32], residual: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    let chunk = width * rows_per_task(width);
    x.par_chunks_mut(chunk)
        .zip(residual.par_chunks(chunk))
        .for_each(|(x, r)| {
            for (x, r) in x.chunks_exact_mut(width).zip(r.chunks_exact(width)) {
                let mut sum = 0f32;
                for (x, r) in x.iter_mut().zip(r) {
                    *x += r;
                    sum += *x;
                }
                let mean = sum / width as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                for ((x, w), b) in x.iter_mut().zip(weight).zip(bias) {
                    *x = (*x - mean) * rstd * w + b;
                }
            }
        });
}

/// Applies `f` to every value of `x`, in parallel chunks.
pub(super) fn map_in_place(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    x.par_chunks_mut(16_384)
        .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_key_copies_its_value_and_equal_scores_average() {
        // Two sequences, one head of width 2. Sequence 0 has one token: attention returns
        // its own value. Sequence 1 has two tokens with zero queries: equal scores, so each
        // token gets the mean of the two values.
        let qkv = [
            0.3, -0.2, /* k */ 1.0, 2.0, /* v */ 5.0, 7.0, //
            0.0, 0.0, 0.5, 0.1, 1.0, 3.0, //
            0.0, 0.0, -0.5, 0.4, 3.0, -1.0,
        ];
        let out = attention(&qkv, &[0, 1, 3], 1, 2);
        assert_eq!(out, vec![5.0, 7.0, 2.0, 1.0, 2.0, 1.0]);
    }

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let xs: Vec<f32> = (0..20_000).map(|i| -87.0 + i as f32 * 0.00875).collect();
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!((g - want).abs() <= 4e-7 * want, "exp({x}) = {g}, libm {want}");
        }
    }

    #[test]
    fn add_layer_norm_centres_and_scales_each_row() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        let residual = vec![1.0, 0.0, -1.0, 0.0, 2.0, 2.0, 2.0, 2.0];
        add_layer_norm(&mut x, &residual, &[2.0; 4], &[1.0; 4], 1e-12);
        // Row 0 becomes [2, 2, 2, 4]: mean 2.5, std √0.75. Row 1 is constant: all bias.
        let s = 0.75f32.sqrt();
        let want = [-0.5 / s, -0.5 / s, -0.5 / s, 1.5 / s].map(|v| v * 2.0 + 1.0);
        for (a, b) in x[..4].iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(&x[4..], &[1.0; 4]);
    }
}
