//! The CUDA backend: the bundle's encoder on one GPU through `nudge-kernels`, heads included.
//! The weights are read and checked by the same loader as the CPU's (names, shapes, dtypes,
//! finiteness), then handed over in f32; the GPU rounds them to its half type.
use crate::backend::{Backend, Classified};
use crate::encoder::{BertEncoder, EncoderConfig, Pooling};
use crate::error::{BackendError, LoadError};
use crate::heads::LinearHead;
use nudge_kernels::{Gpu, GpuEncoder, Half, HeadWeights};
use std::path::Path;

/// A BERT-family encoder on a GPU.
pub struct CudaBackend {
    encoder: GpuEncoder,
    device: String,
    heads_attached: bool,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, uploads the weights and compiles the kernels for it. On a machine
    /// without a GPU this is an error naming what is missing.
    pub fn load(
        ordinal: usize,
        bf16: bool,
        config: EncoderConfig,
        pooling: Pooling,
        weights: &Path,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        // The device first: a machine without one is told so before 500 MB are parsed.
        let gpu_err = |e: nudge_kernels::GpuError| LoadError::invalid(weights, format!("cuda:{ordinal}: {e}"));
        let gpu = Gpu::open(ordinal).map_err(gpu_err)?;
        let cpu = BertEncoder::load_bytes(config, weights, bytes, &candle_core::Device::Cpu)?;
        let (shape, w) = cpu
            .gpu_weights(pooling)
            .map_err(|e| LoadError::invalid(weights, format!("preparing GPU weights: {e}")))?;
        drop(cpu);
        let half = if bf16 { Half::Bf16 } else { Half::F16 };
        let encoder = GpuEncoder::new(gpu, shape, &w, half, &[], false).map_err(gpu_err)?;
        Ok(Self {
            device: encoder.gpu().label(),
            encoder,
            heads_attached: false,
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        match self.encoder.half() {
            Half::F16 => "cuda-f16",
            Half::Bf16 => "cuda-bf16",
        }
    }

    fn hidden_size(&self) -> usize {
        self.encoder.shape().hidden
    }

    fn lanes(&self) -> usize {
        self.encoder.lanes()
    }

    fn device(&self) -> String {
        self.device.clone()
    }

    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        Ok(self.classify(seqs)?.pooled)
    }

    fn attach_heads(&mut self, heads: &[&LinearHead], normalize: bool) -> Result<bool, LoadError> {
        let weights: Vec<HeadWeights> = heads
            .iter()
            .map(|h| HeadWeights {
                weight: h.weight().to_vec(),
                bias: h.bias().to_vec(),
            })
            .collect();
        self.encoder
            .set_heads(&weights, normalize)
            .map_err(|e| LoadError::invalid(Path::new(&self.device), format!("heads: {e}")))?;
        self.heads_attached = !heads.is_empty();
        Ok(self.heads_attached)
    }

    fn classify(&self, seqs: &[&[u32]]) -> Result<Classified, BackendError> {
        let out = self
            .encoder
            .run(seqs)
            .map_err(|e| BackendError::Device(format!("{}: {e}", self.device)))?;
        Ok(Classified {
            pooled: out.pooled,
            heads: self.heads_attached.then_some(out.heads),
        })
    }
}
