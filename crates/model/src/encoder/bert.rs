//! A BERT-family encoder (BERT, XLM-RoBERTa) on candle. Inference runs on packed sequences
//! (no padding, see `packed`); fine-tuning on padded batches, the graph candle differentiates.
//! Q, K and V are fused into one matrix at load time so each layer streams its attention
//! weights once.
use super::config::{Activation, EncoderConfig};
use super::int8::Int8Linear;
use super::packed;
use crate::error::LoadError;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::path::Path;

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the real (unpadded) tokens' states: e5, MiniLM.
    Mean,
    /// The first token's state: classic BERT classifiers.
    Cls,
}

/// A dense layer in the arithmetic the bundle asked for.
enum Linear {
    F32 {
        /// [out, in]
        weight: Tensor,
        bias: Tensor,
    },
    Int8(Int8Linear),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // x: [N, in] -> [N, out]
            Linear::F32 { weight, bias } => x.matmul(&weight.t()?)?.broadcast_add(bias),
            Linear::Int8(q) => x.contiguous()?.apply_op1_no_bwd(q),
        }
    }

    /// `x` as `[rows, in]` row-major → `[rows, out]`, for the packed serving forward.
    fn forward_rows(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        match self {
            Linear::F32 { weight, .. } => {
                let x = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), weight.device())?;
                self.forward(&x)?.flatten_all()?.to_vec1()
            }
            Linear::Int8(q) => {
                if x.len() != rows * q.inner() {
                    candle_core::bail!("int8 linear: {} values are not {rows} rows of {}", x.len(), q.inner())
                }
                Ok(q.forward(x, rows))
            }
        }
    }

    fn quantize(&self) -> candle_core::Result<Self> {
        match self {
            Linear::F32 { weight, bias } => {
                let (out, inner) = weight.dims2()?;
                let w = weight.flatten_all()?.to_vec1::<f32>()?;
                let b = bias.to_vec1::<f32>()?;
                Int8Linear::quantize(&w, &b, out, inner)
                    .map(Linear::Int8)
                    .map_err(candle_core::Error::wrap)
            }
            Linear::Int8(_) => candle_core::bail!("already quantized"),
        }
    }
}

impl candle_core::CustomOp1 for Int8Linear {
    fn name(&self) -> &'static str {
        "nudge-int8-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("int8 linear: f32 input only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8 linear: contiguous input only")
        };
        let dims = layout.dims();
        if dims.last() != Some(&self.inner()) {
            candle_core::bail!("int8 linear: input {dims:?}, expected last dimension {}", self.inner())
        }
        let rows = (end - start) / self.inner();
        let y = self.forward(&data[start..end], rows);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.out();
        }
        Ok((candle_core::CpuStorage::F32(y), shape.into()))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// `x ← LayerNorm(x + residual)` on row-major buffers.
    fn add_in_place(&self, x: &mut [f32], residual: &[f32]) -> candle_core::Result<()> {
        let (w, b) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        if x.len() != residual.len() || !x.len().is_multiple_of(w.len().max(1)) {
            candle_core::bail!(
                "layer norm: {} values with a residual of {}, rows of {}",
                x.len(),
                residual.len(),
                w.len()
            )
        }
        packed::add_layer_norm(x, residual, &w, &b, self.eps);
        Ok(())
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: LayerNorm,
}

/// A loaded encoder on one candle device, in the serving layout (fused QKV, scale folded in).
pub struct BertEncoder {
    config: EncoderConfig,
    activation: Activation,
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

/// Where the encoder's weights come from: a safetensors file when serving, variables when
/// fine-tuning (the fused layout is then rebuilt from them each step, so gradients reach them).
pub trait Weights {
    /// The tensor called `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError>;
}

/// Weights by canonical name (no `bert.`-style prefix), as `weight_names` lists them.
pub struct NamedWeights {
    /// Where the weights came from, named in errors.
    pub origin: std::path::PathBuf,
    /// Canonical name → tensor.
    pub tensors: std::collections::HashMap<String, Tensor>,
}

impl Weights for NamedWeights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let err = |reason: String| LoadError::Tensor {
            path: self.origin.clone(),
            tensor: name.to_string(),
            reason,
        };
        let t = self.tensors.get(name).ok_or_else(|| err("missing".into()))?;
        if t.dims() != shape {
            return Err(err(format!("shape {:?}, expected {:?}", t.dims(), shape)));
        }
        Ok(t.clone())
    }
}

