//! The text encoder: Hugging Face config, tokenizer and BERT-family weights.
pub mod bert;
pub mod config;
pub mod gelu;
pub mod tokenize;

pub use bert::{BertEncoder, Pooling};
pub use config::EncoderConfig;
pub use tokenize::{TextTokenizer, Tokenized};
