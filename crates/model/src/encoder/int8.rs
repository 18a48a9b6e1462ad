//! Integer linear layers for inference: 8-bit weights, 7-bit activations, 32-bit sums.
//!
//! Why our own kernel: on the 2-core boxes Nudge is meant to run on, the encoder's dense layers
//! are the whole cost, and an f32 GEMM is capped by 16 multiply-adds per cycle per core (AVX2).
//! 8-bit products run four to a 32-bit lane: AVX-512 VNNI's `vpdpbusd` does 64 multiply-adds
//! in one instruction, AVX2's `vpmaddubsw` + `vpmaddwd` 32 in two. Integer weights also stream a
//! quarter of the bytes of f32 ones. candle's quantized matmul does not help here: its fast x86
//! paths need the inner dimension to be a multiple of 256 (e5-small and MiniLM have 384) or
//! AVX-512 VNNI, and its generic path ran at a fifth of the f32 GEMM on these shapes.
//!
//! The scheme is dynamic quantization as in ONNX Runtime and PyTorch:
//! - each weight row (one output) gets its own scale to ±127;
//! - each activation row (one token) is quantized at run time to 0..=127 over its own
//!   [min, max] (a scale and a zero point per token). 7 bits, not 8, because `vpmaddubsw` adds
//!   two u8·i8 products into a saturating i16: 2·127·127 fits, 2·255·127 does not. With 7 bits
//!   every kernel computes the same exact integers. The zero point comes off after the sum,
//!   `Σ w(q − z) = Σ wq − z·Σ w`, with `Σ w` per output kept from packing;
//! - a few values per token far outside the rest (more than [`OUTLIER_RATIO`] times the token's
//!   mean magnitude, at most [`MAX_OUTLIERS`]) stay out of the integer sum and are added in f32
//!   after it. Transformer activations have a handful of such channels (20–40× the median after
//!   a layer norm in e5-small); left in, they set the token's scale and flatten every other value
//!   to a few levels. On 400 real messages, all layers at 7 bits give pooled vectors at a mean
//!   cosine of 0.99873 to f32's without the outliers taken out, 0.99987 with (12-bit
//!   activations, the previous scheme, gave 0.99993 at half the speed).
//!
//! Every sum is exact in 32 bits for inner dimensions up to 8,192 (4·127·127 per quad) —
//! checked when weights are packed.
//!
//! The one `unsafe` in the crate lives here: unaligned vector loads from slices whose length
//! is checked before the loop, and the calls into the AVX2 / AVX-512 functions after the CPU
//! was asked whether it has those features. A portable kernel computes the same integers bit for
//! bit; tests check the kernels against each other and against an f32 reference.
use rayon::prelude::*;

