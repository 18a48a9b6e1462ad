//! Integer linear layers for inference: 8-bit weights, 12-bit activations, 32-bit sums.
//!
//! Why our own kernel: on the 2-core AVX2 boxes Nudge is meant to run on, the encoder's dense
//! layers are the whole cost, and an f32 GEMM is capped by 16 multiply-adds per cycle per core.
//! AVX2's `vpmaddwd` does 16 16-bit multiply-adds in one instruction at two per cycle, so integer
//! weights double the arithmetic ceiling and halve (vs f32) the bytes each forward streams.
//! candle's quantized matmul does not help here: its fast x86 paths need the inner dimension to
//! be a multiple of 256 (e5-small and MiniLM have 384) or AVX-512 VNNI, and its generic path ran
//! at a fifth of the f32 GEMM on these shapes.
//!
//! The scheme is dynamic quantization as in ONNX Runtime and PyTorch, with more bits where they
//! are free: each weight row (one output) gets its own scale to ±127; each activation row (one
//! token) is scaled at run time to ±2047 (12 bits, not 8: `vpmaddwd` multiplies 16-bit lanes
//! anyway, and the extra bits cost nothing). A pair of products is at most 2·2047·127 ≈ 2¹⁹, so
//! a 32-bit sum is exact for inner dimensions up to 8,192 — checked when weights are packed.
//!
//! The one `unsafe` in the crate lives here: unaligned vector loads from slices whose length
//! is checked before the loop, and the call into the AVX2 function after the CPU was asked
//! whether it has AVX2. A portable kernel computes the same integers bit for bit; tests check
//! the two against each other and against an f32 reference.
use rayon::prelude::*;

/// Largest magnitude of a quantized weight.
const W_MAX: f32 = 127.0;
/// Largest magnitude of a quantized activation (12 bits).
const A_MAX: f32 = 2047.0;
/// Output columns per packed weight panel: 16 i32 lanes (one AVX-512 vector, two AVX2 ones).
const PANEL: usize = 16;
/// Rows (tokens) per micro-kernel call.
const MR: usize = 6;
/// Largest inner dimension whose 32-bit sums cannot overflow (see the module docs).
pub const MAX_INNER: usize = 8192;
/// Panels per cache block: a block of packed weights stays in L2 while every row group of a
/// task passes over it.
const PANELS_PER_BLOCK: usize = 4;
/// Rows per parallel task when there are many rows (a multiple of `MR`).
const M_TASK: usize = 24;

/// A dense layer `y = x·Wᵀ + b` with `W` quantized per output row, ready for [`Self::forward`].
///
/// Weights are packed in panels of 16 outputs, inner dimension in pairs: the micro-kernel
/// broadcasts one pair of a token's activations and multiply-adds it against 16 outputs at
/// once, so sums land in output order and never need a horizontal reduction.
pub struct Int8Linear {
    out: usize,
    inner: usize,
    /// Inner pairs (`inner` rounded up to even, halved).
    pairs: usize,
    /// `[panel][pair][16 outputs][2]`, zeros in the padding.
    weight: Vec<i16>,
    /// Per output (padded to whole panels): the weight row's scale (real = integer × scale).
    scale: Vec<f32>,
    /// Per output, padded like `scale`.
    bias: Vec<f32>,
}

/// Why a layer cannot be quantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// Shapes do not agree.
    #[error("weight has {got} values, expected {out}×{inner}; bias has {bias}")]
    Shape {
        /// Values in the weight.
        got: usize,
        /// Outputs.
        out: usize,
        /// Inputs.
        inner: usize,
        /// Values in the bias.
        bias: usize,
    },
    /// The inner dimension is too large for exact 32-bit sums.
    #[error("inner dimension {0} is above {MAX_INNER}, where 32-bit sums could overflow")]
    TooWide(usize),
    /// A weight is NaN or infinite.
    #[error("weight row {0} is not finite")]
    NotFinite(usize),
}

/// Activations of a batch, quantized: pairs packed in one i32 (low half first), rows padded to
/// a multiple of `MR` with zeros.
struct Activations {
    pairs: Vec<i32>,
    scale: Vec<f32>,
}

