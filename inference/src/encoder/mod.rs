//! The text encoder: Hugging Face config, tokenizer and BERT-family weights.
pub mod bert;
pub mod config;
pub mod gelu;
pub mod ops;
pub mod tokenize;

pub use bert::{read_weights, weight_names, BertEncoder, NamedWeights, Pooling, Weights};
pub use config::EncoderConfig;
pub use tokenize::{TextTokenizer, Tokenized};
