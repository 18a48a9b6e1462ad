//! One launcher per encoder kernel, on device buffers and a stream: the encoder's pass is a
//! sequence of these, and [`Single`] runs each alone on host data so that tests can hold it
//! against its CPU reference in [`crate::reference`]. The grid shapes live here only.
#![allow(unsafe_code)] // kernel launches; each says why its arguments are in bounds.

use crate::error::GpuError;
use crate::gpu::{Gpu, Half};
use crate::source::Variant;
use cudarc::driver::{CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// The encoder's kernels, compiled for one variant.
pub(crate) struct Functions {
    embed: CudaFunction,
    residual_norm: CudaFunction,
    activation: CudaFunction,
    attention: CudaFunction,
    pool: CudaFunction,
    heads: CudaFunction,
}

impl Functions {
    pub(crate) fn load(gpu: &Gpu, variant: Variant) -> Result<Self, GpuError> {
        Ok(Self {
            embed: gpu.function("layer_norm", "embed_layer_norm", variant)?,
            residual_norm: gpu.function("layer_norm", "bias_residual_layer_norm", variant)?,
            activation: gpu.function("activation", "bias_activation", variant)?,
            attention: gpu.function("attention", "attention", variant)?,
            pool: gpu.function("pool", "pool", variant)?,
            heads: gpu.function("heads", "linear_softmax", variant)?,
        })
    }
}

fn int(v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::invalid(format!("{v} does not fit a kernel argument")))
}

fn need(what: &str, len: usize, want: usize) -> Result<(), GpuError> {
    if len < want {
        return Err(GpuError::invalid(format!("{what}: {len} elements, need {want}")));
    }
    Ok(())
}

