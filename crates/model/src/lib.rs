//! The model core of Nudge: everything about a model that serving and training share.
//!
//! - [`encoder`]: a Hugging Face encoder directory (config, tokenizer, BERT / XLM-R weights) and
//!   the candle forward pass, with [`EncoderFiles`] as the one loader;
//! - [`Backend`]: the seam between batching and hardware — token sequences in, pooled vectors
//!   out; [`BackendKind`] picks the implementation (candle on the CPU, or our CUDA kernels with the
//!   `cuda` feature);
//! - [`bundle`]: a servable bundle (encoder + heads + manifest with the sha256 of every file),
//!   read and verified before anything is built from it, and written atomically;
//! - [`NluModel`]: a loaded bundle — tokenize, one encoder pass for a batch, every head on it;
//! - [`intent_verdict`]: the one out-of-scope rule, used by the server and by calibration;
//! - [`batching`]: length-sorted batches, shared by the server's batcher and offline passes.
//!
//! Nothing here knows about gRPC, training loops or progress bars.
#![warn(missing_docs)]

mod backend;
pub mod batching;
pub mod bundle;
#[cfg(feature = "cuda")]
mod cuda;
pub mod encoder;
mod error;
mod heads;
mod model;
mod verdict;

pub use backend::{Backend, BackendKind, CandleCpu, Classified, UnknownDevice};
pub use bundle::{ClassifierSpec, EncoderSpec, HeadsSpec, IntentSpec, Manifest, Precision, UnknownPrecision, MANIFEST};
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use encoder::{EncoderFiles, Pooling};
pub use error::{BackendError, LoadError, TokenizeError};
pub use heads::{l2_normalize, softmax, LinearHead};
pub use model::{NluModel, NluOutput};
pub use verdict::{intent_verdict, IntentVerdict, OOS_LABEL};
