//! Training and evaluation of Nudge's NLU heads, on the model core the server runs.
//!
//! - [`train::run`]: `nudge train` — a softmax head on a frozen encoder (embeddings cached on
//!   disk) or, with [`FineTuning`], the encoder fine-tuned with its head on candle autograd;
//!   the bundle is written through a staging directory;
//! - [`eval`]: accuracy, macro-F1, per-label precision / recall, out-of-scope figures and
//!   calibration error of a bundle on labelled data; [`eval::calibrate_bundle`] re-sets the
//!   out-of-scope threshold and writes a new bundle version;
//! - [`data`]: labelled JSONL / CSV files with errors that name file and line.
//!
//! The out-of-scope rule is the model core's [`nudge_model::intent_verdict`], so a threshold
//! chosen here means in serving what it meant when it was chosen. Progress goes through the
//! [`Progress`] callback; nothing here draws on a terminal.
#![warn(missing_docs)]

pub mod data;
mod embed;
mod error;
pub mod eval;
mod finetune;
mod progress;
pub mod train;

pub use data::{Columns, Example, Task};
pub use embed::FrozenEncoder;
pub use error::TrainError;
pub use finetune::{EpochRecord, FineTuning};
pub use progress::{Progress, Silent};
pub use train::{HeadTraining, TrainJob, TrainReport};
