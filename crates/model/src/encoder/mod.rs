//! The text encoder: Hugging Face config, tokenizer and BERT-family weights, and the one loader
//! that reads an encoder directory for serving, training and evaluation alike.
mod bert;
mod config;
mod gelu;
mod int8;
mod ops;
mod packed;
mod tokenize;

pub use bert::{read_weights, weight_names, BertEncoder, NamedWeights, Pooling, Weights};
pub use config::{Activation, EncoderConfig, SentenceTransformerHints};
pub use gelu::gelu_erf;
pub use int8::{Int8Linear, QuantizeError};
pub use ops::{layer_norm, softmax_last_dim};
pub use tokenize::{TextTokenizer, Tokenized};

use crate::bundle::EncoderSpec;
use crate::error::LoadError;
use std::path::{Path, PathBuf};

/// `config.json` of a Hugging Face encoder directory.
pub const CONFIG_FILE: &str = "config.json";
/// `tokenizer.json` of a Hugging Face encoder directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The weights of a Hugging Face encoder directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The three files an encoder directory must hold.
pub const ENCODER_FILES: [&str; 3] = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE];

/// An encoder directory read once: its config, its tokenizer set up per the spec (prefix, token
/// cap) and the raw bytes of its weights, ready for a backend or for training.
pub struct EncoderFiles {
    /// The parsed and validated `config.json`.
    pub config: EncoderConfig,
    /// The tokenizer, with the spec's text prefix and the effective token cap.
    pub tokenizer: TextTokenizer,
    /// The bytes of `tokenizer.json` (training keys its caches on them).
    pub tokenizer_bytes: Vec<u8>,
    /// Where the weights came from, for errors.
    pub weights_path: PathBuf,
    /// The bytes of `model.safetensors`.
    pub weights: Vec<u8>,
}

impl EncoderFiles {
    /// Reads the files through `read`, which maps a file name to its path and bytes (a plain
    /// read for an encoder directory, a checksummed read for a bundle). `cap` lowers the token
    /// cap further (fine-tuning's training length).
    pub fn read(
        spec: &EncoderSpec,
        cap: Option<usize>,
        mut read: impl FnMut(&str) -> Result<(PathBuf, Vec<u8>), LoadError>,
    ) -> Result<Self, LoadError> {
        let (cfg_path, cfg_bytes) = read(CONFIG_FILE)?;
        let config = EncoderConfig::from_slice(&cfg_path, &cfg_bytes)?;
        let max_tokens = spec
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(config.max_tokens())
            .min(cap.unwrap_or(usize::MAX));
        if max_tokens < 3 {
            return Err(LoadError::invalid(&cfg_path, "the token cap must be at least 3"));
        }
        let (tok_path, tokenizer_bytes) = read(TOKENIZER_FILE)?;
        let tokenizer = TextTokenizer::from_bytes(&tok_path, &tokenizer_bytes, spec.text_prefix.clone(), max_tokens)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(LoadError::invalid(
                &tok_path,
                format!(
                    "tokenizer has {} tokens but the encoder's vocab_size is {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            ));
        }
        let (weights_path, weights) = read(WEIGHTS_FILE)?;
        Ok(Self {
            config,
            tokenizer,
            tokenizer_bytes,
            weights_path,
            weights,
        })
    }

    /// Reads a plain encoder directory (no checksums: it is an input, not a bundle).
    pub fn open_dir(dir: &Path, spec: &EncoderSpec, cap: Option<usize>) -> Result<Self, LoadError> {
        Self::read(spec, cap, |name| {
            let p = dir.join(name);
            std::fs::read(&p)
                .map(|b| (p.clone(), b))
                .map_err(|e| LoadError::io(&p, e))
        })
    }
}
