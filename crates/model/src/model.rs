//! One servable NLU model: a bundle's encoder (behind a [`Backend`]), tokenizer and heads,
//! loaded and checked as a whole.
use crate::backend::{Backend, BackendKind};
use crate::bundle::{read_verified, IntentSpec, Manifest};
use crate::encoder::{EncoderFiles, TextTokenizer, Tokenized};
use crate::error::{BackendError, LoadError, TokenizeError};
use crate::heads::{l2_normalize, LinearHead};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// A loaded bundle: everything needed to turn token ids into head probabilities.
pub struct NluModel {
    manifest: Manifest,
    dir: PathBuf,
    tokenizer: TextTokenizer,
    backend: Box<dyn Backend>,
    /// The backend runs the heads in its own pass (a GPU); otherwise they run here.
    heads_on_backend: bool,
    normalize: bool,
    intent: Option<(IntentSpec, LinearHead)>,
    sentiment: Option<(Vec<String>, LinearHead)>,
}

/// What the encoder and heads say about one text.
#[derive(Debug, Clone)]
pub struct NluOutput {
    /// The pooled sentence vector (L2-normalised when the manifest says so).
    pub embedding: Vec<f32>,
    /// Intent head probabilities, one per manifest label.
    pub intent: Option<Vec<f32>>,
    /// Sentiment head probabilities, one per manifest label.
    pub sentiment: Option<Vec<f32>>,
}

impl NluOutput {
    /// Every number is finite (a NaN weight that passed its checksum shows up here).
    pub fn is_finite(&self) -> bool {
        self.embedding
            .iter()
            .chain(self.intent.iter().flatten())
            .chain(self.sentiment.iter().flatten())
            .all(|v| v.is_finite())
    }
}

impl NluModel {
    /// Loads and validates a bundle directory on `backend`. Nothing is returned unless every
    /// file matches its checksum and every tensor its expected shape.
    pub fn load(dir: &Path, backend: BackendKind) -> Result<Self, LoadError> {
        let manifest = Manifest::read(dir)?;
        let enc_dir = manifest.encoder.dir.trim_end_matches('/').to_string();
        let files = EncoderFiles::read(&manifest.encoder, None, |name| {
            read_verified(dir, &manifest, &format!("{enc_dir}/{name}"))
        })?;
        let mut backend = backend.load(
            files.config,
            manifest.encoder.pooling,
            manifest.encoder.precision,
            &files.weights_path,
            &files.weights,
        )?;
        let hidden = backend.hidden_size();

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
        let attach: Vec<&LinearHead> = intent
            .iter()
            .map(|(_, h)| h)
            .chain(sentiment.iter().map(|(_, h)| h))
            .collect();
        let heads_on_backend = backend.attach_heads(&attach, manifest.encoder.normalize)?;
        Ok(Self {
            heads_on_backend,
            normalize: manifest.encoder.normalize,
            manifest,
            dir: dir.to_path_buf(),
            tokenizer: files.tokenizer,
            backend,
            intent,
            sentiment,
        })
    }

    /// Loads a bundle and runs one probe text through it: a bundle whose checksums and shapes
    /// are right can still hold weights that give NaN, and the first customer must not find out.
    pub fn load_probed(dir: &Path, backend: BackendKind) -> Result<Self, LoadError> {
        let model = Self::load(dir, backend)?;
        let probe = model
            .tokenize("hello, where is my order?")
            .map_err(|e| LoadError::invalid(dir, format!("probe text: {e}")))?;
        let out = model
            .run(&[&probe.ids])
            .map_err(|e| LoadError::invalid(dir, format!("probe pass failed: {e}")))?;
        if !out.iter().all(NluOutput::is_finite) {
            return Err(LoadError::invalid(dir, "probe pass gave NaN or infinite outputs"));
        }
        Ok(model)
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The manifest's model name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
    /// The manifest's version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }
    /// The backend that runs the encoder.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
    /// Batches the backend can run at once.
    pub fn lanes(&self) -> usize {
        self.backend.lanes()
    }
    /// The device that serves: `cpu`, `cuda:0`.
    pub fn device(&self) -> String {
        self.backend.device()
    }
    /// Most tokens per text (longer texts are truncated and flagged).
    pub fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }
    /// Length of the sentence vector.
    pub fn hidden_size(&self) -> usize {
        self.backend.hidden_size()
    }
    /// The intent head's labels and out-of-scope rule, if the bundle has one.
    pub fn intent_spec(&self) -> Option<&IntentSpec> {
        self.intent.as_ref().map(|(s, _)| s)
    }
    /// The sentiment head's labels, if the bundle has one.
    pub fn sentiment_labels(&self) -> Option<&[String]> {
        self.sentiment.as_ref().map(|(l, _)| l.as_slice())
    }

    /// Token ids of one text, with the model's prefix and truncation.
    pub fn tokenize(&self, text: &str) -> Result<Tokenized, TokenizeError> {
        self.tokenizer.tokenize(text)
    }

    /// Pooled (and, per the manifest, normalised) vectors for a batch of token sequences.
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        let mut out = self.backend.embed(seqs)?;
        if self.normalize {
            out.iter_mut().for_each(|v| l2_normalize(v));
        }
        Ok(out)
    }

    /// One encoder pass for the batch, then every head on each row (in the same pass when
    /// the backend runs them).
    pub fn run(&self, seqs: &[&[u32]]) -> Result<Vec<NluOutput>, BackendError> {
        let out = self.backend.classify(seqs)?;
        let mut pooled = out.pooled;
        if self.normalize {
            pooled.iter_mut().for_each(|v| l2_normalize(v));
        }
        let (mut intent, mut sentiment) = (None, None);
        if let (true, Some(heads)) = (self.heads_on_backend, out.heads) {
            let mut heads = heads.into_iter();
            intent = self.intent.as_ref().and_then(|_| heads.next());
            sentiment = self.sentiment.as_ref().and_then(|_| heads.next());
        }
        let mut intent = intent.map(Vec::into_iter);
        let mut sentiment = sentiment.map(Vec::into_iter);
        Ok(pooled
            .into_iter()
            .map(|embedding| NluOutput {
                intent: match &mut intent {
                    Some(rows) => rows.next(),
                    None => self.intent.as_ref().map(|(_, h)| h.probabilities(&embedding)),
                },
                sentiment: match &mut sentiment {
                    Some(rows) => rows.next(),
                    None => self.sentiment.as_ref().map(|(_, h)| h.probabilities(&embedding)),
                },
                embedding,
            })
            .collect())
    }
}
