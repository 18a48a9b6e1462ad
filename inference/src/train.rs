//! Training classification heads on a frozen encoder: embeddings are computed once (and cached
//! on disk, keyed by the encoder's sha256 and the text), then a softmax head is fitted with
//! AdamW on candle. Seeded: the same data and flags give the same head.
use crate::bundle::{sha256_hex, ClassifierSpec, EncoderSpec, HeadsSpec, IntentSpec, Manifest, FORMAT};
use crate::encoder::{BertEncoder, EncoderConfig, TextTokenizer};
use crate::error::LoadError;
use crate::heads::{l2_normalize, LinearHead};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Reads JSONL `{"text", "label"}`; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, LoadError> {
    let f = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| LoadError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| LoadError::invalid(path, format!("line {}: malformed JSON: {e}", i + 1)))?;
        let text = v.get("text").and_then(|t| t.as_str());
        let label = v.get("label").and_then(|t| t.as_str());
        match (text, label) {
            (Some(t), Some(l)) if !t.trim().is_empty() && !l.trim().is_empty() => out.push(Example {
                text: t.to_string(),
                label: l.to_string(),
            }),
            _ => {
                return Err(LoadError::invalid(
                    path,
                    format!("line {}: needs non-empty string fields `text` and `label`", i + 1),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(LoadError::invalid(path, "no examples"));
    }
    Ok(out)
}

/// A frozen encoder with its tokenizer, as training sees it.
pub struct FrozenEncoder {
    pub dir: PathBuf,
    pub spec: EncoderSpec,
    pub sha256: String,
    tokenizer: TextTokenizer,
    encoder: BertEncoder,
}

impl FrozenEncoder {
    pub fn load(dir: &Path, spec: EncoderSpec) -> Result<Self, LoadError> {
        let cfg_path = dir.join("config.json");
        let config = EncoderConfig::from_file(&cfg_path)?;
        let max = spec
            .max_tokens
            .map_or(config.max_tokens(), |m| m.min(config.max_tokens()));
        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| LoadError::io(&tok_path, e))?;
        let tokenizer = TextTokenizer::from_bytes(&tok_path, &tok_bytes, spec.text_prefix.clone(), max)?;
        let w_path = dir.join("model.safetensors");
        let w = std::fs::read(&w_path).map_err(|e| LoadError::io(&w_path, e))?;
        let mut hasher_input = sha256_hex(&w);
        hasher_input.push_str(&sha256_hex(&tok_bytes));
        hasher_input.push_str(&format!("{:?}{}{}", spec.pooling, spec.normalize, spec.text_prefix));
        let sha256 = sha256_hex(hasher_input.as_bytes());
        let encoder = BertEncoder::load_bytes(config, &w_path, &w, &Device::Cpu)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
            sha256,
            tokenizer,
            encoder,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// Embeds texts in length-sorted batches, reusing (and extending) the on-disk cache.
    pub fn embed_all(
        &self,
        texts: &[&str],
        cache_dir: Option<&Path>,
        progress: &indicatif::ProgressBar,
    ) -> Result<Vec<Vec<f32>>, LoadError> {
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
        progress.set_length(missing.len() as u64);
        let mut toks: Vec<(&str, Vec<u32>)> = missing
            .iter()
            .map(|t| {
                self.tokenizer
                    .tokenize(t)
                    .map(|k| (*t, k.ids))
                    .map_err(|e| LoadError::invalid(&self.dir, format!("tokenizing {t:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        toks.sort_by_key(|(_, ids)| ids.len());
        let mut start = 0;
        while start < toks.len() {
            // Up to 64 texts or ~4096 padded tokens per pass.
            let mut end = start + 1;
            while end < toks.len() && end - start < 64 && toks[end].1.len() * (end - start + 1) <= 4096 {
                end += 1;
            }
            let seqs: Vec<&[u32]> = toks[start..end].iter().map(|(_, ids)| ids.as_slice()).collect();
            let embs = self.encoder.embed(&seqs, self.spec.pooling)?;
            for ((text, _), mut e) in toks[start..end].iter().zip(embs) {
                if self.spec.normalize {
                    l2_normalize(&mut e);
                }
                cache.insert(text, e)?;
            }
            progress.inc((end - start) as u64);
            start = end;
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

    fn open(dir: &Path, key: &str, dim: usize) -> Result<Self, LoadError> {
        std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
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
            .map_err(|e| LoadError::io(&path, e))?;
        Ok(Self {
            map,
            file: Some((path, std::io::BufWriter::new(f))),
            dim,
        })
    }

    fn insert(&mut self, text: &str, v: Vec<f32>) -> Result<(), LoadError> {
        debug_assert_eq!(v.len(), self.dim);
        if let Some((path, w)) = &mut self.file {
            let mut rec = Vec::with_capacity(4 + text.len() + v.len() * 4);
            rec.extend_from_slice(&(text.len() as u32).to_le_bytes());
            rec.extend_from_slice(text.as_bytes());
            v.iter().for_each(|x| rec.extend_from_slice(&x.to_le_bytes()));
            w.write_all(&rec).map_err(|e| LoadError::io(path.as_path(), e))?;
        }
        self.map.insert(text.to_string(), v);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LoadError> {
        if let Some((path, w)) = &mut self.file {
            w.flush().map_err(|e| LoadError::io(path.as_path(), e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HeadTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for HeadTraining {
    fn default() -> Self {
        Self {
            epochs: 60,
            batch_size: 64,
            lr: 1e-2,
            weight_decay: 1e-4,
            seed: 17,
        }
    }
}

/// Fits a softmax head `labels × dim` on fixed vectors. Returns the head and the final
/// training loss.
pub fn fit_softmax(
    x: &[Vec<f32>],
    y: &[usize],
    labels: usize,
    cfg: HeadTraining,
) -> candle_core::Result<(LinearHead, f32)> {
    let dev = Device::Cpu;
    let dim = x.first().map_or(0, |v| v.len());
    let n = x.len();
    let flat: Vec<f32> = x.iter().flat_map(|v| v.iter().copied()).collect();
    let xs = Tensor::from_vec(flat, (n, dim), &dev)?;
    let ys = Tensor::from_vec(y.iter().map(|&l| l as u32).collect::<Vec<_>>(), n, &dev)?;
    let w = Var::from_tensor(&Tensor::zeros((labels, dim), DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(labels, DType::F32, &dev)?)?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut last = 0f32;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut total = 0f32;
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let xb = xs.index_select(&idx, 0)?;
            let yb = ys.index_select(&idx, 0)?;
            // Embeddings are unit vectors; a temperature of 20 lets a linear head reach confident logits.
            let logits = (xb.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())? * 20.0)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * chunk.len() as f32;
        }
        last = total / n as f32;
    }
    let wv: Vec<f32> = (w.as_tensor() * 20.0)?.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = (b.as_tensor() * 20.0)?.to_vec1()?;
    Ok((LinearHead::new(wv, bv, dim), last))
}

/// Accuracy and per-example predictions of a head on fixed vectors.
pub fn accuracy(head: &LinearHead, x: &[Vec<f32>], y: &[usize]) -> f64 {
    let correct = x
        .iter()
        .zip(y)
        .filter(|(v, &t)| {
            let p = head.probabilities(v);
            p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i) == Some(t)
        })
        .count();
    correct as f64 / x.len().max(1) as f64
}

/// The most probable label other than the out-of-scope one, with its probability (the server
/// applies the same rule in `service::interpret`).
fn best_in_scope(p: &[f32], oos: Option<usize>) -> (usize, f32) {
    p.iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| Some(*i) != oos)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

/// Which head `nudge train` fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Intent,
    Sentiment,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Intent => "intent",
            Task::Sentiment => "sentiment",
        }
    }
}

/// Label list (sorted) and label indices; refuses a single class.
pub fn index_labels(path: &Path, examples: &[Example]) -> Result<(Vec<String>, Vec<usize>), LoadError> {
    let labels: Vec<String> = examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        return Err(LoadError::invalid(
            path,
            format!(
                "only one class (`{}`): a classifier needs at least two",
                labels.first().cloned().unwrap_or_default()
            ),
        ));
    }
    let pos: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let y = examples.iter().map(|e| pos[e.label.as_str()]).collect();
    Ok((labels, y))
}

/// Writes (or updates) a bundle at `out` with `head` for `task`, keeping the bundle's other
/// head. The encoder files are hard-linked from `encoder_dir` when `out` has none yet.
#[allow(clippy::too_many_arguments)]
pub fn write_bundle_head(
    out: &Path,
    name: &str,
    version: &str,
    encoder: &FrozenEncoder,
    encoder_source: Option<String>,
    task: Task,
    labels: Vec<String>,
    head: &LinearHead,
    oos_threshold: f32,
    metrics: serde_json::Map<String, serde_json::Value>,
) -> Result<Manifest, LoadError> {
    let existing = Manifest::read(out).ok();
    // Everything is written into a staging directory beside `out` and swapped in at the end:
    // a failed or killed run leaves the old bundle (or none), never a half-written one.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| LoadError::io(parent, e))?;
    let stage = tempfile::Builder::new()
        .prefix(".nudge-bundle-")
        .tempdir_in(parent)
        .map_err(|e| LoadError::io(parent, e))?;
    std::fs::create_dir_all(stage.path().join("encoder")).map_err(|e| LoadError::io(stage.path(), e))?;
    let mut heads: BTreeMap<String, (Vec<f32>, Vec<f32>, usize)> = BTreeMap::new();
    let hidden = encoder.hidden_size();
    if let Some(m) = &existing {
        if let Some(file) = &m.heads.file {
            let p = out.join(file);
            if let Ok(bytes) = std::fs::read(&p) {
                if let Ok(st) = safetensors::SafeTensors::deserialize(&bytes) {
                    for (t, n) in [
                        (Task::Intent, m.heads.intent.as_ref().map(|s| s.labels.len())),
                        (Task::Sentiment, m.heads.sentiment.as_ref().map(|s| s.labels.len())),
                    ] {
                        if let Some(n) = n {
                            if t != task {
                                let h = LinearHead::load(&p, &st, t.name(), n, hidden)?;
                                heads.insert(t.name().into(), (h.weight().to_vec(), h.bias().to_vec(), n));
                            }
                        }
                    }
                }
            }
        }
    }
    heads.insert(
        task.name().into(),
        (head.weight().to_vec(), head.bias().to_vec(), labels.len()),
    );
    let tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = heads
        .into_iter()
        .flat_map(|(name, (w, b, n))| {
            [
                (format!("{name}.weight"), (vec![n, hidden], w)),
                (format!("{name}.bias"), (vec![n], b)),
            ]
        })
        .collect();
    let st = crate::bundle::f32_safetensors(out, &tensors)?;
    crate::bundle::write_atomic(&stage.path().join("heads.safetensors"), &st)?;

    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let (src, dst) = (encoder.dir.join(f), stage.path().join("encoder").join(f));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| LoadError::io(&src, e))?;
        }
    }
    let mut spec_heads = existing.as_ref().map(|m| m.heads.clone()).unwrap_or_default();
    spec_heads.file = Some("heads.safetensors".into());
    match task {
        Task::Intent => {
            spec_heads.intent = Some(IntentSpec {
                oos_label: labels.iter().find(|l| *l == "oos").cloned(),
                labels,
                oos_threshold,
            })
        }
        Task::Sentiment => spec_heads.sentiment = Some(ClassifierSpec { labels }),
    }
    let mut all_metrics = existing.as_ref().map(|m| m.metrics.clone()).unwrap_or_default();
    all_metrics.insert(task.name().into(), serde_json::Value::Object(metrics));
    let mut m = Manifest {
        format: FORMAT,
        name: name.to_string(),
        version: version.to_string(),
        encoder: EncoderSpec {
            dir: "encoder".into(),
            source: encoder_source,
            ..encoder.spec.clone()
        },
        heads: HeadsSpec { ..spec_heads },
        files: BTreeMap::new(),
        metrics: all_metrics,
    };
    m.write_with_checksums(
        stage.path(),
        &[
            "encoder/config.json",
            "encoder/tokenizer.json",
            "encoder/model.safetensors",
            "heads.safetensors",
        ],
    )?;
    let staged = stage.keep();
    if out.exists() {
        // Files the bundle does not manage (a README, the script that made it) stay with it.
        for entry in std::fs::read_dir(out)
            .map_err(|e| LoadError::io(out, e))?
            .filter_map(|e| e.ok())
        {
            let dst = staged.join(entry.file_name());
            if !dst.exists() {
                std::fs::rename(entry.path(), &dst).map_err(|e| LoadError::io(entry.path(), e))?;
            }
        }
        let old = parent.join(format!(".nudge-bundle-old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| LoadError::io(out, e))?;
        std::fs::rename(&staged, out).map_err(|e| LoadError::io(out, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&staged, out).map_err(|e| LoadError::io(out, e))?;
    }
    Ok(m)
}

/// Everything `nudge train` (heads only) needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub task: Task,
    pub train: Vec<PathBuf>,
    /// Intent: files of out-of-scope examples, trained as the label `oos` (only the rows
    /// labelled `oos` when the file has any, otherwise every row).
    pub oos_train: Vec<PathBuf>,
    /// Seeded sample, spread evenly over the file's labels, from each `oos_train` file.
    pub oos_limit_per_file: Option<usize>,
    pub val: Vec<PathBuf>,
    /// An encoder directory (HF layout) or an existing bundle.
    pub base: PathBuf,
    pub out: PathBuf,
    pub name: Option<String>,
    pub version: Option<String>,
    pub text_prefix: Option<String>,
    pub pooling: Option<crate::encoder::Pooling>,
    /// Seeded sample of at most this many examples from each training file.
    pub limit_per_file: Option<usize>,
    pub val_limit_per_file: Option<usize>,
    /// Intent: fraction of held-out in-scope texts allowed under the out-of-scope threshold.
    pub oos_quantile: f32,
    pub cache_dir: Option<PathBuf>,
    pub training: HeadTraining,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ValFigures {
    pub file: String,
    pub examples: usize,
    /// Top-1 accuracy on rows whose label the head knows (threshold not applied).
    pub accuracy: f64,
    /// Intent with `oos` rows in val: accuracy on in-scope rows (wrong if flagged out of scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_scope_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_recall: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    pub task: &'static str,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub train_accuracy: f64,
    pub oos_threshold: f32,
    pub val: Vec<ValFigures>,
    pub embed_seconds: f64,
    pub fit_seconds: f64,
}

fn sample(mut v: Vec<Example>, limit: Option<usize>, seed: u64) -> Vec<Example> {
    if let Some(n) = limit {
        if v.len() > n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            v.shuffle(&mut rng);
            v.truncate(n);
        }
    }
    v
}

/// Up to `limit` examples taking labels in turn, so a skewed file still gives a varied sample.
fn stratified_sample(v: Vec<Example>, limit: Option<usize>, seed: u64) -> Vec<Example> {
    let Some(limit) = limit else { return v };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut groups: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in v {
        groups.entry(e.label.clone()).or_default().push(e);
    }
    let mut groups: Vec<Vec<Example>> = groups.into_values().collect();
    groups.iter_mut().for_each(|g| g.shuffle(&mut rng));
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit && groups.iter().any(|g| !g.is_empty()) {
        for g in groups.iter_mut() {
            if out.len() < limit {
                if let Some(e) = g.pop() {
                    out.push(e);
                }
            }
        }
    }
    out
}

pub fn run(job: &TrainJob, progress: &indicatif::ProgressBar) -> Result<TrainReport, LoadError> {
    let base_manifest = Manifest::read(&job.base).ok();
    let (encoder_dir, mut spec, source) = match &base_manifest {
        Some(m) => (
            job.base.join(&m.encoder.dir),
            m.encoder.clone(),
            m.encoder.source.clone(),
        ),
        None => {
            // A sentence-transformers directory says how it pools and how long its inputs are.
            let hints = crate::encoder::config::SentenceTransformerHints::read(&job.base);
            (
                job.base.clone(),
                EncoderSpec {
                    dir: "encoder".into(),
                    pooling: hints.pooling.unwrap_or(crate::encoder::Pooling::Mean),
                    normalize: true,
                    text_prefix: String::new(),
                    max_tokens: hints.max_seq_length,
                    source: None,
                },
                job.base.file_name().map(|n| n.to_string_lossy().to_string()),
            )
        }
    };
    if let Some(p) = &job.text_prefix {
        spec.text_prefix = p.clone();
    }
    if let Some(p) = job.pooling {
        spec.pooling = p;
    }
    let mut train = Vec::new();
    for (i, f) in job.train.iter().enumerate() {
        train.extend(sample(read_jsonl(f)?, job.limit_per_file, job.training.seed + i as u64));
    }
    for (i, f) in job.oos_train.iter().enumerate() {
        let rows = read_jsonl(f)?;
        let rows: Vec<Example> = if rows.iter().any(|e| e.label == "oos") {
            rows.into_iter().filter(|e| e.label == "oos").collect()
        } else {
            rows
        };
        let picked = stratified_sample(rows, job.oos_limit_per_file, job.training.seed + 500 + i as u64);
        train.extend(picked.into_iter().map(|e| Example {
            text: e.text,
            label: "oos".into(),
        }));
    }
    let first = job.train.first().cloned().unwrap_or_default();
    let (labels, y) = index_labels(&first, &train)?;
    let mut vals = Vec::new();
    for (i, f) in job.val.iter().enumerate() {
        let v = sample(
            read_jsonl(f)?,
            job.val_limit_per_file,
            job.training.seed + 1000 + i as u64,
        );
        for (n, e) in v.iter().enumerate() {
            let oos_row = job.task == Task::Intent && e.label == "oos";
            if !oos_row && !labels.contains(&e.label) {
                return Err(LoadError::invalid(
                    f,
                    format!(
                        "example {}: label `{}` is not among the training labels",
                        n + 1,
                        e.label
                    ),
                ));
            }
        }
        vals.push((f.clone(), v));
    }

    let encoder = FrozenEncoder::load(&encoder_dir, spec)?;
    let t0 = std::time::Instant::now();
    let mut texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
    for (_, v) in &vals {
        texts.extend(v.iter().map(|e| e.text.as_str()));
    }
    let embs = encoder.embed_all(&texts, job.cache_dir.as_deref(), progress)?;
    let embed_seconds = t0.elapsed().as_secs_f64();
    let (x_train, rest) = embs.split_at(train.len());

    let t1 = std::time::Instant::now();
    let fit = |x: &[Vec<f32>], y: &[usize]| fit_softmax(x, y, labels.len(), job.training).map_err(LoadError::from);
    // Out-of-scope threshold: fit on 80% of train, take the quantile of the held-out 20%'s
    // top probability, so that share of in-scope texts would be flagged. Then refit on all.
    let oos_threshold = if job.task == Task::Intent && job.oos_quantile > 0.0 {
        let mut idx: Vec<usize> = (0..x_train.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(job.training.seed ^ 0x5eed));
        let cut = idx.len() * 4 / 5;
        let (a, b) = idx.split_at(cut);
        let xa: Vec<Vec<f32>> = a.iter().map(|&i| x_train[i].clone()).collect();
        let ya: Vec<usize> = a.iter().map(|&i| y[i]).collect();
        let (h, _) = fit(&xa, &ya)?;
        let oos_idx = labels.iter().position(|l| l == "oos");
        let mut conf: Vec<f32> = b
            .iter()
            .filter(|&&i| Some(y[i]) != oos_idx)
            .map(|&i| best_in_scope(&h.probabilities(&x_train[i]), oos_idx).1)
            .collect();
        conf.sort_by(|p, q| p.total_cmp(q));
        conf.get(((conf.len() as f32 * job.oos_quantile) as usize).min(conf.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    } else {
        0.0
    };
    let (head, _loss) = fit(x_train, &y)?;
    let fit_seconds = t1.elapsed().as_secs_f64();
    let train_accuracy = accuracy(&head, x_train, &y);

    let mut figures = Vec::new();
    let mut offset = 0;
    for (f, v) in &vals {
        let xv = &rest[offset..offset + v.len()];
        offset += v.len();
        let (mut top1, mut ins, mut ins_ok, mut oos, mut oos_ok) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for (e, x) in v.iter().zip(xv) {
            let p = head.probabilities(x);
            let oos_idx = labels.iter().position(|l| l == "oos");
            let top = p
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |t| t.0);
            let (best, conf) = best_in_scope(&p, oos_idx);
            let flagged = job.task == Task::Intent && (Some(top) == oos_idx || conf < oos_threshold);
            if e.label == "oos" {
                oos += 1;
                oos_ok += flagged as usize;
            } else {
                ins += 1;
                let ok = labels[best] == e.label;
                top1 += ok as usize;
                ins_ok += (ok && !flagged) as usize;
            }
        }
        let frac = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        figures.push(ValFigures {
            file: f.display().to_string(),
            examples: v.len(),
            accuracy: frac(top1, ins),
            in_scope_accuracy: (oos > 0).then(|| frac(ins_ok, ins)),
            oos_recall: (oos > 0).then(|| frac(oos_ok, oos)),
        });
    }

    let mut metrics = serde_json::Map::new();
    metrics.insert("train_examples".into(), train.len().into());
    metrics.insert("train_accuracy".into(), train_accuracy.into());
    metrics.insert(
        "train_files".into(),
        job.train
            .iter()
            .map(|p| serde_json::Value::from(p.display().to_string()))
            .collect(),
    );
    metrics.insert("val".into(), serde_json::to_value(&figures).unwrap_or_default());
    let name = job
        .name
        .clone()
        .or_else(|| base_manifest.as_ref().map(|m| m.name.clone()))
        .unwrap_or_else(|| "bundle".into());
    let version = job
        .version
        .clone()
        .unwrap_or_else(|| format!("{}-{}", name, &encoder.sha256[..8]));
    write_bundle_head(
        &job.out,
        &name,
        &version,
        &encoder,
        source,
        job.task,
        labels.clone(),
        &head,
        oos_threshold,
        metrics,
    )?;
    Ok(TrainReport {
        task: job.task.name(),
        labels,
        train_examples: train.len(),
        train_accuracy,
        oos_threshold,
        val: figures,
        embed_seconds,
        fit_seconds,
    })
}
