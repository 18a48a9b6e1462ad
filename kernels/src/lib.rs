//! Nudge's CUDA path: the kernels, the GPU encoder built on them, and batched decision
//! scoring.
//!
//! - The kernels are CUDA C++ in `kernels/cu/`, compiled at run time by NVRTC for the
//!   device's own architecture and the model's shape ([`compile`], [`compile_all`]), loaded
//!   through cudarc with dynamic loading: the build needs no CUDA toolkit, and a binary built
//!   here runs on a machine without a GPU (each entry point checks for the driver first and
//!   answers [`GpuError::NoDriver`]).
//! - [`GpuEncoder`]: a BERT-family encoder on one GPU, packed variable-length batches, dense
//!   layers through cuBLAS (f16 or bf16 inputs, f32 accumulation), heads with softmax.
//!   `nudge-model` puts it behind its `Backend` trait; this crate knows nothing of bundles.
//! - [`GpuScorer`]: posterior means, LinUCB widths and Thompson-sampling win shares for
//!   thousands of candidates at once.
//! - [`reference`](mod@reference): the CPU reference of every kernel, and [`Single`] to run each kernel
//!   alone: the tests hold one against the other.
#![warn(missing_docs)]

mod encoder;
mod error;
mod gpu;
mod ops;
pub mod reference;
mod scoring;
mod source;

pub use encoder::{
    Activation, Dense, EncoderOutput, EncoderShape, EncoderWeights, GpuEncoder, HeadWeights, LayerWeights, Norm, Pool,
};
pub use error::GpuError;
pub use gpu::{dense_rate, driver_available, matmul_rate, Gpu, Half};
pub use ops::Single;
pub use scoring::{GpuScorer, UcbScores};
pub use source::{compile, compile_all, nvrtc_available, Source, Variant, SOURCES};
