//! The seam between "which texts, padded how" and "which hardware runs the encoder".
//!
//! The batcher, the services and training's frozen-encoder pass only ever see a [`Backend`]:
//! token-id sequences in, one pooled sentence vector per sequence out, row order kept. Where
//! the numbers are computed (candle on the CPU today; our CUDA kernels behind the `cuda`
//! feature) is chosen once, by [`BackendKind`], when a model is loaded. Everything around a
//! backend (tokenizing, batching, the intent verdict) stays the same. A backend may also run
//! the model's heads in the same pass ([`Backend::attach_heads`]): on a GPU that saves copying
//! every pooled vector back only to multiply it on the CPU.
use crate::bundle::Precision;
use crate::encoder::{BertEncoder, EncoderConfig, Pooling};
use crate::error::{BackendError, LoadError};
use crate::heads::LinearHead;
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

    /// Batches the backend can run at once (the CUDA backend has a stream per lane); the
    /// batcher runs as many batching threads.
    fn lanes(&self) -> usize {
        1
    }

    /// Which device serves, for responses and metrics: `cpu`, `cuda:0`.
    fn device(&self) -> String {
        "cpu".into()
    }

    /// Offers the model's heads (in this order), applied to the pooled vector after L2
    /// normalisation when `normalize`. Returns whether the backend will run them itself in
    /// [`Backend::classify`]; by default it does not and the caller runs them.
    fn attach_heads(&mut self, heads: &[&LinearHead], normalize: bool) -> Result<bool, LoadError> {
        let _ = (heads, normalize);
        Ok(false)
    }

    /// Pooled vectors (not normalised) and, when heads are attached, each head's
    /// probabilities per sequence (`[head][sequence][label]`).
    fn classify(&self, seqs: &[&[u32]]) -> Result<Classified, BackendError> {
        Ok(Classified {
            pooled: self.embed(seqs)?,
            heads: None,
        })
    }
}

/// What [`Backend::classify`] returns.
#[derive(Debug, Clone)]
pub struct Classified {
    /// One pooled vector per sequence, not normalised.
    pub pooled: Vec<Vec<f32>>,
    /// The attached heads' probabilities, `[head][sequence][label]`, when the backend ran them.
    pub heads: Option<Vec<Vec<Vec<f32>>>>,
}

/// Where an encoder runs. Chosen in the server's configuration (`device = "cpu"` or
/// `"cuda:0"`) or with `nudge serve --device`. Written `cpu`, `cuda`, `cuda:N` (f16 products)
/// or `cuda:N:bf16`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum BackendKind {
    /// candle on the CPU, with our fused QKV layout and parallel softmax / LayerNorm / GELU.
    #[default]
    Cpu,
    /// Our CUDA kernels and cuBLAS on GPU `ordinal` (needs the `cuda` feature, on by default).
    Cuda {
        /// The device ordinal.
        ordinal: usize,
        /// bf16 products instead of f16.
        bf16: bool,
    },
}

/// A device name that is not `cpu`, `cuda`, `cuda:N` or `cuda:N:bf16`.
#[derive(Debug, thiserror::Error)]
#[error("unknown device `{0}`: expected cpu, cuda, cuda:N, cuda:N:f16 or cuda:N:bf16")]
pub struct UnknownDevice(String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnknownDevice(s.to_string());
        let mut parts = s.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("cpu"), None, ..) => Ok(BackendKind::Cpu),
            (Some("cuda"), ordinal, half, None) => {
                let ordinal = ordinal.map_or(Ok(0), |o| o.parse().map_err(|_| bad()))?;
                let bf16 = match half {
                    None | Some("f16") => false,
                    Some("bf16") => true,
                    Some(_) => return Err(bad()),
                };
                Ok(BackendKind::Cuda { ordinal, bf16 })
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendKind::Cpu => f.write_str("cpu"),
            BackendKind::Cuda { ordinal, bf16: false } => write!(f, "cuda:{ordinal}"),
            BackendKind::Cuda { ordinal, bf16: true } => write!(f, "cuda:{ordinal}:bf16"),
        }
    }
}

impl TryFrom<String> for BackendKind {
    type Error = UnknownDevice;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BackendKind> for String {
    fn from(k: BackendKind) -> String {
        k.to_string()
    }
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
            #[cfg(feature = "cuda")]
            BackendKind::Cuda { ordinal, bf16 } => {
                let _ = precision; // int8 is CPU arithmetic; the GPU rounds the f32 weights itself.
                Ok(Box::new(crate::cuda::CudaBackend::load(
                    ordinal, bf16, config, pooling, weights, bytes,
                )?))
            }
            #[cfg(not(feature = "cuda"))]
            BackendKind::Cuda { .. } => Err(LoadError::invalid(
                weights,
                format!("device {self}: this build has no CUDA support (built without the `cuda` feature)"),
            )),
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

#[cfg(test)]
mod tests {
    use super::BackendKind;

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, kind) in [
            ("cpu", BackendKind::Cpu),
            (
                "cuda",
                BackendKind::Cuda {
                    ordinal: 0,
                    bf16: false,
                },
            ),
            (
                "cuda:1",
                BackendKind::Cuda {
                    ordinal: 1,
                    bf16: false,
                },
            ),
            (
                "cuda:0:f16",
                BackendKind::Cuda {
                    ordinal: 0,
                    bf16: false,
                },
            ),
            ("cuda:2:bf16", BackendKind::Cuda { ordinal: 2, bf16: true }),
        ] {
            let parsed: BackendKind = text.parse().unwrap();
            assert_eq!(parsed, kind, "{text}");
            assert_eq!(parsed.to_string().parse::<BackendKind>().unwrap(), kind);
        }
        for bad in ["gpu", "cuda:x", "cuda:0:fp8", "cpu:0", "cuda:0:bf16:1", ""] {
            let e = bad.parse::<BackendKind>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        // Through serde, as configuration files read it, and refused there with the same words.
        let kind: BackendKind = serde_json::from_str("\"cuda:3:bf16\"").unwrap();
        assert_eq!(kind, BackendKind::Cuda { ordinal: 3, bf16: true });
        let e = serde_json::from_str::<BackendKind>("\"tpu\"").unwrap_err().to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
    }
}