impl Int8Linear {
    /// Quantizes `weight` (`[out, inner]`, row-major) and keeps `bias` (`[out]`).
    pub fn quantize(weight: &[f32], bias: &[f32], out: usize, inner: usize) -> Result<Self, QuantizeError> {
        if weight.len() != out * inner || bias.len() != out || inner == 0 || out == 0 {
            return Err(QuantizeError::Shape {
                got: weight.len(),
                out,
                inner,
                bias: bias.len(),
            });
        }
        if inner > MAX_INNER {
            return Err(QuantizeError::TooWide(inner));
        }
        let pairs = inner.div_ceil(2);
        let panels = out.div_ceil(PANEL);
        let mut packed = vec![0i16; panels * pairs * PANEL * 2];
        let mut scale = vec![1f32; panels * PANEL];
        let mut padded_bias = vec![0f32; panels * PANEL];
        padded_bias[..out].copy_from_slice(bias);
        for (j, row) in weight.chunks_exact(inner).enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            // `f32::max` skips NaN, so the maximum alone would not catch one.
            if row.iter().any(|v| !v.is_finite()) {
                return Err(QuantizeError::NotFinite(j));
            }
            let s = if max > 0.0 { max / W_MAX } else { 1.0 };
            scale[j] = s;
            let (panel, lane) = (j / PANEL, j % PANEL);
            for (k, &v) in row.iter().enumerate() {
                let at = ((panel * pairs + k / 2) * PANEL + lane) * 2 + k % 2;
                packed[at] = (v / s).round() as i16;
            }
        }
        Ok(Self {
            out,
            inner,
            pairs,
            weight: packed,
            scale,
            bias: padded_bias,
        })
    }

    /// Inputs per row.
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Outputs per row.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Which micro-kernel this machine runs (`avx512-vnni`, `avx2` or `portable`).
    pub fn kernel() -> &'static str {
        Kernel::detect().name()
    }

    fn panels(&self) -> usize {
        self.scale.len() / PANEL
    }

    /// `x` is `[rows, inner]` row-major; returns `[rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), rows * self.inner);
        let acts = self.quantize_rows(x, rows);
        let mut y = vec![0f32; rows * self.out];
        if rows == 0 {
            return y;
        }
        let kernel = Kernel::detect();
        if rows >= 2 * M_TASK {
            // Many rows: tasks own row ranges of the output and walk every panel.
            y.par_chunks_mut(M_TASK * self.out).enumerate().for_each(|(t, y)| {
                kernel.run(self, &acts, t * M_TASK, y, 0..self.panels(), 0);
            });
        } else {
            // Few rows (short texts): the weights are what costs, so each thread streams its
            // own share of the panels into a buffer; the buffers are copied into place after.
            let blocks = self.panels().div_ceil(PANELS_PER_BLOCK);
            let parts: Vec<(usize, Vec<f32>)> = (0..blocks)
                .into_par_iter()
                .map(|b| {
                    let panels = b * PANELS_PER_BLOCK..((b + 1) * PANELS_PER_BLOCK).min(self.panels());
                    let first = panels.start * PANEL;
                    let width = (panels.end * PANEL).min(self.out) - first;
                    let mut part = vec![0f32; rows * width];
                    kernel.run(self, &acts, 0, &mut part, panels, first);
                    (first, part)
                })
                .collect();
            for (first, part) in parts {
                let width = part.len() / rows;
                for (dst, src) in y.chunks_exact_mut(self.out).zip(part.chunks_exact(width)) {
                    dst[first..first + width].copy_from_slice(src);
                }
            }
        }
        y
    }

    /// Quantizes each row of `x` to ±[`A_MAX`] with its own scale, rows in parallel.
    fn quantize_rows(&self, x: &[f32], rows: usize) -> Activations {
        let rows_p = rows.next_multiple_of(MR);
        let n = self.pairs;
        let mut pairs = vec![0i32; rows_p * n];
        let mut scale = vec![0f32; rows_p];
        pairs
            .par_chunks_mut(n)
            .zip(scale.par_iter_mut())
            .zip(x.par_chunks(self.inner))
            .with_min_len(8)
            .for_each(|((dst, scale), row)| {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = if max > 0.0 && max.is_finite() { max / A_MAX } else { 1.0 };
                *scale = s;
                let inv = 1.0 / s;
                // Round half away from zero by hand: `f32::round` is a libm call per value on
                // baseline x86-64, this is two vector instructions. `as` saturates (NaN → 0).
                let q = |v: f32| {
                    let t = v * inv;
                    (t + 0.5f32.copysign(t)) as i32 as u16 as u32
                };
                let (whole, tail) = row.split_at(row.len() & !1);
                for (d, p) in dst.iter_mut().zip(whole.chunks_exact(2)) {
                    *d = (q(p[0]) | q(p[1]) << 16) as i32;
                }
                if let [last] = tail {
                    dst[n - 1] = q(*last) as i32;
                }
            });
        Activations { pairs, scale }
    }

    /// Scales one micro-kernel's sums back to reals and writes the valid ones into `y`.
    #[inline(always)]
    fn store(&self, sums: &[[i32; PANEL]; MR], acts: &Activations, row0: usize, panel: usize, y: &mut Tile<'_>) {
        let col0 = panel * PANEL;
        let cols = PANEL.min(self.out - col0);
        for (i, s) in sums.iter().enumerate() {
            let r = row0 + i;
            if r >= y.row_end {
                break;
            }
            let a = acts.scale[r];
            // `scale` and `bias` are padded to whole panels, so these slices are PANEL long.
            let (scale, bias) = (&self.scale[col0..col0 + PANEL], &self.bias[col0..col0 + PANEL]);
            let mut v = [0f32; PANEL];
            for (((v, &s), &w), &b) in v.iter_mut().zip(s).zip(scale).zip(bias) {
                *v = s as f32 * a * w + b;
            }
            let at = (r - y.row_start) * y.width + col0 - y.col_start;
            y.data[at..at + cols].copy_from_slice(&v[..cols]);
        }
    }
}

