//! The subset of a Hugging Face `config.json` a BERT-family encoder needs.
use crate::error::LoadError;
use serde::Deserialize;
use std::path::Path;

/// Activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (`gelu` in HF configs).
    GeluErf,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// max(0, x).
    Relu,
}

/// The fields of `config.json` the forward pass depends on, with HF's defaults; unknown
/// fields are ignored (HF configs carry many), unsupported values refused at load.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// `bert`, or an XLM-R/RoBERTa family name (positions then start after the pad id).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of every token state and of the pooled vector.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Feed-forward inner width.
    pub intermediate_size: usize,
    /// Feed-forward activation by its HF name (see [`EncoderConfig::activation`]).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (0: the model has none).
    #[serde(default)]
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `absolute` (or absent) is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
        Self::from_slice(path, &bytes)
    }

    /// Parses and validates `config.json` bytes; `path` names the file in errors.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Self, LoadError> {
        let cfg: EncoderConfig = serde_json::from_slice(bytes).map_err(|source| LoadError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |r: String| Err(LoadError::invalid(path, r));
        match self.model_type.as_str() {
            "bert" | "xlm-roberta" | "roberta" | "camembert" => {}
            other => return bad(format!("model_type `{other}` is not a BERT-family encoder")),
        }
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 || self.vocab_size == 0 {
            return bad("num_hidden_layers, intermediate_size and vocab_size must be positive".into());
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return bad(format!(
                    "position_embedding_type `{p}` is not supported (only `absolute`)"
                ));
            }
        }
        if self.max_position_embeddings <= self.position_offset() + 2 {
            return bad(format!(
                "max_position_embeddings {} is too small",
                self.max_position_embeddings
            ));
        }
        self.activation()
            .map(|_| ())
            .ok_or_else(|| LoadError::invalid(path, format!("hidden_act `{}` is not supported", self.hidden_act)))
    }

    /// The activation `hidden_act` names, if this code implements it.
    pub fn activation(&self) -> Option<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// RoBERTa-style models number positions from `pad_token_id + 1`, BERT from 0.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_str() {
            "bert" => 0,
            _ => self.pad_token_id + 1,
        }
    }

    /// The longest input, special tokens included, that the position table can hold.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.position_offset()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// What a sentence-transformers directory says about pooling and input length
/// (`1_Pooling/config.json`, `sentence_bert_config.json`), when it says anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceTransformerHints {
    /// Pooling from `1_Pooling/config.json`.
    pub pooling: Option<super::Pooling>,
    /// Input cap from `sentence_bert_config.json`.
    pub max_seq_length: Option<usize>,
}

impl SentenceTransformerHints {
    /// Reads whatever hints `dir` has; missing or unreadable files give no hint.
    pub fn read(dir: &Path) -> Self {
        let json = |p: std::path::PathBuf| -> Option<serde_json::Value> {
            serde_json::from_slice(&std::fs::read(p).ok()?).ok()
        };
        let pooling = json(dir.join("1_Pooling/config.json")).and_then(|v| {
            if v["pooling_mode_cls_token"].as_bool() == Some(true) {
                Some(super::Pooling::Cls)
            } else if v["pooling_mode_mean_tokens"].as_bool() == Some(true) {
                Some(super::Pooling::Mean)
            } else {
                None
            }
        });
        let max_seq_length = json(dir.join("sentence_bert_config.json"))
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|n| n as usize);
        Self {
            pooling,
            max_seq_length,
        }
    }
}