/// Warp per row, four rows per block.
fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(4) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Model constants the embedding kernel needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tables {
    pub hidden: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub eps: f32,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_layer_norm(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    t: Tables,
    ids: &CudaView<'_, u32>,
    pos: &CudaView<'_, u32>,
    word: &CudaView<'_, f32>,
    position: &CudaView<'_, f32>,
    gamma: &CudaView<'_, f32>,
    beta: &CudaView<'_, f32>,
    resid: &mut CudaViewMut<'_, f32>,
    xh: &mut CudaViewMut<'_, u16>,
) -> Result<(), GpuError> {
    let tokens = ids.len();
    need("positions", pos.len(), tokens)?;
    need("word table", word.len(), t.vocab * t.hidden)?;
    need("position table", position.len(), t.max_positions * t.hidden)?;
    need("norm", gamma.len().min(beta.len()), t.hidden)?;
    need("residual", resid.len(), tokens * t.hidden)?;
    need("half states", xh.len(), tokens * t.hidden)?;
    let (n, h, v, p) = (int(tokens)?, int(t.hidden)?, t.vocab as u32, t.max_positions as u32);
    // SAFETY: sizes checked above; ids and positions are clamped to the tables in the kernel.
    unsafe {
        let mut l = stream.launch_builder(&fns.embed);
        l.arg(ids)
            .arg(pos)
            .arg(word)
            .arg(position)
            .arg(gamma)
            .arg(beta)
            .arg(&t.eps);
        l.arg(&n).arg(&h).arg(&v).arg(&p).arg(resid).arg(xh);
        l.launch(rows_config(tokens))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_residual_layer_norm(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    rows: usize,
    hidden: usize,
    eps: f32,
    acc: &CudaView<'_, u16>,
    bias: &CudaView<'_, f32>,
    gamma: &CudaView<'_, f32>,
    beta: &CudaView<'_, f32>,
    resid: &mut CudaViewMut<'_, f32>,
    xh: &mut CudaViewMut<'_, u16>,
) -> Result<(), GpuError> {
    need("projection", acc.len(), rows * hidden)?;
    need("bias and norm", bias.len().min(gamma.len()).min(beta.len()), hidden)?;
    need("residual", resid.len(), rows * hidden)?;
    need("half states", xh.len(), rows * hidden)?;
    let (n, h) = (int(rows)?, int(hidden)?);
    // SAFETY: sizes checked above.
    unsafe {
        let mut l = stream.launch_builder(&fns.residual_norm);
        l.arg(acc)
            .arg(bias)
            .arg(resid)
            .arg(gamma)
            .arg(beta)
            .arg(&eps)
            .arg(&n)
            .arg(&h)
            .arg(xh);
        l.launch(rows_config(rows))?;
    }
    Ok(())
}

pub(crate) fn bias_activation(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    rows: usize,
    cols: usize,
    acc: &CudaView<'_, u16>,
    bias: &CudaView<'_, f32>,
    out: &mut CudaViewMut<'_, u16>,
) -> Result<(), GpuError> {
    if !cols.is_multiple_of(4) {
        return Err(GpuError::invalid(format!(
            "activation: {cols} columns is not a multiple of 4"
        )));
    }
    need("input", acc.len(), rows * cols)?;
    need("bias", bias.len(), cols)?;
    need("output", out.len(), rows * cols)?;
    let (r, c) = (int(rows)?, int(cols)?);
    let cfg = LaunchConfig {
        grid_dim: ((rows * cols / 4).div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: sizes checked above; the kernel strides over the grid.
    unsafe {
        let mut l = stream.launch_builder(&fns.activation);
        l.arg(acc).arg(bias).arg(&r).arg(&c).arg(out);
        l.launch(cfg)?;
    }
    Ok(())
}

/// `offsets` are the `seqs + 1` row boundaries of the packed sequences. A warp per
/// (sequence, head), four warps per block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    tokens: usize,
    hidden: usize,
    heads: usize,
    qkv: &CudaView<'_, u16>,
    bias: &CudaView<'_, f32>,
    offsets: &CudaView<'_, u32>,
    ctx: &mut CudaViewMut<'_, u16>,
) -> Result<(), GpuError> {
    let seqs = offsets.len().saturating_sub(1);
    need("qkv", qkv.len(), tokens * 3 * hidden)?;
    need("qkv bias", bias.len(), 3 * hidden)?;
    need("context", ctx.len(), tokens * hidden)?;
    let (h, s_i, n_heads) = (int(hidden)?, int(seqs)?, int(heads)?);
    let cfg = LaunchConfig {
        grid_dim: ((seqs * heads).div_ceil(4) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: sizes checked above; offsets come from the host and end at `tokens`.
    unsafe {
        let mut l = stream.launch_builder(&fns.attention);
        l.arg(qkv)
            .arg(bias)
            .arg(offsets)
            .arg(&s_i)
            .arg(&n_heads)
            .arg(&h)
            .arg(ctx);
        l.launch(cfg)?;
    }
    Ok(())
}

pub(crate) fn pool(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    hidden: usize,
    cls: bool,
    x: &CudaView<'_, f32>,
    offsets: &CudaView<'_, u32>,
    out: &mut CudaViewMut<'_, f32>,
) -> Result<(), GpuError> {
    let seqs = offsets.len().saturating_sub(1);
    need("pooled", out.len(), seqs * hidden)?;
    let (h, mode) = (int(hidden)?, i32::from(cls));
    // SAFETY: sizes checked above; offsets index rows of x.
    unsafe {
        let mut l = stream.launch_builder(&fns.pool);
        l.arg(x).arg(offsets).arg(&h).arg(&mode).arg(out);
        l.launch(LaunchConfig {
            grid_dim: (seqs as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_softmax(
    fns: &Functions,
    stream: &Arc<CudaStream>,
    rows: usize,
    hidden: usize,
    normalize: bool,
    x: &CudaView<'_, f32>,
    w: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    probs: &mut CudaViewMut<'_, f32>,
) -> Result<(), GpuError> {
    let labels = bias.len();
    need("pooled", x.len(), rows * hidden)?;
    need("head weight", w.len(), labels * hidden)?;
    need("probabilities", probs.len(), rows * labels)?;
    let (h, n, lb) = (int(hidden)?, i32::from(normalize), int(labels)?);
    // SAFETY: sizes checked above; shared memory holds hidden + labels + 32 floats.
    unsafe {
        let mut l = stream.launch_builder(&fns.heads);
        l.arg(x).arg(&h).arg(&n).arg(w).arg(bias).arg(&lb).arg(probs);
        l.launch(LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: ((hidden + labels + 32) * 4) as u32,
        })?;
    }
    Ok(())
}

/// Each encoder kernel alone, on host data: upload, launch, download. For tests against
/// [`crate::reference`] and for measuring one kernel; the encoder never goes through here.
pub struct Single {
    gpu: Arc<Gpu>,
    fns: Functions,
    stream: Arc<CudaStream>,
    half: Half,
}

impl Single {
    /// The kernels for `half`, heads of `head_dim`, rows of `hidden`, activation
    /// `activation` (0 erf GELU, 1 tanh GELU, 2 ReLU) on `gpu`.
    pub fn new(gpu: Arc<Gpu>, half: Half, head_dim: usize, hidden: usize, activation: u32) -> Result<Self, GpuError> {
        let variant = Variant {
            arch: gpu.arch(),
            half,
            head_dim,
            hidden,
            activation,
        };
        let fns = Functions::load(&gpu, variant)?;
        let (stream, _) = gpu.stream()?;
        Ok(Self { gpu, fns, stream, half })
    }

    /// The half type.
    pub fn half(&self) -> Half {
        self.half
    }

    /// See [`crate::reference::embed_layer_norm`].
    #[allow(clippy::too_many_arguments)]
    pub fn embed_layer_norm(
        &self,
        ids: &[u32],
        pos: &[u32],
        word: &[f32],
        position: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<u16>), GpuError> {
        let s = &self.stream;
        let hidden = gamma.len();
        let t = Tables {
            hidden,
            vocab: word.len() / hidden.max(1),
            max_positions: position.len() / hidden.max(1),
            eps,
        };
        let (ids, pos, word, position) = (
            s.clone_htod(ids)?,
            s.clone_htod(pos)?,
            s.clone_htod(word)?,
            s.clone_htod(position)?,
        );
        let (g, b) = (s.clone_htod(gamma)?, s.clone_htod(beta)?);
        let mut resid = s.alloc_zeros::<f32>(ids.len() * hidden)?;
        let mut xh = s.alloc_zeros::<u16>(ids.len() * hidden)?;
        embed_layer_norm(
            &self.fns,
            s,
            t,
            &ids.as_view(),
            &pos.as_view(),
            &word.as_view(),
            &position.as_view(),
            &g.as_view(),
            &b.as_view(),
            &mut resid.as_view_mut(),
            &mut xh.as_view_mut(),
        )?;
        let out = (s.clone_dtoh(&resid)?, s.clone_dtoh(&xh)?);
        s.synchronize()?;
        Ok(out)
    }

    /// See [`crate::reference::bias_residual_layer_norm`]; returns (residual, half states).
    pub fn bias_residual_layer_norm(
        &self,
        acc: &[u16],
        bias: &[f32],
        resid: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<u16>), GpuError> {
        let s = &self.stream;
        let hidden = bias.len();
        let rows = acc.len() / hidden.max(1);
        let (acc, bias, g, b) = (
            s.clone_htod(acc)?,
            s.clone_htod(bias)?,
            s.clone_htod(gamma)?,
            s.clone_htod(beta)?,
        );
        let mut resid = s.clone_htod(resid)?;
        let mut xh = s.alloc_zeros::<u16>(rows * hidden)?;
        bias_residual_layer_norm(
            &self.fns,
            s,
            rows,
            hidden,
            eps,
            &acc.as_view(),
            &bias.as_view(),
            &g.as_view(),
            &b.as_view(),
            &mut resid.as_view_mut(),
            &mut xh.as_view_mut(),
        )?;
        let out = (s.clone_dtoh(&resid)?, s.clone_dtoh(&xh)?);
        s.synchronize()?;
        Ok(out)
    }

    /// See [`crate::reference::bias_activation`].
    pub fn bias_activation(&self, acc: &[u16], bias: &[f32]) -> Result<Vec<u16>, GpuError> {
        let s = &self.stream;
        let cols = bias.len();
        let rows = acc.len() / cols.max(1);
        let (a, b) = (s.clone_htod(acc)?, s.clone_htod(bias)?);
        let mut out = s.alloc_zeros::<u16>(rows * cols)?;
        bias_activation(
            &self.fns,
            s,
            rows,
            cols,
            &a.as_view(),
            &b.as_view(),
            &mut out.as_view_mut(),
        )?;
        let out = s.clone_dtoh(&out)?;
        s.synchronize()?;
        Ok(out)
    }

    /// See [`crate::reference::attention`].
    pub fn attention(&self, qkv: &[u16], bias: &[f32], offsets: &[u32], heads: usize) -> Result<Vec<u16>, GpuError> {
        let s = &self.stream;
        let hidden = bias.len() / 3;
        let tokens = qkv.len() / (3 * hidden).max(1);
        let (q, b, o) = (s.clone_htod(qkv)?, s.clone_htod(bias)?, s.clone_htod(offsets)?);
        let mut ctx = s.alloc_zeros::<u16>(tokens * hidden)?;
        attention(
            &self.fns,
            s,
            tokens,
            hidden,
            heads,
            &q.as_view(),
            &b.as_view(),
            &o.as_view(),
            &mut ctx.as_view_mut(),
        )?;
        let out = s.clone_dtoh(&ctx)?;
        s.synchronize()?;
        Ok(out)
    }

    /// See [`crate::reference::pool`].
    pub fn pool(&self, x: &[f32], offsets: &[u32], hidden: usize, cls: bool) -> Result<Vec<f32>, GpuError> {
        let s = &self.stream;
        let seqs = offsets.len().saturating_sub(1);
        let (xd, o) = (s.clone_htod(x)?, s.clone_htod(offsets)?);
        let mut out = s.alloc_zeros::<f32>(seqs * hidden)?;
        pool(
            &self.fns,
            s,
            hidden,
            cls,
            &xd.as_view(),
            &o.as_view(),
            &mut out.as_view_mut(),
        )?;
        let out = s.clone_dtoh(&out)?;
        s.synchronize()?;
        Ok(out)
    }

    /// See [`crate::reference::linear_softmax`].
    pub fn linear_softmax(
        &self,
        x: &[f32],
        hidden: usize,
        normalize: bool,
        w: &[f32],
        bias: &[f32],
    ) -> Result<Vec<f32>, GpuError> {
        let s = &self.stream;
        let rows = x.len() / hidden.max(1);
        let (xd, wd, bd) = (s.clone_htod(x)?, s.clone_htod(w)?, s.clone_htod(bias)?);
        let mut out = s.alloc_zeros::<f32>(rows * bias.len())?;
        linear_softmax(
            &self.fns,
            s,
            rows,
            hidden,
            normalize,
            &xd.as_view(),
            &wd.as_view(),
            &bd.as_view(),
            &mut out.as_view_mut(),
        )?;
        let out = s.clone_dtoh(&out)?;
        s.synchronize()?;
        Ok(out)
    }

    /// `x[rows, k] · w[n, k]ᵀ` through the encoder's cuBLAS path (half in and out).
    pub fn matmul(&self, x: &[u16], w: &[u16], rows: usize, n: usize, k: usize) -> Result<Vec<u16>, GpuError> {
        let (stream, blas) = self.gpu.stream()?;
        let (xd, wd) = (stream.clone_htod(x)?, stream.clone_htod(w)?);
        let mut y = stream.alloc_zeros::<u16>(rows * n)?;
        crate::gpu::matmul(&blas, &stream, self.half, &xd, &wd, &mut y, rows, n, k)?;
        let out = stream.clone_dtoh(&y)?;
        stream.synchronize()?;
        Ok(out)
    }
}