/// The part of the output one task writes.
struct Tile<'a> {
    data: &'a mut [f32],
    width: usize,
    row_start: usize,
    row_end: usize,
    col_start: usize,
}

/// Which micro-kernel this CPU runs, asked once per call.
#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs, asked once per process. `NUDGE_CPU_ISA=avx2` (or
    /// `portable`) caps it, as oneDNN's `ONEDNN_MAX_CPU_ISA` does, so one machine can measure
    /// what a smaller one would run.
    fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let cap = std::env::var("NUDGE_CPU_ISA").unwrap_or_default();
            #[cfg(target_arch = "x86_64")]
            {
                if cap.is_empty()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
                {
                    return Kernel::Avx512;
                }
                if cap != "portable" && std::is_x86_feature_detected!("avx2") {
                    return Kernel::Avx2;
                }
            }
            let _ = cap;
            Kernel::Portable
        })
    }

    /// The kernel's name, for benchmarks and logs.
    fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512-vnni",
        }
    }

    /// Rows `row0..` of `y` (as many as it holds), panels `panels`, whose first column is `col0`.
    fn run(
        self,
        layer: &Int8Linear,
        acts: &Activations,
        row0: usize,
        y: &mut [f32],
        panels: std::ops::Range<usize>,
        col0: usize,
    ) {
        let width = (panels.end * PANEL).min(layer.out) - col0;
        let rows = y.len() / width;
        let mut tile = Tile {
            data: y,
            width,
            row_start: row0,
            row_end: row0 + rows,
            col_start: col0,
        };
        match self {
            Kernel::Portable => portable::run(layer, acts, &mut tile, panels),
            // SAFETY: `detect` saw the features these functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Kernel::Avx2 => unsafe { avx2::run(layer, acts, &mut tile, panels) },
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            Kernel::Avx512 => unsafe { avx512::run(layer, acts, &mut tile, panels) },
        }
    }
}

/// The loop over row groups and panels every kernel shares; `$micro` computes one
/// `MR × PANEL` block of sums from (activation pairs from row `r`, panel index).
macro_rules! tile_loop {
    ($layer:expr, $acts:expr, $tile:expr, $panels:expr, $micro:expr) => {{
        let (layer, acts, tile, panels) = ($layer, $acts, $tile, $panels);
        let mut p0 = panels.start;
        while p0 < panels.end {
            let p1 = (p0 + PANELS_PER_BLOCK).min(panels.end);
            let mut r = tile.row_start;
            while r < tile.row_end {
                for p in p0..p1 {
                    let sums = $micro(layer, acts, r, p);
                    layer.store(&sums, acts, r, p, tile);
                }
                r += MR;
            }
            p0 = p1;
        }
    }};
}

