//! A BERT-family encoder (BERT, XLM-RoBERTa) on candle, written for inference on padded,
//! length-sorted batches. Q, K and V are fused into one matrix at load time so each layer
//! streams its attention weights once.
use super::config::{Activation, EncoderConfig};
use crate::error::LoadError;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::path::Path;

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

struct Linear {
    /// [out, in]
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // x: [N, in] -> [N, out]
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
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

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear, LoadError> {
        Ok(Linear {
            weight: self.get(&format!("{name}.weight"), &[out, inp])?,
            bias: self.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm, LoadError> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[dim])?,
            bias: self.get(&format!("{name}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }
}

impl BertEncoder {
    pub fn load(config: EncoderConfig, weights: &Path, device: &Device) -> Result<Self, LoadError> {
        let bytes = std::fs::read(weights).map_err(|e| LoadError::io(weights, e))?;
        Self::load_bytes(config, weights, &bytes, device)
    }

    /// `weights` names the file in errors; `bytes` are its contents (already checksummed).
    pub fn load_bytes(config: EncoderConfig, weights: &Path, bytes: &[u8], device: &Device) -> Result<Self, LoadError> {
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
        let r = WeightReader {
            path: weights,
            st,
            prefix,
            device,
        };
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
        let emb_norm = r.norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = r.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = r.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = r.linear(&format!("{p}.attention.self.value"), h, h)?;
            // Fold the 1/√d attention scale into the query projection: one pass less per layer.
            let scale = 1.0 / (config.head_dim() as f64).sqrt();
            let qkv = Linear {
                weight: Tensor::cat(&[&(q.weight * scale)?, &k.weight, &v.weight], 0)?,
                bias: Tensor::cat(&[&(q.bias * scale)?, &k.bias, &v.bias], 0)?,
            };
            layers.push(Layer {
                qkv,
                attn_out: r.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: r.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                ffn_in: r.linear(&format!("{p}.intermediate.dense"), ff, h)?,
                ffn_out: r.linear(&format!("{p}.output.dense"), h, ff)?,
                out_norm: r.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        let activation = config
            .activation()
            .ok_or_else(|| LoadError::invalid(weights, "unsupported hidden_act"))?;
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

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Encodes a batch of token-id sequences (any lengths, each ≤ `max_tokens`) and returns
    /// one pooled vector per sequence, `[batch, hidden]`, row order kept.
    pub fn embed(&self, seqs: &[&[u32]], pooling: Pooling) -> candle_core::Result<Vec<Vec<f32>>> {
        let b = seqs.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let h = self.config.hidden_size;
        let nh = self.config.num_attention_heads;
        let hd = self.config.head_dim();
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
        let mut x = self.emb_norm.forward(&x)?; // [B*L, H]

        // Additive attention bias: 0 for real keys, a large negative for padding. Softmax
        // subtracts the row maximum, and every row has at least one real key, so no overflow.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.reshape((b, l, 3, nh, hd))?;
            let q = qkv.narrow(2, 0, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?; // [B,NH,L,HD]
            let k = qkv.narrow(2, 1, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?;
            let v = qkv.narrow(2, 2, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, h))?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_norm.forward(&(attn + &x)?)?;
            let inner = layer.ffn_in.forward(&x)?;
            let inner = match self.activation {
                Activation::GeluErf => super::gelu::gelu_erf(&inner)?,
                Activation::GeluTanh => inner.gelu()?,
                Activation::Relu => inner.relu()?,
            };
            let out = layer.ffn_out.forward(&inner)?;
            x = layer.out_norm.forward(&(out + &x)?)?;
        }
        let x = x.reshape((b, l, h))?;
        let pooled = match pooling {
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?; // [B,L,1]
                let summed = x.broadcast_mul(&m)?.sum(1)?; // [B,H]
                let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?; // [B,1]
                summed.broadcast_div(&counts)?
            }
        };
        pooled.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}
