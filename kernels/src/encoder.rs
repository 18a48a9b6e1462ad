//! A BERT-family encoder on one GPU: packed variable-length batches, dense layers through
//! cuBLAS in f16/bf16 with f32 accumulation, everything between them in our kernels.
//!
//! Why it is shaped this way:
//! - **Packed, not padded.** Sequences are laid end to end and attention reads each one's
//!   rows through `offsets`, so a batch of one long and many short texts costs its real
//!   tokens. Batches are sized by tokens, and the matrix products see `tokens × hidden`.
//! - **f32 residual stream, half product inputs.** Each LayerNorm writes both; twelve layers
//!   of half rounding do not accumulate in the residual, and the products still run on
//!   tensor cores.
//! - **Fusions where they remove a pass over memory**: QKV bias inside attention, bias +
//!   residual + LayerNorm in one kernel, bias + GELU in one kernel, embedding gather + sum +
//!   LayerNorm in one kernel.
//! - **Lanes.** Each lane is a stream with its own cuBLAS handle, pinned host buffers and
//!   activations. Two callers at once run on two lanes, so one batch's copies and host work
//!   overlap the other's kernels; the weights are shared and read-only.
#![allow(unsafe_code)] // uninitialised device and pinned allocations; each says why it is sound.

use crate::error::GpuError;
use crate::gpu::{matmul, Gpu, Half};
use crate::ops::{self, Functions, Tables};
use crate::source::Variant;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use std::sync::{Arc, Mutex, TryLockError};

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf (BERT, e5, MiniLM).
    GeluErf,
    /// GELU, tanh approximation.
    GeluTanh,
    /// max(0, x).
    Relu,
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Mean of the sequence's token states.
    Mean,
    /// The first token's state.
    Cls,
}

/// The shape of a BERT-family encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderShape {
    /// Width of token states.
    pub hidden: usize,
    /// Attention heads (`hidden / heads` must be 32 or 64).
    pub heads: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Rows of the word-embedding table.
    pub vocab: usize,
    /// Rows of the position table.
    pub max_positions: usize,
    /// First position id (2 for XLM-R, 0 for BERT).
    pub position_offset: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Pooling.
    pub pool: Pool,
}

impl EncoderShape {
    fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Longest sequence the position table allows.
    pub fn max_tokens(&self) -> usize {
        self.max_positions.saturating_sub(self.position_offset)
    }

    /// Multiply-adds ×2 per token for `len`-token sequences: the dense layers plus attention.
    pub fn flops_per_token(&self, len: usize) -> f64 {
        let (h, f) = (self.hidden as f64, self.intermediate as f64);
        let dense = 2.0 * (4.0 * h * h + 2.0 * h * f);
        let attention = 4.0 * len as f64 * h;
        self.layers as f64 * (dense + attention)
    }
}

/// A dense layer, row-major `[out, in]` weight and `[out]` bias.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// LayerNorm scale and shift.
#[derive(Debug, Clone)]
pub struct Norm {
    /// γ.
    pub weight: Vec<f32>,
    /// β.
    pub bias: Vec<f32>,
}

/// One transformer layer in the serving layout.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Q, K and V stacked, `[3·hidden, hidden]`, the 1/√d attention scale folded into Q.
    pub qkv: Dense,
    /// Attention output projection.
    pub attn_out: Dense,
    /// Norm after attention.
    pub attn_norm: Norm,
    /// Feed-forward in.
    pub ffn_in: Dense,
    /// Feed-forward out.
    pub ffn_out: Dense,
    /// Norm after the feed-forward block.
    pub out_norm: Norm,
}

/// All weights of an encoder, f32, in the serving layout.
#[derive(Debug, Clone)]
pub struct EncoderWeights {
    /// `[vocab, hidden]`.
    pub word: Vec<f32>,
    /// `[max_positions, hidden]`, token type 0's row already added.
    pub position: Vec<f32>,
    /// Norm after the embeddings.
    pub emb_norm: Norm,
    /// The layers, bottom first.
    pub layers: Vec<LayerWeights>,
}