/// The weight pairs of one panel and the activation pairs of each of the `MR` rows from `r`.
#[inline(always)]
fn operands<'a>(layer: &'a Int8Linear, acts: &'a Activations, r: usize, p: usize) -> (&'a [i16], [&'a [i32]; MR]) {
    let n = layer.pairs;
    (
        &layer.weight[p * n * PANEL * 2..(p + 1) * n * PANEL * 2],
        std::array::from_fn(|i| &acts.pairs[(r + i) * n..(r + i + 1) * n]),
    )
}

/// Plain Rust: the fallback off x86 and the reference the vector kernels are tested against.
mod portable {
    use super::*;

    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, a) = operands(layer, acts, r, p);
        let mut out = [[0i32; PANEL]; MR];
        for (o, a) in out.iter_mut().zip(a) {
            for (wp, &pair) in w.chunks_exact(PANEL * 2).zip(a) {
                let (lo, hi) = (pair as i16 as i32, (pair >> 16) as i16 as i32);
                for (c, v) in o.iter_mut().enumerate() {
                    *v += lo * wp[2 * c] as i32 + hi * wp[2 * c + 1] as i32;
                }
            }
        }
        out
    }

    pub(super) fn run(layer: &Int8Linear, acts: &Activations, tile: &mut Tile<'_>, panels: std::ops::Range<usize>) {
        tile_loop!(layer, acts, tile, panels, micro)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// 8 i16 pairs (16 i16) of a panel: one unaligned 256-bit load.
    #[target_feature(enable = "avx2")]
    fn load(w: &[i16]) -> __m256i {
        assert!(w.len() >= 16);
        // SAFETY: at least 16 i16 = 32 bytes are there (asserted).
        unsafe { _mm256_loadu_si256(w.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2")]
    fn store(v: __m256i, out: &mut [i32]) {
        assert!(out.len() >= 8);
        // SAFETY: at least 8 i32 = 32 bytes are there (asserted).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
    }

    /// `MR` rows × 16 outputs: 12 accumulators of 8 sums, `vpmaddwd` + `vpaddd` per pair.
    #[target_feature(enable = "avx2")]
    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, [a0, a1, a2, a3, a4, a5]) = operands(layer, acts, r, p);
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let pairs = a0.iter().zip(a1).zip(a2).zip(a3).zip(a4).zip(a5);
        for (wp, (((((x0, x1), x2), x3), x4), x5)) in w.chunks_exact(PANEL * 2).zip(pairs) {
            let w0 = load(&wp[..16]);
            let w1 = load(&wp[16..]);
            for (acc, x) in acc.iter_mut().zip([x0, x1, x2, x3, x4, x5]) {
                let x = _mm256_set1_epi32(*x);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, w1));
            }
        }
        let mut out = [[0i32; PANEL]; MR];
        for (o, acc) in out.iter_mut().zip(acc) {
            store(acc[0], &mut o[..8]);
            store(acc[1], &mut o[8..]);
        }
        out
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn run(layer: &Int8Linear, acts: &Activations, tile: &mut Tile<'_>, panels: std::ops::Range<usize>) {
        tile_loop!(layer, acts, tile, panels, micro)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// `MR` rows × 16 outputs with `vpdpwssd` (multiply pairs and add in one instruction).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, [a0, a1, a2, a3, a4, a5]) = operands(layer, acts, r, p);
        let mut acc = [_mm512_setzero_si512(); MR];
        let pairs = a0.iter().zip(a1).zip(a2).zip(a3).zip(a4).zip(a5);
        for (wp, (((((x0, x1), x2), x3), x4), x5)) in w.chunks_exact(PANEL * 2).zip(pairs) {
            // SAFETY: `wp` is exactly 32 i16 = 64 bytes (chunks_exact).
            let wv = unsafe { _mm512_loadu_si512(wp.as_ptr().cast()) };
            acc[0] = _mm512_dpwssd_epi32(acc[0], _mm512_set1_epi32(*x0), wv);
            acc[1] = _mm512_dpwssd_epi32(acc[1], _mm512_set1_epi32(*x1), wv);
            acc[2] = _mm512_dpwssd_epi32(acc[2], _mm512_set1_epi32(*x2), wv);
            acc[3] = _mm512_dpwssd_epi32(acc[3], _mm512_set1_epi32(*x3), wv);
            acc[4] = _mm512_dpwssd_epi32(acc[4], _mm512_set1_epi32(*x4), wv);
            acc[5] = _mm512_dpwssd_epi32(acc[5], _mm512_set1_epi32(*x5), wv);
        }
        let mut out = [[0i32; PANEL]; MR];
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 i32 = 64 bytes.
            unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), acc) };
        }
        out
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn run(layer: &Int8Linear, acts: &Activations, tile: &mut Tile<'_>, panels: std::ops::Range<usize>) {
        tile_loop!(layer, acts, tile, panels, micro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand::rngs::StdRng, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
    }

    #[test]
    fn vector_and_portable_kernels_agree_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, inner, out) in [(6, 16, 16), (7, 48, 40), (13, 384, 64)] {
            let w = random(out * inner, &mut rng, 1.0);
            let x = random(rows * inner, &mut rng, 3.0);
            let layer = Int8Linear::quantize(&w, &vec![0.0; out], out, inner).unwrap();
            let acts = layer.quantize_rows(&x, rows);
            for r in (0..rows).step_by(MR) {
                for p in 0..layer.panels() {
                    let want = portable::micro(&layer, &acts, r, p);
                    #[cfg(target_arch = "x86_64")]
                    #[allow(unsafe_code)]
                    {
                        if std::is_x86_feature_detected!("avx2") {
                            // SAFETY: checked just above.
                            assert_eq!(unsafe { avx2::micro(&layer, &acts, r, p) }, want);
                        }
                        if matches!(Kernel::detect(), Kernel::Avx512) {
                            // SAFETY: `detect` checked the features.
                            assert_eq!(unsafe { avx512::micro(&layer, &acts, r, p) }, want);
                        }
                    }
                    assert!(want.iter().flatten().any(|&v| v != 0));
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow_at_the_widest_inner_dimension() {
        // Every activation at -A_MAX and every weight at -W_MAX: the largest possible sum.
        let (rows, inner, out) = (MR, MAX_INNER, PANEL);
        let layer = Int8Linear::quantize(&vec![-1.0; out * inner], &vec![0.0; out], out, inner).unwrap();
        let acts = layer.quantize_rows(&vec![-1.0; rows * inner], rows);
        let want = (A_MAX * W_MAX) as i64 * MAX_INNER as i64;
        assert!(want < i32::MAX as i64);
        let sums = portable::micro(&layer, &acts, 0, 0);
        assert_eq!(sums[MR - 1][PANEL - 1] as i64, want);
        let y = layer.forward(&vec![-1.0; rows * inner], rows);
        assert!(y
            .iter()
            .all(|&v| (v - MAX_INNER as f32).abs() < 1e-3 * MAX_INNER as f32));
    }

    #[test]
    fn matches_an_f32_layer_within_quantization_error_for_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (rows, inner, out) in [(1, 7, 3), (5, 384, 1152), (130, 40, 67), (3, 1536, 384)] {
            let w = random(out * inner, &mut rng, 0.1);
            let bias = random(out, &mut rng, 0.5);
            let x = random(rows * inner, &mut rng, 2.0);
            let layer = Int8Linear::quantize(&w, &bias, out, inner).unwrap();
            let y = layer.forward(&x, rows);
            let mut worst = 0f32;
            for r in 0..rows {
                for o in 0..out {
                    let exact: f32 = bias[o] + (0..inner).map(|k| x[r * inner + k] * w[o * inner + k]).sum::<f32>();
                    // Error bound: each product's relative error is at most ~1/254 + 1/4094.
                    let mag: f32 = (0..inner).map(|k| (x[r * inner + k] * w[o * inner + k]).abs()).sum();
                    let err = (y[r * out + o] - exact).abs();
                    assert!(err <= mag * 0.005 + 1e-5, "{rows}×{inner}·{out}: {err} vs {mag}");
                    worst = worst.max(err / mag.max(1e-6));
                }
            }
            assert!(worst > 0.0, "quantization should not be exact on random data");
        }
    }

    #[test]
    fn refuses_bad_shapes_and_non_finite_weights() {
        assert!(matches!(
            Int8Linear::quantize(&[0.0; 5], &[0.0; 2], 2, 3),
            Err(QuantizeError::Shape { .. })
        ));
        assert!(matches!(
            Int8Linear::quantize(&[0.0, f32::NAN, 0.0, 0.0], &[0.0; 2], 2, 2),
            Err(QuantizeError::NotFinite(0))
        ));
        assert!(matches!(
            Int8Linear::quantize(&vec![0.0; MAX_INNER + 1], &[0.0], 1, MAX_INNER + 1),
            Err(QuantizeError::TooWide(_))
        ));
    }
}