/// Every weight tensor a BERT-family encoder with `config` has, by canonical name and shape.
pub fn weight_names(config: &EncoderConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let ff = config.intermediate_size;
    let mut out = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![config.max_position_embeddings, h],
        ),
    ];
    if config.type_vocab_size > 0 {
        out.push((
            "embeddings.token_type_embeddings.weight".into(),
            vec![config.type_vocab_size, h],
        ));
    }
    out.push(("embeddings.LayerNorm.weight".into(), vec![h]));
    out.push(("embeddings.LayerNorm.bias".into(), vec![h]));
    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for (n, o, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", ff, h),
            ("output.dense", h, ff),
        ] {
            out.push((format!("{p}.{n}.weight"), vec![o, inp]));
            out.push((format!("{p}.{n}.bias"), vec![o]));
            if n == "attention.output.dense" || n == "output.dense" {
                let norm = if n == "output.dense" {
                    "output.LayerNorm"
                } else {
                    "attention.output.LayerNorm"
                };
                out.push((format!("{p}.{norm}.weight"), vec![h]));
                out.push((format!("{p}.{norm}.bias"), vec![h]));
            }
        }
    }
    out
}

/// Reads tensors out of one safetensors file, checking name, shape and dtype, and naming the
/// file and tensor in every error.
struct WeightReader<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
    prefix: String,
    device: &'a Device,
}

impl<'a> WeightReader<'a> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let full = format!("{}{}", self.prefix, name);
        let err = |reason: String| LoadError::Tensor {
            path: self.path.to_path_buf(),
            tensor: full.clone(),
            reason,
        };
        let view = self.st.tensor(&full).map_err(|_| err("missing".into()))?;
        if view.shape() != shape {
            return Err(err(format!("shape {:?}, expected {:?}", view.shape(), shape)));
        }
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => return Err(err(format!("dtype {other:?}, expected F32, F16 or BF16"))),
        };
        // A NaN or infinite weight would silently poison every answer; refuse it here.
        let finite = match dtype {
            DType::F32 => view
                .data()
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            DType::F16 => view
                .data()
                .chunks_exact(2)
                .all(|b| half::f16::from_le_bytes([b[0], b[1]]).is_finite()),
            _ => view
                .data()
                .chunks_exact(2)
                .all(|b| half::bf16::from_le_bytes([b[0], b[1]]).is_finite()),
        };
        if !finite {
            return Err(err("contains NaN or infinite values".into()));
        }
        let t = Tensor::from_raw_buffer(view.data(), dtype, shape, self.device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| err(e.to_string()))?;
        Ok(t)
    }
}

impl Weights for WeightReader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        WeightReader::get(self, name, shape)
    }
}

fn linear(r: &dyn Weights, name: &str, out: usize, inp: usize) -> Result<Linear, LoadError> {
    Ok(Linear::F32 {
        weight: r.get(&format!("{name}.weight"), &[out, inp])?,
        bias: r.get(&format!("{name}.bias"), &[out])?,
    })
}

fn norm(r: &dyn Weights, name: &str, dim: usize, eps: f64) -> Result<LayerNorm, LoadError> {
    Ok(LayerNorm {
        weight: r.get(&format!("{name}.weight"), &[dim])?,
        bias: r.get(&format!("{name}.bias"), &[dim])?,
        eps: eps as f32,
    })
}

impl<'a> WeightReader<'a> {
    fn open(weights: &'a Path, bytes: &'a [u8], device: &'a Device) -> Result<Self, LoadError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| LoadError::invalid(weights, format!("not a safetensors file: {e}")))?;
        let prefix = ["", "bert.", "roberta.", "model."]
            .into_iter()
            .find(|p| {
                st.names()
                    .iter()
                    .any(|n| *n == format!("{p}embeddings.word_embeddings.weight"))
            })
            .ok_or_else(|| LoadError::Tensor {
                path: weights.to_path_buf(),
                tensor: "embeddings.word_embeddings.weight".into(),
                reason: "missing (also looked under bert., roberta. and model.)".into(),
            })?
            .to_string();
        Ok(WeightReader {
            path: weights,
            st,
            prefix,
            device,
        })
    }
}