/// A linear classification head: `softmax(W·x + b)`, on the (optionally normalised) pooled
/// vector.
#[derive(Debug, Clone)]
pub struct HeadWeights {
    /// Row-major `[labels, hidden]`.
    pub weight: Vec<f32>,
    /// `[labels]`.
    pub bias: Vec<f32>,
}

/// What one pass returns: pooled vectors (not normalised) and each head's probabilities.
#[derive(Debug, Clone, Default)]
pub struct EncoderOutput {
    /// `[batch][hidden]`.
    pub pooled: Vec<Vec<f32>>,
    /// `[head][batch][labels]`.
    pub heads: Vec<Vec<Vec<f32>>>,
}

struct DenseGpu {
    weight: CudaSlice<u16>,
    bias: CudaSlice<f32>,
}

struct NormGpu {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

struct LayerGpu {
    qkv: DenseGpu,
    attn_out: DenseGpu,
    attn_norm: NormGpu,
    ffn_in: DenseGpu,
    ffn_out: DenseGpu,
    out_norm: NormGpu,
}

struct HeadGpu {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    labels: usize,
}

/// A stream and everything one pass writes.
struct Lane {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    tokens: usize,
    seqs: usize,
    meta: CudaSlice<u32>,
    resid: CudaSlice<f32>,
    xh: CudaSlice<u16>,
    acc: CudaSlice<u16>,
    inner: CudaSlice<u16>,
    ctx: CudaSlice<u16>,
    pooled: CudaSlice<f32>,
    probs: Vec<CudaSlice<f32>>,
    host_meta: PinnedHostSlice<u32>,
    host_out: PinnedHostSlice<f32>,
}

/// Events recorded between launches when timing stages (`stage_times`), else `None`.
type Marks = Option<Vec<(&'static str, CudaEvent)>>;

fn mark(stream: &Arc<CudaStream>, marks: &mut Marks, stage: &'static str) -> Result<(), GpuError> {
    if let Some(m) = marks {
        m.push((
            stage,
            stream.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?,
        ));
    }
    Ok(())
}

/// Lanes per encoder: two let one batch's copies overlap another's kernels.
const LANES: usize = 2;

/// The encoder on one GPU.
pub struct GpuEncoder {
    gpu: Arc<Gpu>,
    shape: EncoderShape,
    half: Half,
    word: CudaSlice<f32>,
    position: CudaSlice<f32>,
    emb_norm: NormGpu,
    layers: Vec<LayerGpu>,
    heads: Vec<HeadGpu>,
    normalize: bool,
    functions: Functions,
    lanes: Vec<Mutex<Option<Lane>>>,
}

fn check_len(what: &str, v: &[f32], want: usize) -> Result<(), GpuError> {
    if v.len() != want {
        return Err(GpuError::invalid(format!(
            "{what}: {} values, expected {want}",
            v.len()
        )));
    }
    Ok(())
}

impl GpuEncoder {
    /// Validates and uploads the weights, compiles the kernels for this device and model, and
    /// attaches `heads` (run on the pooled vectors, L2-normalised first when `normalize`).
    pub fn new(
        gpu: Arc<Gpu>,
        shape: EncoderShape,
        weights: &EncoderWeights,
        half: Half,
        heads: &[HeadWeights],
        normalize: bool,
    ) -> Result<Self, GpuError> {
        let (h, f) = (shape.hidden, shape.intermediate);
        let head_dim = shape.head_dim();
        if shape.heads == 0 || h % shape.heads != 0 || !(head_dim == 32 || head_dim == 64) {
            return Err(GpuError::invalid(format!(
                "hidden {h} over {} heads: the GPU attention kernel takes heads of 32 or 64",
                shape.heads
            )));
        }
        if f % 4 != 0 || shape.max_tokens() == 0 || shape.vocab == 0 {
            return Err(GpuError::invalid(
                "intermediate size must be a multiple of 4, vocab and positions non-empty",
            ));
        }
        if weights.layers.len() != shape.layers {
            return Err(GpuError::invalid(format!(
                "{} layers of weights for a {}-layer shape",
                weights.layers.len(),
                shape.layers
            )));
        }
        check_len("word embeddings", &weights.word, shape.vocab * h)?;
        check_len("position embeddings", &weights.position, shape.max_positions * h)?;
        let norm = |what: &str, n: &Norm| -> Result<NormGpu, GpuError> {
            check_len(what, &n.weight, h)?;
            check_len(what, &n.bias, h)?;
            Ok(NormGpu {
                weight: gpu.upload(&n.weight)?,
                bias: gpu.upload(&n.bias)?,
            })
        };
        let dense = |what: &str, d: &Dense, out: usize, inp: usize| -> Result<DenseGpu, GpuError> {
            check_len(what, &d.weight, out * inp)?;
            check_len(what, &d.bias, out)?;
            let w: Vec<u16> = d.weight.iter().map(|&v| half.encode(v)).collect();
            Ok(DenseGpu {
                weight: gpu.upload(&w)?,
                bias: gpu.upload(&d.bias)?,
            })
        };
        let mut layers = Vec::with_capacity(shape.layers);
        for (i, l) in weights.layers.iter().enumerate() {
            layers.push(LayerGpu {
                qkv: dense(&format!("layer {i} qkv"), &l.qkv, 3 * h, h)?,
                attn_out: dense(&format!("layer {i} attention output"), &l.attn_out, h, h)?,
                attn_norm: norm(&format!("layer {i} attention norm"), &l.attn_norm)?,
                ffn_in: dense(&format!("layer {i} feed-forward in"), &l.ffn_in, f, h)?,
                ffn_out: dense(&format!("layer {i} feed-forward out"), &l.ffn_out, h, f)?,
                out_norm: norm(&format!("layer {i} output norm"), &l.out_norm)?,
            });
        }
        let variant = Variant {
            arch: gpu.arch(),
            half,
            head_dim,
            hidden: h,
            activation: match shape.activation {
                Activation::GeluErf => 0,
                Activation::GeluTanh => 1,
                Activation::Relu => 2,
            },
        };
        let functions = Functions::load(&gpu, variant)?;
        let mut encoder = Self {
            word: gpu.upload(&weights.word)?,
            position: gpu.upload(&weights.position)?,
            emb_norm: norm("embedding norm", &weights.emb_norm)?,
            layers,
            heads: Vec::new(),
            normalize,
            functions,
            lanes: (0..LANES).map(|_| Mutex::new(None)).collect(),
            gpu,
            shape,
            half,
        };
        encoder.set_heads(heads, normalize)?;
        Ok(encoder)
    }

    /// Replaces the attached heads (the pooled vector is L2-normalised before them when
    /// `normalize`). Lanes are rebuilt on their next pass, sized for the new heads.
    pub fn set_heads(&mut self, heads: &[HeadWeights], normalize: bool) -> Result<(), GpuError> {
        let h = self.shape.hidden;
        let mut gpu_heads = Vec::with_capacity(heads.len());
        for (i, hd) in heads.iter().enumerate() {
            let labels = hd.bias.len();
            if labels == 0 {
                return Err(GpuError::invalid(format!("head {i} has no labels")));
            }
            check_len(&format!("head {i}"), &hd.weight, labels * h)?;
            gpu_heads.push(HeadGpu {
                weight: self.gpu.upload(&hd.weight)?,
                bias: self.gpu.upload(&hd.bias)?,
                labels,
            });
        }
        self.heads = gpu_heads;
        self.normalize = normalize;
        for lane in &mut self.lanes {
            *lane
                .get_mut()
                .map_err(|_| GpuError::invalid("a GPU lane was poisoned by a panic"))? = None;
        }
        Ok(())
    }

    /// Passes that can run at once, each on its own stream.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The model's shape.
    pub fn shape(&self) -> &EncoderShape {
        &self.shape
    }

    /// The half type of the products.
    pub fn half(&self) -> Half {
        self.half
    }

    /// One pass over `seqs` (token ids, any lengths up to the position table, in any order):
    /// pooled vectors and every attached head's probabilities, in input order.
    pub fn run(&self, seqs: &[&[u32]]) -> Result<EncoderOutput, GpuError> {
        if seqs.is_empty() {
            return Ok(EncoderOutput {
                pooled: Vec::new(),
                heads: vec![Vec::new(); self.heads.len()],
            });
        }
        let max = self.shape.max_tokens();
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() || s.len() > max {
                return Err(GpuError::invalid(format!(
                    "sequence {i} has {} tokens; 1 to {max} are allowed",
                    s.len()
                )));
            }
            if let Some(id) = s.iter().find(|&&id| id as usize >= self.shape.vocab) {
                return Err(GpuError::invalid(format!(
                    "sequence {i}: token id {id} is outside the vocabulary of {}",
                    self.shape.vocab
                )));
            }
        }
        // Take a free lane if there is one, else wait for the first.
        let mut guard = None;
        for lane in &self.lanes {
            match lane.try_lock() {
                Ok(g) => {
                    guard = Some(g);
                    break;
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Poisoned(_)) => return Err(GpuError::invalid("a GPU lane was poisoned by a panic")),
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.lanes[0]
                .lock()
                .map_err(|_| GpuError::invalid("a GPU lane was poisoned by a panic"))?,
        };
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        self.gpu.context().bind_to_thread()?;
        let lane = self.lane(&mut guard, tokens, seqs.len())?;
        let out = self.pass(lane, seqs, tokens, &mut None);
        if out.is_err() {
            // A failed pass may leave the stream in an error state: build the lane afresh.
            *guard = None;
        }
        out
    }

    /// Where a pass over `seqs` spends its GPU time: microseconds per stage (all layers
    /// together), the mean of `reps` passes, from events recorded between the launches. For
    /// the benchmark: events per launch cost a little, so `run` records none.
    pub fn stage_times(&self, seqs: &[&[u32]], reps: usize) -> Result<Vec<(&'static str, f64)>, GpuError> {
        let mut guard = self.lanes[0]
            .lock()
            .map_err(|_| GpuError::invalid("a GPU lane was poisoned by a panic"))?;
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        self.gpu.context().bind_to_thread()?;
        let lane = self.lane(&mut guard, tokens, seqs.len())?;
        let mut totals: Vec<(&'static str, f64)> = Vec::new();
        for _ in 0..reps.max(1) {
            let mut marks = Some(Vec::new());
            self.pass(lane, seqs, tokens, &mut marks)?;
            let marks = marks.unwrap_or_default();
            for pair in marks.windows(2) {
                let us = f64::from(pair[0].1.elapsed_ms(&pair[1].1)?) * 1e3 / reps.max(1) as f64;
                match totals.iter_mut().find(|(n, _)| *n == pair[1].0) {
                    Some(t) => t.1 += us,
                    None => totals.push((pair[1].0, us)),
                }
            }
        }
        Ok(totals)
    }

    /// The lane in `slot`, (re)allocated to hold `tokens` tokens in `seqs` sequences.
    fn lane<'a>(&self, slot: &'a mut Option<Lane>, tokens: usize, seqs: usize) -> Result<&'a mut Lane, GpuError> {
        let fits = slot.as_ref().is_some_and(|l| l.tokens >= tokens && l.seqs >= seqs);
        if !fits {
            let old = slot.as_ref().map_or((0, 0), |l| (l.tokens, l.seqs));
            let (stream, blas) = match slot.take() {
                Some(l) => (l.stream, l.blas),
                None => self.gpu.stream()?,
            };
            let t = tokens.max(old.0).next_power_of_two().max(256);
            let b = seqs.max(old.1).next_power_of_two().max(32);
            let (h, f) = (self.shape.hidden, self.shape.intermediate);
            let ctx = self.gpu.context();
            let labels: usize = self.heads.iter().map(|hd| hd.labels).sum();
            // SAFETY: every buffer is written before it is read in `pass` (alloc leaves it
            // unset); the pinned buffers are written on the host before each copy.
            let lane = unsafe {
                Lane {
                    meta: stream.alloc::<u32>(2 * t + b + 1)?,
                    resid: stream.alloc::<f32>(t * h)?,
                    xh: stream.alloc::<u16>(t * h)?,
                    acc: stream.alloc::<u16>(t * (3 * h).max(f))?,
                    inner: stream.alloc::<u16>(t * f)?,
                    ctx: stream.alloc::<u16>(t * h)?,
                    pooled: stream.alloc::<f32>(b * h)?,
                    probs: self
                        .heads
                        .iter()
                        .map(|hd| stream.alloc::<f32>(b * hd.labels))
                        .collect::<Result<_, _>>()?,
                    host_meta: ctx.alloc_pinned_with_flags::<u32>(2 * t + b + 1, 0)?,
                    host_out: ctx.alloc_pinned_with_flags::<f32>(b * (h + labels), 0)?,
                    tokens: t,
                    seqs: b,
                    stream,
                    blas,
                }
            };
            *slot = Some(lane);
        }
        slot.as_mut().ok_or_else(|| GpuError::invalid("GPU lane missing"))
    }

    /// `resid ← LayerNorm(acc + bias + resid)` after a projection, and its half copy.
    #[allow(clippy::too_many_arguments)]
    fn residual_norm(
        &self,
        stream: &Arc<CudaStream>,
        tokens: usize,
        acc: &CudaSlice<u16>,
        bias: &CudaSlice<f32>,
        norm: &NormGpu,
        resid: &mut CudaSlice<f32>,
        xh: &mut CudaSlice<u16>,
    ) -> Result<(), GpuError> {
        ops::bias_residual_layer_norm(
            &self.functions,
            stream,
            tokens,
            self.shape.hidden,
            self.shape.eps,
            &acc.as_view(),
            &bias.as_view(),
            &norm.weight.as_view(),
            &norm.bias.as_view(),
            &mut resid.as_view_mut(),
            &mut xh.as_view_mut(),
        )
    }

    fn pass(
        &self,
        lane: &mut Lane,
        seqs: &[&[u32]],
        tokens: usize,
        marks: &mut Marks,
    ) -> Result<EncoderOutput, GpuError> {
        let s = &self.shape;
        let (h, f, b) = (s.hidden, s.intermediate, seqs.len());
        let stream = lane.stream.clone();
        mark(&stream, marks, "start")?;

        // Token ids, positions and sequence offsets in one pinned buffer, one copy.
        let n_meta = 2 * tokens + b + 1;
        {
            let host = lane.host_meta.as_mut_slice()?;
            let (ids, rest) = host.split_at_mut(tokens);
            let (pos, offs) = rest.split_at_mut(tokens);
            let mut t = 0;
            offs[0] = 0;
            for (i, sq) in seqs.iter().enumerate() {
                for (j, &id) in sq.iter().enumerate() {
                    ids[t] = id;
                    pos[t] = (s.position_offset + j) as u32;
                    t += 1;
                }
                offs[i + 1] = t as u32;
            }
            stream.memcpy_htod(&host[..n_meta], &mut lane.meta.slice_mut(..n_meta))?;
        }
        mark(&stream, marks, "copy in")?;
        let ids = lane.meta.slice(..tokens);
        let pos = lane.meta.slice(tokens..2 * tokens);
        let offsets = lane.meta.slice(2 * tokens..n_meta);
        let fns = &self.functions;
        let tables = Tables {
            hidden: h,
            vocab: s.vocab,
            max_positions: s.max_positions,
            eps: s.eps,
        };
        ops::embed_layer_norm(
            fns,
            &stream,
            tables,
            &ids,
            &pos,
            &self.word.as_view(),
            &self.position.as_view(),
            &self.emb_norm.weight.as_view(),
            &self.emb_norm.bias.as_view(),
            &mut lane.resid.as_view_mut(),
            &mut lane.xh.as_view_mut(),
        )?;
        mark(&stream, marks, "embedding + LayerNorm")?;
        let half = self.half;
        for layer in &self.layers {
            matmul(
                &lane.blas,
                &stream,
                half,
                &lane.xh,
                &layer.qkv.weight,
                &mut lane.acc,
                tokens,
                3 * h,
                h,
            )?;
            mark(&stream, marks, "QKV product")?;
            ops::attention(
                fns,
                &stream,
                tokens,
                h,
                s.heads,
                &lane.acc.as_view(),
                &layer.qkv.bias.as_view(),
                &offsets,
                &mut lane.ctx.as_view_mut(),
            )?;
            mark(&stream, marks, "attention")?;
            matmul(
                &lane.blas,
                &stream,
                half,
                &lane.ctx,
                &layer.attn_out.weight,
                &mut lane.acc,
                tokens,
                h,
                h,
            )?;
            mark(&stream, marks, "attention-out product")?;
            self.residual_norm(
                &stream,
                tokens,
                &lane.acc,
                &layer.attn_out.bias,
                &layer.attn_norm,
                &mut lane.resid,
                &mut lane.xh,
            )?;
            mark(&stream, marks, "bias + residual + LayerNorm")?;
            matmul(
                &lane.blas,
                &stream,
                half,
                &lane.xh,
                &layer.ffn_in.weight,
                &mut lane.acc,
                tokens,
                f,
                h,
            )?;
            mark(&stream, marks, "FFN-in product")?;
            ops::bias_activation(
                fns,
                &stream,
                tokens,
                f,
                &lane.acc.as_view(),
                &layer.ffn_in.bias.as_view(),
                &mut lane.inner.as_view_mut(),
            )?;
            mark(&stream, marks, "bias + GELU")?;
            matmul(
                &lane.blas,
                &stream,
                half,
                &lane.inner,
                &layer.ffn_out.weight,
                &mut lane.acc,
                tokens,
                h,
                f,
            )?;
            mark(&stream, marks, "FFN-out product")?;
            self.residual_norm(
                &stream,
                tokens,
                &lane.acc,
                &layer.ffn_out.bias,
                &layer.out_norm,
                &mut lane.resid,
                &mut lane.xh,
            )?;
            mark(&stream, marks, "bias + residual + LayerNorm")?;
        }
        ops::pool(
            fns,
            &stream,
            h,
            s.pool == Pool::Cls,
            &lane.resid.as_view(),
            &offsets,
            &mut lane.pooled.as_view_mut(),
        )?;
        mark(&stream, marks, "pooling")?;
        for (head, probs) in self.heads.iter().zip(lane.probs.iter_mut()) {
            ops::linear_softmax(
                fns,
                &stream,
                b,
                h,
                self.normalize,
                &lane.pooled.as_view(),
                &head.weight.as_view(),
                &head.bias.as_view(),
                &mut probs.as_view_mut(),
            )?;
        }
        mark(&stream, marks, "heads")?;
        // Pooled vectors and probabilities back in one pinned buffer, then one wait.
        let host = lane.host_out.as_mut_slice()?;
        let (pooled_host, mut rest) = host.split_at_mut(b * h);
        stream.memcpy_dtoh(&lane.pooled.slice(..b * h), pooled_host)?;
        let mut spans = Vec::with_capacity(self.heads.len());
        for (head, probs) in self.heads.iter().zip(&lane.probs) {
            let n = b * head.labels;
            let (dst, tail) = rest.split_at_mut(n);
            stream.memcpy_dtoh(&probs.slice(..n), dst)?;
            spans.push(head.labels);
            rest = tail;
        }
        mark(&stream, marks, "copy out")?;
        stream.synchronize()?;
        let host = lane.host_out.as_slice()?;
        let pooled = host[..b * h].chunks_exact(h).map(<[f32]>::to_vec).collect();
        let mut at = b * h;
        let heads = spans
            .into_iter()
            .map(|labels| {
                let rows = host[at..at + b * labels]
                    .chunks_exact(labels)
                    .map(<[f32]>::to_vec)
                    .collect();
                at += b * labels;
                rows
            })
            .collect();
        Ok(EncoderOutput { pooled, heads })
    }
}
