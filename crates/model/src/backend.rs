//! The seam between "which texts, padded how" and "which hardware runs the encoder".
//!
//! The batcher, the services and training's frozen-encoder pass only ever see a [`Backend`]:
//! token-id sequences in, one pooled sentence vector per sequence out, row order kept. Where
//! the numbers are computed (candle on the CPU today; our CUDA kernels behind the `cuda`
//! feature later) is chosen once, by [`BackendKind`], when a model is loaded. Everything
//! around a backend (tokenizing, batching, heads, the intent verdict) stays the same.
use crate::bundle::Precision;
use crate::encoder::{BertEncoder, EncoderConfig, Pooling};
use crate::error::{BackendError, LoadError};
use std::path::Path;

/// An encoder that turns a batch of token sequences into pooled vectors.
pub trait Backend: Send + Sync {
    /// Short name for logs and `ListModels` (e.g. `cpu-int8`): hardware and arithmetic.
    fn name(&self) -> &'static str;

    /// Length of each pooled vector.
    fn hidden_size(&self) -> usize;

    /// One pooled (not yet normalised) vector per sequence, in input order. Sequences come
    /// unpadded, in any mix of lengths; the CPU backend packs them end to end.
    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError>;
}

/// Where an encoder runs. Chosen in the server's configuration (`device = "cpu"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// candle on the CPU, with our fused QKV layout and parallel softmax / LayerNorm / GELU.
    #[default]
    Cpu,
}

impl BackendKind {
    /// Builds the encoder from `config` and the safetensors bytes of its weights (`weights`
    /// names the file in errors; the bytes have been checksummed by the caller where needed).
    pub fn load(
        self,
        config: EncoderConfig,
        pooling: Pooling,
        precision: Precision,
        weights: &Path,
        bytes: &[u8],
    ) -> Result<Box<dyn Backend>, LoadError> {
        match self {
            BackendKind::Cpu => Ok(Box::new(CandleCpu::load(config, pooling, precision, weights, bytes)?)),
        }
    }
}

/// Tokens up to which a pass is short enough that thread hand-offs dominate (see `embed`).
const SHORT_PASS_TOKENS: usize = 128;

/// The CPU backend: candle's tensors and f32 GEMM, or our integer kernels for `int8`.
pub struct CandleCpu {
    encoder: BertEncoder,
    pooling: Pooling,
    precision: Precision,
}

impl CandleCpu {
    /// Reads and checks every weight (names, shapes, dtypes, finiteness), fuses QKV and, for
    /// `int8`, quantizes the dense layers.
    pub fn load(
        config: EncoderConfig,
        pooling: Pooling,
        precision: Precision,
        weights: &Path,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        let mut encoder = BertEncoder::load_bytes(config, weights, bytes, &candle_core::Device::Cpu)?;
        if precision == Precision::Int8 {
            encoder = encoder
                .quantized()
                .map_err(|e| LoadError::invalid(weights, format!("quantizing to int8: {e}")))?;
        }
        Ok(Self {
            encoder,
            pooling,
            precision,
        })
    }
}

impl Backend for CandleCpu {
    fn name(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "cpu-f32",
            Precision::Int8 => "cpu-int8",
        }
    }

    fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }

    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        // A panic inside the compute library must cost this batch, not the whole model.
        // A short pass runs on a rayon worker (`rayon::scope` moves it there): its ~150
        // parallel steps then fork from inside the pool, the small ones inline, instead of each
        // being injected from this thread and waiting for a worker to wake; that was a fifth of
        // a one-message pass. Long passes measured better left as they are.
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if tokens <= SHORT_PASS_TOKENS {
                rayon::scope(|_| self.encoder.embed(seqs, self.pooling))
            } else {
                self.encoder.embed(seqs, self.pooling)
            }
        }))
        .map_err(|_| BackendError::Panicked)?
        .map_err(BackendError::from)
    }
}
