//! Wraps a `tokenizer.json` for serving: no padding (the batcher pads), truncation to the
//! model maximum with a flag, and the model's text prefix (e5's `query: `) added once here.
use crate::error::{LoadError, TokenizeError};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A `tokenizer.json` set up for serving one model: its prefix and token cap.
pub struct TextTokenizer {
    inner: Tokenizer,
    prefix: String,
    max_tokens: usize,
}

/// One text's token ids, special tokens included.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Ids in order, at most the tokenizer's `max_tokens`.
    pub ids: Vec<u32>,
    /// The text was longer than the model maximum; only its head is kept.
    pub truncated: bool,
}

impl TextTokenizer {
    /// Builds from `tokenizer.json` bytes; `path` names the file in errors. Refuses a tokenizer
    /// that yields no tokens for plain text.
    pub fn from_bytes(path: &Path, bytes: &[u8], prefix: String, max_tokens: usize) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(e.to_string()))?;
        let t = Self {
            inner,
            prefix,
            max_tokens,
        };
        // A tokenizer that yields nothing for plain text cannot serve; fail at load, not per request.
        let probe = t.tokenize("hello").map_err(|e| err(e.to_string()))?;
        if probe.ids.is_empty() {
            return Err(err("produces no tokens for `hello`".into()));
        }
        Ok(t)
    }

    /// The cap on tokens per text, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Vocabulary size with added tokens; must fit the encoder's embedding table.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (prefix added, truncated to the cap with `truncated` set).
    pub fn tokenize(&self, text: &str) -> Result<Tokenized, TokenizeError> {
        let input = if self.prefix.is_empty() {
            std::borrow::Cow::Borrowed(text)
        } else {
            std::borrow::Cow::Owned(format!("{}{}", self.prefix, text))
        };
        let enc = self.inner.encode(input.as_ref(), true).map_err(TokenizeError)?;
        Ok(Tokenized {
            truncated: !enc.get_overflowing().is_empty(),
            ids: enc.get_ids().to_vec(),
        })
    }
}
