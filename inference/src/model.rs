//! One servable NLU model: a bundle's encoder, tokenizer and heads, loaded and checked.
use crate::bundle::{read_verified, IntentSpec, Manifest};
use crate::encoder::{BertEncoder, EncoderConfig, Pooling, TextTokenizer, Tokenized};
use crate::error::LoadError;
use crate::heads::{l2_normalize, LinearHead};
use candle_core::Device;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

pub struct NluModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
    tokenizer: TextTokenizer,
    encoder: BertEncoder,
    pooling: Pooling,
    normalize: bool,
    intent: Option<(IntentSpec, LinearHead)>,
    sentiment: Option<(Vec<String>, LinearHead)>,
}

/// What the encoder and heads say about one text.
#[derive(Debug, Clone)]
pub struct NluOutput {
    pub embedding: Vec<f32>,
    pub intent: Option<Vec<f32>>,
    pub sentiment: Option<Vec<f32>>,
}

impl NluModel {
    /// Loads and validates a bundle directory. Nothing is returned unless every file matches its
    /// checksum and every tensor its expected shape.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let manifest = Manifest::read(dir)?;
        let enc_dir = manifest.encoder.dir.trim_end_matches('/').to_string();
        let (cfg_path, cfg_bytes) = read_verified(dir, &manifest, &format!("{enc_dir}/config.json"))?;
        let config = EncoderConfig::from_slice(&cfg_path, &cfg_bytes)?;
        let max_tokens = manifest
            .encoder
            .max_tokens
            .map_or(config.max_tokens(), |m| m.min(config.max_tokens()));
        if max_tokens < 3 {
            return Err(LoadError::invalid(
                dir.join(crate::bundle::MANIFEST),
                "encoder.max_tokens must be at least 3",
            ));
        }
        let (tok_path, tok_bytes) = read_verified(dir, &manifest, &format!("{enc_dir}/tokenizer.json"))?;
        let tokenizer =
            TextTokenizer::from_bytes(&tok_path, &tok_bytes, manifest.encoder.text_prefix.clone(), max_tokens)?;
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
        let (w_path, w_bytes) = read_verified(dir, &manifest, &format!("{enc_dir}/model.safetensors"))?;
        let encoder = BertEncoder::load_bytes(config, &w_path, &w_bytes, device)?;
        drop(w_bytes);
        let hidden = encoder.hidden_size();

        let (mut intent, mut sentiment) = (None, None);
        if let Some(file) = &manifest.heads.file {
            let (h_path, h_bytes) = read_verified(dir, &manifest, file)?;
            let st = SafeTensors::deserialize(&h_bytes)
                .map_err(|e| LoadError::invalid(&h_path, format!("not a safetensors file: {e}")))?;
            if let Some(spec) = &manifest.heads.intent {
                let head = LinearHead::load(&h_path, &st, "intent", spec.labels.len(), hidden)?;
                intent = Some((spec.clone(), head));
            }
            if let Some(spec) = &manifest.heads.sentiment {
                let head = LinearHead::load(&h_path, &st, "sentiment", spec.labels.len(), hidden)?;
                sentiment = Some((spec.labels.clone(), head));
            }
        }
        Ok(Self {
            pooling: manifest.encoder.pooling,
            normalize: manifest.encoder.normalize,
            manifest,
            dir: dir.to_path_buf(),
            tokenizer,
            encoder,
            intent,
            sentiment,
        })
    }

    pub fn load_cpu(dir: &Path) -> Result<Self, LoadError> {
        Self::load(dir, &Device::Cpu)
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }
    pub fn version(&self) -> &str {
        &self.manifest.version
    }
    pub fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }
    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }
    pub fn intent_spec(&self) -> Option<&IntentSpec> {
        self.intent.as_ref().map(|(s, _)| s)
    }
    pub fn sentiment_labels(&self) -> Option<&[String]> {
        self.sentiment.as_ref().map(|(l, _)| l.as_slice())
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokenized, String> {
        self.tokenizer.tokenize(text)
    }

    /// Pooled (and, per the manifest, normalised) vectors for a batch of token sequences.
    pub fn embed(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut out = self.encoder.embed(seqs, self.pooling)?;
        if self.normalize {
            out.iter_mut().for_each(|v| l2_normalize(v));
        }
        Ok(out)
    }

    /// One encoder pass for the batch, then every head on each row.
    pub fn run(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<NluOutput>> {
        Ok(self
            .embed(seqs)?
            .into_iter()
            .map(|embedding| NluOutput {
                intent: self.intent.as_ref().map(|(_, h)| h.probabilities(&embedding)),
                sentiment: self.sentiment.as_ref().map(|(_, h)| h.probabilities(&embedding)),
                embedding,
            })
            .collect())
    }
}