/// Largest magnitude of a quantized weight.
const W_MAX: f32 = 127.0;
/// Largest quantized activation (7 bits, unsigned).
const A_MAX: f32 = 127.0;
/// A value this many times its token's mean magnitude is an outlier (see the module docs).
pub const OUTLIER_RATIO: f32 = 6.0;
/// At most this many outliers per token (the largest); the rest are quantized as usual.
pub const MAX_OUTLIERS: usize = 8;
/// Output columns per packed weight panel: 16 i32 lanes (one AVX-512 vector, two AVX2 ones).
const PANEL: usize = 16;
/// Inner values per 32-bit lane.
const QUAD: usize = 4;
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
/// Weights are packed in panels of 16 outputs, inner dimension in quads: the micro-kernel
/// broadcasts one quad of a token's activations and multiply-adds it against 16 outputs at
/// once, so sums land in output order and never need a horizontal reduction.
pub struct Int8Linear {
    out: usize,
    inner: usize,
    /// Inner quads (`inner` rounded up to a multiple of 4, divided by 4).
    quads: usize,
    /// `[panel][quad][16 outputs][4]`, zeros in the padding.
    weight: Vec<i8>,
    /// `[inner][out]`: the same integers by input, for adding outliers' products (a contiguous
    /// row per input, so that is a vector multiply-add).
    by_input: Vec<i8>,
    /// Per output (padded to whole panels): the sum of its integer weights.
    colsum: Vec<i32>,
    /// Per output (padded): the weight row's scale (real = integer × scale).
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

/// Activations of a batch, quantized: each quad packed in one i32 (lowest byte first), rows
/// padded to a multiple of `MR` with zeros.
struct Activations {
    quads: Vec<i32>,
    scale: Vec<f32>,
    /// Per row: the integer that stands for 0.
    zero: Vec<i32>,
    /// Per row: (input index, value) of the outliers, quantized as 0 and added after.
    outliers: Vec<Vec<(u32, f32)>>,
}

/// Lanes of the row loops below: independent accumulators the compiler keeps in vector
/// registers (a plain fold over floats is one long dependency chain, which it may not reorder).
const LANES: usize = 16;

/// Quantizes one row into `dst` (its quads), setting its outliers aside; returns its scale and
/// zero point. Every loop over the row is written lane-wise so it vectorizes: this runs once
/// per token per layer, and a scalar version cost more than the integer product itself.
fn quantize_row(row: &[f32], dst: &mut [i32], outliers: &mut Vec<(u32, f32)>) -> (f32, i32) {
    // 1. Mean magnitude and range.
    let (mut sum, mut lo, mut hi) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            sum[i] += c[i].abs();
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        sum[i] += v.abs();
        lo[i] = lo[i].min(v);
        hi[i] = hi[i].max(v);
    }
    let cut = OUTLIER_RATIO * sum.iter().sum::<f32>() / row.len() as f32;
    let (mut lo, mut hi) = (
        lo.iter().fold(0f32, |a, &b| a.min(b)),
        hi.iter().fold(0f32, |a, &b| a.max(b)),
    );
    // 2. Outliers, if the range reaches past the cut: the range over the rest (masked, lane-
    // wise), and the outliers themselves from the few chunks that hold one.
    if -lo > cut || hi > cut {
        let (mut rlo, mut rhi) = ([0f32; LANES], [0f32; LANES]);
        let mut chunks = row.chunks_exact(LANES);
        let mut first = 0u32;
        for chunk in &mut chunks {
            let mut flags = 0u32;
            for i in 0..LANES {
                let out = chunk[i].abs() > cut;
                flags |= u32::from(out) << i;
                let m = if out { 0.0 } else { chunk[i] };
                rlo[i] = if m < rlo[i] { m } else { rlo[i] };
                rhi[i] = if m > rhi[i] { m } else { rhi[i] };
            }
            while flags != 0 {
                let i = flags.trailing_zeros();
                outliers.push((first + i, chunk[i as usize]));
                flags &= flags - 1;
            }
            first += LANES as u32;
        }
        for (k, &v) in (first..).zip(chunks.remainder()) {
            if v.abs() > cut {
                outliers.push((k, v));
            } else {
                (rlo[0], rhi[0]) = (rlo[0].min(v), rhi[0].max(v));
            }
        }
        lo = rlo.iter().fold(0f32, |a, &b| a.min(b));
        hi = rhi.iter().fold(0f32, |a, &b| a.max(b));
        if outliers.len() > MAX_OUTLIERS {
            // Keep the largest; the others go back into the range and the integer sum.
            outliers.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
            for &(_, v) in &outliers[MAX_OUTLIERS..] {
                (lo, hi) = (lo.min(v), hi.max(v));
            }
            outliers.truncate(MAX_OUTLIERS);
        }
    }
    // 3. The grid: the range always holds 0, so 0 (the outliers' places, the zero padding) is
    // exact and the zero point lies in 0..=127.
    let range = hi - lo;
    let s = if range > 0.0 && range.is_finite() {
        range / A_MAX
    } else {
        1.0
    };
    let inv = 1.0 / s;
    let z = round(-lo * inv).clamp(0, A_MAX as i32);
    // floor(v/s + z + 0.5) on the grid 0..=127. `max`/`min` map NaN to a bound, so the value
    // is finite and in range, and the cast needs no saturation check (which would keep it
    // from vectorizing).
    let offset = z as f32 + 0.5;
    #[allow(clippy::manual_clamp)] // `clamp` would pass NaN through
    let q = |v: f32| {
        let t = (v * inv + offset).max(0.0).min(A_MAX);
        // SAFETY: `t` is finite and within 0..=127 (see above), so it fits in a u8.
        #[allow(unsafe_code)]
        unsafe {
            t.to_int_unchecked::<u8>()
        }
    };
    let mut quads = row.chunks_exact(QUAD);
    for (d, p) in dst.iter_mut().zip(&mut quads) {
        *d = i32::from_le_bytes([q(p[0]), q(p[1]), q(p[2]), q(p[3])]);
    }
    if let (Some(d), tail) = (dst.get_mut(row.len() / QUAD), quads.remainder()) {
        if !tail.is_empty() {
            let mut b = [0u8; QUAD];
            b.iter_mut().zip(tail).for_each(|(b, &v)| *b = q(v));
            *d = i32::from_le_bytes(b);
        }
    }
    // Outliers count as 0: their byte becomes the zero point.
    for &(k, _) in outliers.iter() {
        let (d, shift) = (&mut dst[k as usize / QUAD], 8 * (k as usize % QUAD));
        *d = ((*d as u32 & !(0xff << shift)) | (z as u32) << shift) as i32;
    }
    (s, z)
}

