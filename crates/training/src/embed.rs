//! A frozen encoder as training sees it: texts in, pooled vectors out, through the same
//! backend the server runs, with an on-disk cache keyed by the encoder's sha256 and the text, so
//! a second training run on the same data embeds nothing.
use crate::error::TrainError;
use crate::progress::Progress;
use nudge_model::batching::sorted_batches;
use nudge_model::bundle::sha256_hex;
use nudge_model::encoder::TextTokenizer;
use nudge_model::{l2_normalize, Backend, BackendKind, EncoderFiles, EncoderSpec};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A frozen encoder with its tokenizer, as training sees it.
pub struct FrozenEncoder {
    /// The encoder directory.
    pub dir: PathBuf,
    /// How vectors are pooled, normalised and prefixed.
    pub spec: EncoderSpec,
    /// Cache key: weights, tokenizer and spec together.
    pub sha256: String,
    tokenizer: TextTokenizer,
    backend: Box<dyn Backend>,
}

impl FrozenEncoder {
    /// Loads an encoder directory through the same loader and backend the server uses.
    pub fn load(dir: &Path, spec: EncoderSpec) -> Result<Self, TrainError> {
        let files = EncoderFiles::open_dir(dir, &spec, None)?;
        let mut key = sha256_hex(&files.weights);
        key.push_str(&sha256_hex(&files.tokenizer_bytes));
        // Precision too: int8 embeddings differ from f32 ones in their last digits, and heads
        // must be fitted on the arithmetic they will be served with. `-a7` marks the int8
        // arithmetic with 7-bit activations (12-bit before 2026.11.30-2), so vectors cached
        // under the old one are not reused.
        key.push_str(&format!(
            "{:?}{}{}{}",
            spec.pooling,
            spec.normalize,
            spec.text_prefix,
            match spec.precision {
                nudge_model::Precision::F32 => "",
                nudge_model::Precision::Int8 => "int8-a7",
            }
        ));
        let backend = BackendKind::Cpu.load(
            files.config,
            spec.pooling,
            spec.precision,
            &files.weights_path,
            &files.weights,
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
            sha256: sha256_hex(key.as_bytes()),
            tokenizer: files.tokenizer,
            backend,
        })
    }

    /// Length of the vectors.
    pub fn hidden_size(&self) -> usize {
        self.backend.hidden_size()
    }

    /// Embeds texts in length-sorted batches, reusing (and extending) the on-disk cache.
    pub fn embed_all(
        &self,
        texts: &[&str],
        cache_dir: Option<&Path>,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut cache = match cache_dir {
            Some(d) => EmbeddingCache::open(d, &self.sha256, self.hidden_size())?,
            None => EmbeddingCache::memory(self.hidden_size()),
        };
        let missing: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            texts
                .iter()
                .copied()
                .filter(|t| !cache.map.contains_key(*t) && seen.insert(*t))
                .collect()
        };
        progress.start("embedding", missing.len() as u64);
        let toks: Vec<Vec<u32>> = missing
            .iter()
            .map(|t| {
                self.tokenizer
                    .tokenize(t)
                    .map(|k| k.ids)
                    .map_err(|e| TrainError::invalid(&self.dir, format!("tokenizing {t:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let lengths: Vec<usize> = toks.iter().map(Vec::len).collect();
        for batch in sorted_batches(&lengths, 64, 4096) {
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| toks[i].as_slice()).collect();
            let embs = self.backend.embed(&seqs)?;
            for (&i, mut e) in batch.iter().zip(embs) {
                if self.spec.normalize {
                    l2_normalize(&mut e);
                }
                cache.insert(missing[i], e)?;
            }
            progress.advance(batch.len() as u64);
        }
        cache.flush()?;
        Ok(texts
            .iter()
            .map(|t| cache.map.get(*t).cloned().unwrap_or_default())
            .collect())
    }
}

/// Append-only file of (text, vector) records for one encoder.
struct EmbeddingCache {
    map: HashMap<String, Vec<f32>>,
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    dim: usize,
}

impl EmbeddingCache {
    fn memory(dim: usize) -> Self {
        Self {
            map: HashMap::new(),
            file: None,
            dim,
        }
    }

    fn open(dir: &Path, key: &str, dim: usize) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(format!("{}.emb", &key[..16]));
        let mut map = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let mut p = 0;
            // A torn last record (killed run) is ignored; everything before it is kept.
            while p + 4 <= bytes.len() {
                let n = u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]) as usize;
                let end = p + 4 + n + dim * 4;
                if end > bytes.len() {
                    break;
                }
                let text = String::from_utf8_lossy(&bytes[p + 4..p + 4 + n]).to_string();
                let v = bytes[p + 4 + n..end]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                map.insert(text, v);
                p = end;
            }
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self {
            map,
            file: Some((path, std::io::BufWriter::new(f))),
            dim,
        })
    }

    fn insert(&mut self, text: &str, v: Vec<f32>) -> Result<(), TrainError> {
        debug_assert_eq!(v.len(), self.dim);
        if let Some((path, w)) = &mut self.file {
            let mut rec = Vec::with_capacity(4 + text.len() + v.len() * 4);
            rec.extend_from_slice(&(text.len() as u32).to_le_bytes());
            rec.extend_from_slice(text.as_bytes());
            v.iter().for_each(|x| rec.extend_from_slice(&x.to_le_bytes()));
            w.write_all(&rec).map_err(|e| TrainError::io(path.as_path(), e))?;
        }
        self.map.insert(text.to_string(), v);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        if let Some((path, w)) = &mut self.file {
            w.flush().map_err(|e| TrainError::io(path.as_path(), e))?;
        }
        Ok(())
    }
}