/// Reads every weight of an encoder file by canonical name (checked like `BertEncoder::load`).
pub fn read_weights(
    config: &EncoderConfig,
    weights: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<Vec<(String, Tensor)>, LoadError> {
    let r = WeightReader::open(weights, bytes, device)?;
    weight_names(config)
        .into_iter()
        .map(|(n, shape)| r.get(&n, &shape).map(|t| (n, t)))
        .collect()
}

impl BertEncoder {
    /// Reads a safetensors file and builds the encoder on `device`.
    pub fn load(config: EncoderConfig, weights: &Path, device: &Device) -> Result<Self, LoadError> {
        let bytes = std::fs::read(weights).map_err(|e| LoadError::io(weights, e))?;
        Self::load_bytes(config, weights, &bytes, device)
    }

    /// `weights` names the file in errors; `bytes` are its contents (already checksummed).
    pub fn load_bytes(config: EncoderConfig, weights: &Path, bytes: &[u8], device: &Device) -> Result<Self, LoadError> {
        let r = WeightReader::open(weights, bytes, device)?;
        Self::from_weights(config, &r, weights, device)
    }

    /// Builds the serving layout (fused QKV, scale folded in) from `r`. With variables as the
    /// source the fusing is part of the graph, so gradients flow back to the per-matrix weights.
    pub fn from_weights(
        config: EncoderConfig,
        r: &dyn Weights,
        origin: &Path,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let h = config.hidden_size;
        let ff = config.intermediate_size;
        let eps = config.layer_norm_eps;
        let word = r.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = r.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = if config.type_vocab_size > 0 {
            Some(r.get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?)
        } else {
            None
        };
        let emb_norm = norm(r, "embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let get = |n: &str| -> Result<(Tensor, Tensor), LoadError> {
                let w = r.get(&format!("{p}.attention.self.{n}.weight"), &[h, h])?;
                Ok((w, r.get(&format!("{p}.attention.self.{n}.bias"), &[h])?))
            };
            let ((qw, qb), (kw, kb), (vw, vb)) = (get("query")?, get("key")?, get("value")?);
            // Fold the 1/√d attention scale into the query projection: one pass less per layer.
            let scale = 1.0 / (config.head_dim() as f64).sqrt();
            let qkv = Linear::F32 {
                weight: Tensor::cat(&[&(qw * scale)?, &kw, &vw], 0)?,
                bias: Tensor::cat(&[&(qb * scale)?, &kb, &vb], 0)?,
            };
            layers.push(Layer {
                qkv,
                attn_out: linear(r, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(r, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                ffn_in: linear(r, &format!("{p}.intermediate.dense"), ff, h)?,
                ffn_out: linear(r, &format!("{p}.output.dense"), h, ff)?,
                out_norm: norm(r, &format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        let activation = config
            .activation()
            .ok_or_else(|| LoadError::invalid(origin, "unsupported hidden_act"))?;
        Ok(Self {
            config,
            activation,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            device: device.clone(),
        })
    }

    /// The same encoder with every dense layer quantized to int8 (inference only: the integer
    /// layers have no backward pass). Embeddings, layer norms and attention stay f32.
    pub fn quantized(mut self) -> candle_core::Result<Self> {
        for l in &mut self.layers {
            l.qkv = l.qkv.quantize()?;
            l.attn_out = l.attn_out.quantize()?;
            l.ffn_in = l.ffn_in.quantize()?;
            l.ffn_out = l.ffn_out.quantize()?;
        }
        Ok(self)
    }

    /// The weights in the GPU encoder's layout (f32; the GPU rounds them to its half type):
    /// fused QKV with the scale folded in, as here, and token type 0 folded into the
    /// position table. Fails for an int8 encoder: the GPU starts from the f32 weights.
    #[cfg(feature = "cuda")]
    pub fn gpu_weights(
        &self,
        pooling: Pooling,
    ) -> candle_core::Result<(nudge_kernels::EncoderShape, nudge_kernels::EncoderWeights)> {
        use nudge_kernels as k;
        let vec = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let dense = |l: &Linear| -> candle_core::Result<k::Dense> {
            match l {
                Linear::F32 { weight, bias } => Ok(k::Dense {
                    weight: vec(weight)?,
                    bias: vec(bias)?,
                }),
                Linear::Int8(_) => candle_core::bail!("the GPU encoder is built from f32 weights, not int8"),
            }
        };
        let norm = |n: &LayerNorm| -> candle_core::Result<k::Norm> {
            Ok(k::Norm {
                weight: vec(&n.weight)?,
                bias: vec(&n.bias)?,
            })
        };
        let position = match &self.token_type {
            Some(tt) => self.position.broadcast_add(&tt.get(0)?)?,
            None => self.position.clone(),
        };
        let c = &self.config;
        let shape = k::EncoderShape {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            position_offset: c.position_offset(),
            eps: c.layer_norm_eps as f32,
            activation: match self.activation {
                Activation::GeluErf => k::Activation::GeluErf,
                Activation::GeluTanh => k::Activation::GeluTanh,
                Activation::Relu => k::Activation::Relu,
            },
            pool: match pooling {
                Pooling::Mean => k::Pool::Mean,
                Pooling::Cls => k::Pool::Cls,
            },
        };
        let weights = k::EncoderWeights {
            word: vec(&self.word)?,
            position: vec(&position)?,
            emb_norm: norm(&self.emb_norm)?,
            layers: self
                .layers
                .iter()
                .map(|l| -> candle_core::Result<k::LayerWeights> {
                    Ok(k::LayerWeights {
                        qkv: dense(&l.qkv)?,
                        attn_out: dense(&l.attn_out)?,
                        attn_norm: norm(&l.attn_norm)?,
                        ffn_in: dense(&l.ffn_in)?,
                        ffn_out: dense(&l.ffn_out)?,
                        out_norm: norm(&l.out_norm)?,
                    })
                })
                .collect::<candle_core::Result<_>>()?,
        };
        Ok((shape, weights))
    }

    /// The `config.json` it was built from.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Width of the pooled vectors.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Encodes a batch of token-id sequences (any lengths, each ≤ `max_tokens`) and returns
    /// one pooled vector per sequence, `[batch, hidden]`, row order kept. Inference only: the
    /// sequences are packed end to end with no padding (see `packed`), so the cost follows
    /// the real tokens, whatever the mix of lengths.
    pub fn embed(&self, seqs: &[&[u32]], pooling: Pooling) -> candle_core::Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        if seqs.iter().any(|s| s.is_empty()) {
            candle_core::bail!("an empty token sequence (the tokenizer adds at least the special tokens)");
        }
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0);
        for s in seqs {
            offsets.push(offsets[offsets.len() - 1] + s.len());
        }
        let tokens = offsets[seqs.len()];
        let (heads, head_dim) = (self.config.num_attention_heads, self.config.head_dim());
        let mut x = self.packed_embeddings(seqs)?.flatten_all()?.to_vec1::<f32>()?;
        for layer in &self.layers {
            let ctx = packed::attention(&layer.qkv.forward_rows(&x, tokens)?, &offsets, heads, head_dim);
            let mut a = layer.attn_out.forward_rows(&ctx, tokens)?;
            layer.attn_norm.add_in_place(&mut a, &x)?;
            x = a;
            let mut inner = layer.ffn_in.forward_rows(&x, tokens)?;
            match self.activation {
                Activation::GeluErf => packed::map_in_place(&mut inner, super::gelu::gelu),
                Activation::GeluTanh => packed::map_in_place(&mut inner, super::gelu::gelu_tanh),
                Activation::Relu => packed::map_in_place(&mut inner, |v| v.max(0.0)),
            }
            let mut out = layer.ffn_out.forward_rows(&inner, tokens)?;
            layer.out_norm.add_in_place(&mut out, &x)?;
            x = out;
        }
        let h = self.config.hidden_size;
        Ok(offsets
            .windows(2)
            .map(|w| match pooling {
                Pooling::Cls => x[w[0] * h..(w[0] + 1) * h].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; h];
                    for row in x[w[0] * h..w[1] * h].chunks_exact(h) {
                        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    let n = (w[1] - w[0]) as f32;
                    sum.iter_mut().for_each(|s| *s /= n);
                    sum
                }
            })
            .collect())
    }

    /// `[tokens, hidden]` states after the embedding layer for sequences laid end to end.
    fn packed_embeddings(&self, seqs: &[&[u32]]) -> candle_core::Result<Tensor> {
        let offset = self.config.position_offset();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let pos: Vec<u32> = seqs
            .iter()
            .flat_map(|s| (0..s.len()).map(|i| (offset + i) as u32))
            .collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let pos = Tensor::from_vec(pos, n, &self.device)?;
        let mut x = self.word.embedding(&ids)?.add(&self.position.embedding(&pos)?)?;
        if let Some(tt) = &self.token_type {
            x = x.broadcast_add(&tt.get(0)?)?;
        }
        self.emb_norm.forward(&x)
    }

    /// The rest of a layer once attention has produced `ctx` (`[N, H]`, as is `x`): output
    /// projection, residual and norm, then the feed-forward block with its residual and norm.
    fn feed_forward(&self, layer: &Layer, ctx: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let attn = layer.attn_out.forward(ctx)?;
        let x = layer.attn_norm.forward(&(attn + x)?)?;
        let inner = layer.ffn_in.forward(&x)?;
        let inner = match self.activation {
            Activation::GeluErf => super::gelu::gelu_erf(&inner)?,
            Activation::GeluTanh => inner.gelu()?,
            Activation::Relu => inner.relu()?,
        };
        let out = layer.ffn_out.forward(&inner)?;
        layer.out_norm.forward(&(out + &x)?)
    }

    /// The pooled vectors as a `[batch, hidden]` tensor, from a padded batch: the graph
    /// fine-tuning differentiates (and the reference the packed `embed` is checked against).
    pub fn forward(&self, seqs: &[&[u32]], pooling: Pooling) -> candle_core::Result<Tensor> {
        let (x, mask) = self.embeddings(seqs)?;
        let x = self.layers(x, &mask, 0..self.layers.len())?;
        Self::pool(&x, &mask, pooling)
    }

    /// Transformer layers (fine-tuning unfreezes the top ones).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token states after the embedding layer, `[B, L, H]` padded to the longest sequence, and
    /// the `[B, L]` mask (1 for real tokens).
    pub fn embeddings(&self, seqs: &[&[u32]]) -> candle_core::Result<(Tensor, Tensor)> {
        let b = seqs.len();
        if b == 0 {
            candle_core::bail!("empty batch");
        }
        let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let h = self.config.hidden_size;
        let offset = self.config.position_offset();
        let pad = self.config.pad_token_id as u32;

        let mut ids = Vec::with_capacity(b * l);
        let mut pos = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        for s in seqs {
            for i in 0..l {
                let real = i < s.len();
                ids.push(if real { s[i] } else { pad });
                pos.push((offset + i.min(s.len().saturating_sub(1))) as u32);
                mask.push(if real { 1f32 } else { 0f32 });
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, b * l, dev)?;
        let pos = Tensor::from_vec(pos, b * l, dev)?;
        let mask = Tensor::from_vec(mask, (b, l), dev)?;

        let mut x = self.word.embedding(&ids)?.add(&self.position.embedding(&pos)?)?;
        if let Some(tt) = &self.token_type {
            x = x.broadcast_add(&tt.get(0)?)?;
        }
        Ok((self.emb_norm.forward(&x)?.reshape((b, l, h))?, mask))
    }

    /// Runs the transformer layers in `range` over `[B, L, H]` states. Padded positions are
    /// masked as keys, so the real tokens' states never depend on them.
    pub fn layers(&self, x: Tensor, mask: &Tensor, range: std::ops::Range<usize>) -> candle_core::Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let nh = self.config.num_attention_heads;
        let hd = self.config.head_dim();
        let mut x = x.reshape((b * l, h))?;
        // Additive attention bias: 0 for real keys, a large negative for padding. Softmax
        // subtracts the row maximum, and every row has at least one real key, so no overflow.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        for layer in &self.layers[range] {
            let qkv = layer.qkv.forward(&x)?.reshape((b, l, 3, nh, hd))?;
            let q = qkv.narrow(2, 0, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?; // [B,NH,L,HD]
            let k = qkv.narrow(2, 1, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?;
            let v = qkv.narrow(2, 2, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = super::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, h))?;
            x = self.feed_forward(layer, &ctx, &x)?;
        }
        x.reshape((b, l, h))
    }

    /// `[B, L, H]` token states → `[B, H]` sentence vectors.
    pub fn pool(x: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
        let pooled = match pooling {
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?; // [B,L,1]
                let summed = x.broadcast_mul(&m)?.sum(1)?; // [B,H]
                let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?; // [B,1]
                summed.broadcast_div(&counts)?
            }
        };
        pooled.to_dtype(DType::F32)
    }
}