/// Rounds half away from zero by hand: `f32::round` is a libm call per value on baseline
/// x86-64, this is two vector instructions. `as` saturates (NaN → 0).
#[inline(always)]
fn round(t: f32) -> i32 {
    (t + 0.5f32.copysign(t)) as i32
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
        let quads = inner.div_ceil(QUAD);
        let panels = out.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * quads * PANEL * QUAD];
        let mut by_input = vec![0i8; inner * out];
        let mut colsum = vec![0i32; panels * PANEL];
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
                let q = (v / s).round() as i8;
                packed[((panel * quads + k / QUAD) * PANEL + lane) * QUAD + k % QUAD] = q;
                by_input[k * out + j] = q;
                colsum[j] += i32::from(q);
            }
        }
        Ok(Self {
            out,
            inner,
            quads,
            weight: packed,
            by_input,
            colsum,
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
        self.add_outliers(&acts, &mut y);
        y
    }

    /// Quantizes each row of `x` with its own scale and zero point, outliers set aside, rows in
    /// parallel.
    fn quantize_rows(&self, x: &[f32], rows: usize) -> Activations {
        let rows_p = rows.next_multiple_of(MR);
        let n = self.quads;
        let mut quads = vec![0i32; rows_p * n];
        let mut scale = vec![0f32; rows_p];
        let mut zero = vec![0i32; rows_p];
        let mut outliers = vec![Vec::new(); rows];
        quads
            .par_chunks_mut(n)
            .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
            .zip(x.par_chunks(self.inner).zip(outliers.par_iter_mut()))
            .with_min_len(8)
            .for_each(|((dst, (scale, zero)), (row, outliers))| {
                (*scale, *zero) = quantize_row(row, dst, outliers);
            });
        Activations {
            quads,
            scale,
            zero,
            outliers,
        }
    }

    /// Adds the outliers' products, left out of the integer sums, to `y`.
    fn add_outliers(&self, acts: &Activations, y: &mut [f32]) {
        let scale = &self.scale[..self.out];
        y.par_chunks_mut(self.out)
            .zip(acts.outliers.par_iter())
            .filter(|(_, found)| !found.is_empty())
            .for_each(|(y, found)| {
                for &(k, v) in found {
                    let w = &self.by_input[k as usize * self.out..(k as usize + 1) * self.out];
                    for ((y, &w), &s) in y.iter_mut().zip(w).zip(scale) {
                        *y += v * s * w as f32;
                    }
                }
            });
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
            let (a, z) = (acts.scale[r], acts.zero[r]);
            // `scale`, `bias` and `colsum` are padded to whole panels: these slices are PANEL long.
            let (scale, bias) = (&self.scale[col0..col0 + PANEL], &self.bias[col0..col0 + PANEL]);
            let colsum = &self.colsum[col0..col0 + PANEL];
            let mut v = [0f32; PANEL];
            for ((((v, &s), &c), &w), &b) in v.iter_mut().zip(s).zip(colsum).zip(scale).zip(bias) {
                *v = (s - z * c) as f32 * a * w + b;
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
/// `MR × PANEL` block of sums from (activation quads from row `r`, panel index).
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

/// The weight quads of one panel and the activation quads of each of the `MR` rows from `r`.
#[inline(always)]
fn operands<'a>(layer: &'a Int8Linear, acts: &'a Activations, r: usize, p: usize) -> (&'a [i8], [&'a [i32]; MR]) {
    let n = layer.quads;
    (
        &layer.weight[p * n * PANEL * QUAD..(p + 1) * n * PANEL * QUAD],
        std::array::from_fn(|i| &acts.quads[(r + i) * n..(r + i + 1) * n]),
    )
}

/// Plain Rust: the fallback off x86 and the reference the vector kernels are tested against.
mod portable {
    use super::*;

    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, a) = operands(layer, acts, r, p);
        let mut out = [[0i32; PANEL]; MR];
        for (o, a) in out.iter_mut().zip(a) {
            for (wq, &quad) in w.chunks_exact(PANEL * QUAD).zip(a) {
                let x = (quad as u32).to_le_bytes();
                for (v, wc) in o.iter_mut().zip(wq.chunks_exact(QUAD)) {
                    *v += x
                        .iter()
                        .zip(wc)
                        .map(|(&x, &w)| i32::from(x) * i32::from(w))
                        .sum::<i32>();
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

    /// 8 quads (32 i8) of a panel: one unaligned 256-bit load.
    #[target_feature(enable = "avx2")]
    fn load(w: &[i8]) -> __m256i {
        assert!(w.len() >= 32);
        // SAFETY: at least 32 bytes are there (asserted).
        unsafe { _mm256_loadu_si256(w.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2")]
    fn store(v: __m256i, out: &mut [i32]) {
        assert!(out.len() >= 8);
        // SAFETY: at least 8 i32 = 32 bytes are there (asserted).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
    }

    /// `MR` rows × 16 outputs, 12 accumulators of 8 sums: `vpmaddubsw` (u7·i8 pairs into i16,
    /// which cannot saturate at 2·127·127), `vpmaddwd` against ones (the pairs into the quad's
    /// i32), `vpaddd`.
    #[target_feature(enable = "avx2")]
    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, [a0, a1, a2, a3, a4, a5]) = operands(layer, acts, r, p);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let quads = a0.iter().zip(a1).zip(a2).zip(a3).zip(a4).zip(a5);
        for (wq, (((((x0, x1), x2), x3), x4), x5)) in w.chunks_exact(PANEL * QUAD).zip(quads) {
            let w0 = load(&wq[..32]);
            let w1 = load(&wq[32..]);
            for (acc, x) in acc.iter_mut().zip([x0, x1, x2, x3, x4, x5]) {
                let x = _mm256_set1_epi32(*x);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones));
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

    /// `MR` rows × 16 outputs with `vpdpbusd` (four u8·i8 products added into each i32 lane).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn micro(layer: &Int8Linear, acts: &Activations, r: usize, p: usize) -> [[i32; PANEL]; MR] {
        let (w, [a0, a1, a2, a3, a4, a5]) = operands(layer, acts, r, p);
        let mut acc = [_mm512_setzero_si512(); MR];
        let quads = a0.iter().zip(a1).zip(a2).zip(a3).zip(a4).zip(a5);
        for (wq, (((((x0, x1), x2), x3), x4), x5)) in w.chunks_exact(PANEL * QUAD).zip(quads) {
            // SAFETY: `wq` is exactly 64 bytes (chunks_exact).
            let wv = unsafe { _mm512_loadu_si512(wq.as_ptr().cast()) };
            acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_set1_epi32(*x0), wv);
            acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_set1_epi32(*x1), wv);
            acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_set1_epi32(*x2), wv);
            acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_set1_epi32(*x3), wv);
            acc[4] = _mm512_dpbusd_epi32(acc[4], _mm512_set1_epi32(*x4), wv);
            acc[5] = _mm512_dpbusd_epi32(acc[5], _mm512_set1_epi32(*x5), wv);
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

    /// One micro-kernel block from every kernel this CPU runs: (name, sums).
    fn every_kernel(
        layer: &Int8Linear,
        acts: &Activations,
        r: usize,
        p: usize,
    ) -> Vec<(&'static str, [[i32; PANEL]; MR])> {
        #[allow(unused_mut)]
        let mut out = vec![("portable", portable::micro(layer, acts, r, p))];
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                out.push(("avx2", unsafe { avx2::micro(layer, acts, r, p) }));
            }
            if matches!(Kernel::detect(), Kernel::Avx512) {
                // SAFETY: `detect` checked the features.
                out.push(("avx512", unsafe { avx512::micro(layer, acts, r, p) }));
            }
        }
        out
    }

    #[test]
    fn vector_and_portable_kernels_agree_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, inner, out) in [(6, 16, 16), (7, 48, 40), (13, 384, 64), (5, 23, 17)] {
            let w = random(out * inner, &mut rng, 1.0);
            let x = random(rows * inner, &mut rng, 3.0);
            let layer = Int8Linear::quantize(&w, &vec![0.0; out], out, inner).unwrap();
            let acts = layer.quantize_rows(&x, rows);
            for r in (0..rows).step_by(MR) {
                for p in 0..layer.panels() {
                    let all = every_kernel(&layer, &acts, r, p);
                    let want = all[0].1;
                    for (name, got) in &all {
                        assert_eq!(got, &want, "{name} vs portable, {rows}×{inner}·{out}");
                    }
                    assert!(want.iter().flatten().any(|&v| v != 0));
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow_at_the_widest_inner_dimension() {
        let (rows, inner, out) = (MR, MAX_INNER, PANEL);
        let layer = Int8Linear::quantize(&vec![-1.0; out * inner], &vec![0.0; out], out, inner).unwrap();
        // Activations at A_MAX (zero point 0) against weights at -W_MAX: the largest sum in
        // magnitude. Then activations at 0 with zero point A_MAX: all of the result comes from
        // the zero-point correction.
        for (x, sum, zero) in [
            (1.0f32, -(A_MAX * W_MAX) as i64 * MAX_INNER as i64, 0),
            (-1.0, 0, A_MAX as i32),
        ] {
            let acts = layer.quantize_rows(&vec![x; rows * inner], rows);
            assert_eq!(acts.zero[0], zero);
            assert!(acts.outliers.iter().all(|o| o.is_empty()));
            for (name, sums) in every_kernel(&layer, &acts, 0, 0) {
                assert_eq!(sums[MR - 1][PANEL - 1] as i64, sum, "{name}");
            }
            let y = layer.forward(&vec![x; rows * inner], rows);
            let exact = -x * MAX_INNER as f32;
            assert!(
                y.iter().all(|&v| (v - exact).abs() < 1e-3 * MAX_INNER as f32),
                "{x}: {}",
                y[0]
            );
        }
    }

    #[test]
    fn matches_an_f32_layer_within_quantization_error_for_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (rows, inner, out) in [(1, 7, 3), (5, 384, 1152), (130, 40, 67), (3, 1536, 384)] {
            let w = random(out * inner, &mut rng, 0.1);
            let bias = random(out, &mut rng, 0.5);
            // Shifted, so the rows have a zero point inside their range.
            let x: Vec<f32> = random(rows * inner, &mut rng, 2.0).iter().map(|v| v + 0.7).collect();
            let layer = Int8Linear::quantize(&w, &bias, out, inner).unwrap();
            let y = layer.forward(&x, rows);
            let mut worst = 0f32;
            for r in 0..rows {
                let row = &x[r * inner..(r + 1) * inner];
                let (lo, hi) = row.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                let half_step = (hi - lo) / A_MAX / 2.0;
                for o in 0..out {
                    let wo = &w[o * inner..(o + 1) * inner];
                    let exact: f32 = bias[o] + row.iter().zip(wo).map(|(x, w)| x * w).sum::<f32>();
                    // Each weight is off by at most 1/254 of its row's largest, each activation
                    // by half a step, and the zero point by as much again.
                    let mag: f32 = row.iter().zip(wo).map(|(x, w)| (x * w).abs()).sum();
                    let wsum: f32 = wo.iter().map(|w| w.abs()).sum();
                    let bound = mag * 0.005 + 2.0 * half_step * wsum * 1.01 + 1e-5;
                    let err = (y[r * out + o] - exact).abs();
                    assert!(err <= bound, "{rows}×{inner}·{out}: {err} vs {bound}");
                    worst = worst.max(err / mag.max(1e-6));
                }
            }
            assert!(worst > 0.0, "quantization should not be exact on random data");
        }
    }

    #[test]
    fn outliers_leave_the_integer_sum_and_come_back_in_f32() {
        // One channel 100× the rest, as after a transformer's layer norm: without taking it out
        // every other value would fall on a handful of levels.
        let (inner, out) = (384, 64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let w = random(out * inner, &mut rng, 0.1);
        let mut x = random(2 * inner, &mut rng, 1.0);
        x[17] = 100.0;
        x[inner + 300] = -80.0;
        let layer = Int8Linear::quantize(&w, &vec![0.0; out], out, inner).unwrap();
        let acts = layer.quantize_rows(&x, 2);
        assert_eq!(acts.outliers, vec![vec![(17, 100.0)], vec![(300, -80.0)]]);
        // The step follows the ordinary values, not the outlier.
        assert!(acts.scale[0] < 2.0 / A_MAX * 1.01, "{}", acts.scale[0]);
        let y = layer.forward(&x, 2);
        for r in 0..2 {
            let row = &x[r * inner..(r + 1) * inner];
            for o in 0..out {
                let wo = &w[o * inner..(o + 1) * inner];
                let exact: f32 = row.iter().zip(wo).map(|(x, w)| x * w).sum();
                // The outlier's own product is off only by its weight's rounding.
                let bound = 0.005 * row.iter().zip(wo).map(|(x, w)| (x * w).abs()).sum::<f32>()
                    + 2.0 / A_MAX * wo.iter().map(|w| w.abs()).sum::<f32>();
                assert!((y[r * out + o] - exact).abs() <= bound, "row {r} out {o}");
            }
        }
        // At most MAX_OUTLIERS a token, the largest.
        let mut many = vec![0.01f32; inner];
        for (i, v) in many.iter_mut().enumerate().take(MAX_OUTLIERS + 3) {
            *v = 10.0 + i as f32;
        }
        let acts = layer.quantize_rows(&many, 1);
        assert_eq!(acts.outliers[0].len(), MAX_OUTLIERS);
        assert!(acts.outliers[0].iter().all(|&(k, _)| k >= 3));
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
