//! Training classification heads on a frozen encoder: embeddings are computed once (and cached
//! on disk, keyed by the encoder's sha256 and the text), then a softmax head is fitted with
//! AdamW on candle. Seeded: the same data and flags give the same head.
use crate::data::{index_labels, read_examples, Columns, Example, Task};
use crate::embed::FrozenEncoder;
use crate::error::TrainError;
use crate::progress::Progress;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use nudge_model::bundle::{f32_safetensors, sha256_hex, write_atomic, FORMAT};
use nudge_model::encoder::{EncoderConfig, CONFIG_FILE, ENCODER_FILES, WEIGHTS_FILE};
use nudge_model::{
    intent_verdict, ClassifierSpec, EncoderSpec, HeadsSpec, IntentSpec, LinearHead, Manifest, OOS_LABEL,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hyper-parameters of a head fitted on frozen embeddings (full-batch-ish AdamW).
#[derive(Debug, Clone, Copy)]
pub struct HeadTraining {
    /// Passes over the training embeddings.
    pub epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Seeds initialisation and shuffling.
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
pub(crate) fn fit_softmax(
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
pub(crate) fn accuracy(head: &LinearHead, x: &[Vec<f32>], y: &[usize]) -> f64 {
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

/// What the bundle gets as its encoder.
pub(crate) enum BundleEncoder<'a> {
    /// The base encoder's files, unchanged (hard-linked when possible): heads-only training.
    Link(&'a Path),
    /// New weights (fine-tuned) with the base's config and tokenizer.
    Tuned {
        /// The base encoder directory (config and tokenizer are taken from it).
        base: &'a Path,
        /// The fine-tuned weights as safetensors bytes.
        weights: &'a [u8],
    },
}

/// Writes (or updates) a bundle at `out` with `head` for `task`. With a linked (unchanged)
/// encoder the bundle's other head is kept; a fine-tuned encoder invalidates it, so it is dropped.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_bundle(
    out: &Path,
    name: &str,
    version: &str,
    spec: EncoderSpec,
    encoder: BundleEncoder<'_>,
    hidden: usize,
    task: Task,
    labels: Vec<String>,
    head: &LinearHead,
    oos_threshold: f32,
    metrics: serde_json::Map<String, serde_json::Value>,
) -> Result<Manifest, TrainError> {
    let keep_other_head = matches!(encoder, BundleEncoder::Link(_));
    let existing = Manifest::read(out).ok();
    // Everything is written into a staging directory beside `out` and swapped in at the end:
    // a failed or killed run leaves the old bundle (or none), never a half-written one.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let stage = tempfile::Builder::new()
        .prefix(".nudge-bundle-")
        .tempdir_in(parent)
        .map_err(|e| TrainError::io(parent, e))?;
    std::fs::create_dir_all(stage.path().join("encoder")).map_err(|e| TrainError::io(stage.path(), e))?;
    let mut heads: BTreeMap<String, (Vec<f32>, Vec<f32>, usize)> = BTreeMap::new();
    let mut spec_heads = HeadsSpec::default();
    let mut all_metrics = serde_json::Map::new();
    if let (Some(m), true) = (&existing, keep_other_head) {
        let other = match task {
            Task::Intent => Task::Sentiment,
            Task::Sentiment => Task::Intent,
        };
        let n = match other {
            Task::Intent => m.heads.intent.as_ref().map(|s| s.labels.len()),
            Task::Sentiment => m.heads.sentiment.as_ref().map(|s| s.labels.len()),
        };
        if let (Some(file), Some(n)) = (&m.heads.file, n) {
            let p = out.join(file);
            let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| TrainError::invalid(&p, format!("not a safetensors file: {e}")))?;
            let h = LinearHead::load(&p, &st, other.name(), n, hidden)?;
            heads.insert(other.name().into(), (h.weight().to_vec(), h.bias().to_vec(), n));
            spec_heads = m.heads.clone();
            if let Some(v) = m.metrics.get(other.name()) {
                all_metrics.insert(other.name().into(), v.clone());
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
    let st = f32_safetensors(out, &tensors)?;
    write_atomic(&stage.path().join("heads.safetensors"), &st)?;

    let (files_from, weights) = match encoder {
        BundleEncoder::Link(dir) => (dir, None),
        BundleEncoder::Tuned { base, weights } => (base, Some(weights)),
    };
    for f in ENCODER_FILES {
        let (src, dst) = (files_from.join(f), stage.path().join("encoder").join(f));
        if let (Some(w), WEIGHTS_FILE) = (weights, f) {
            write_atomic(&dst, w)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| TrainError::io(&src, e))?;
        }
    }
    spec_heads.file = Some("heads.safetensors".into());
    match task {
        Task::Intent => {
            spec_heads.intent = Some(IntentSpec {
                oos_label: labels.iter().find(|l| *l == OOS_LABEL).cloned(),
                labels,
                oos_threshold,
            })
        }
        Task::Sentiment => spec_heads.sentiment = Some(ClassifierSpec { labels }),
    }
    all_metrics.insert(task.name().into(), serde_json::Value::Object(metrics));
    let mut m = Manifest {
        format: FORMAT,
        name: name.to_string(),
        version: version.to_string(),
        encoder: EncoderSpec {
            dir: "encoder".into(),
            ..spec
        },
        heads: spec_heads,
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
            .map_err(|e| TrainError::io(out, e))?
            .filter_map(|e| e.ok())
        {
            let dst = staged.join(entry.file_name());
            if !dst.exists() {
                std::fs::rename(entry.path(), &dst).map_err(|e| TrainError::io(entry.path(), e))?;
            }
        }
        let old = parent.join(format!(".nudge-bundle-old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| TrainError::io(out, e))?;
        std::fs::rename(&staged, out).map_err(|e| TrainError::io(out, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&staged, out).map_err(|e| TrainError::io(out, e))?;
    }
    Ok(m)
}

/// Everything `nudge train` needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Which head to fit.
    pub task: Task,
    /// Labelled training files (JSONL or CSV).
    pub train: Vec<PathBuf>,
    /// Intent: files of out-of-scope examples, trained as the label `oos` (only the rows
    /// labelled `oos` when the file has any, otherwise every row).
    pub oos_train: Vec<PathBuf>,
    /// Seeded sample, spread evenly over the file's labels, from each `oos_train` file.
    pub oos_limit_per_file: Option<usize>,
    /// Labelled validation files: figures per file, and the out-of-scope threshold's data.
    pub val: Vec<PathBuf>,
    /// Which fields hold text and label.
    pub columns: Columns,
    /// An encoder directory (HF layout) or an existing bundle.
    pub base: PathBuf,
    /// The bundle directory to write (replaced through a staging directory).
    pub out: PathBuf,
    /// The bundle's name; default: the base bundle's, else `default`.
    pub name: Option<String>,
    /// The bundle's version; default: derived from the time.
    pub version: Option<String>,
    /// Text put before every input (e5's `query: `); default: the base bundle's, else none.
    pub text_prefix: Option<String>,
    /// Pooling; default: the base's, else the sentence-transformers hints, else mean.
    pub pooling: Option<nudge_model::Pooling>,
    /// The encoder's arithmetic in the new bundle; default: the base bundle's, else f32. Heads
    /// are fitted on embeddings computed in it, so they and the recorded figures match what
    /// the server will run. Fine-tuning needs f32 (the int8 layers have no backward).
    pub precision: Option<nudge_model::Precision>,
    /// Seeded sample of at most this many examples from each training file.
    pub limit_per_file: Option<usize>,
    /// Seeded sample of at most this many examples from each validation file.
    pub val_limit_per_file: Option<usize>,
    /// A label with fewer training examples is refused (it cannot be learned, only memorised).
    pub min_examples_per_label: usize,
    /// Intent without out-of-scope rows in val: share of in-scope texts allowed under the
    /// threshold (0 = no threshold). With `oos` rows in val the threshold is calibrated there.
    pub oos_quantile: f32,
    /// With `oos` rows in val: the most in-scope accuracy the threshold may cost.
    pub oos_max_in_scope_loss: f64,
    /// Where frozen-encoder embeddings are cached (keyed by encoder hash and text).
    pub cache_dir: Option<PathBuf>,
    /// Head-fitting hyper-parameters.
    pub training: HeadTraining,
    /// Fine-tune the encoder too (otherwise heads only, on a frozen encoder).
    pub fine_tune: Option<crate::finetune::FineTuning>,
}

/// Figures on one validation file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValFigures {
    /// The file's name.
    pub file: String,
    /// Rows scored.
    pub examples: usize,
    /// Top-1 accuracy on rows whose label the head knows (threshold not applied).
    pub accuracy: f64,
    /// Intent with `oos` rows in val: accuracy on in-scope rows (wrong if flagged out of scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_scope_accuracy: Option<f64>,
    /// Intent with `oos` rows in val: share of them flagged out of scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos_recall: Option<f64>,
}

/// What a training run did, printed as JSON by `nudge train`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// `intent` or `sentiment`.
    pub task: &'static str,
    /// `head` (frozen encoder) or `fine-tune`.
    pub mode: &'static str,
    /// The head's labels in output order.
    pub labels: Vec<String>,
    /// Training rows used.
    pub train_examples: usize,
    /// Accuracy on the training rows.
    pub train_accuracy: f64,
    /// The out-of-scope threshold written to the manifest (intent).
    pub oos_threshold: f32,
    /// Where the threshold came from: `val`, `train` (held-out fifth), or `none`.
    pub oos_calibrated_on: &'static str,
    /// Figures per validation file.
    pub val: Vec<ValFigures>,
    /// Time spent embedding (frozen encoder; 0 when all came from the cache).
    pub embed_seconds: f64,
    /// Time spent fitting.
    pub fit_seconds: f64,
    /// Fine-tuning: one record per epoch run.
    pub epochs: Vec<crate::finetune::EpochRecord>,
    /// Fine-tuning: the epoch whose weights were kept.
    pub best_epoch: Option<usize>,
    /// Fine-tuning: the run resumed from a checkpoint after this epoch.
    pub resumed_after_epoch: Option<usize>,
    /// The existing bundle's other head, dropped because the encoder under it changed.
    pub dropped_head: Option<&'static str>,
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

/// The data and encoder a job trains on, read and checked before any compute starts.
struct Prepared {
    base_manifest: Option<Manifest>,
    encoder_dir: PathBuf,
    spec: EncoderSpec,
    train: Vec<Example>,
    labels: Vec<String>,
    y: Vec<usize>,
    vals: Vec<(PathBuf, Vec<Example>)>,
    /// sha256 of every data file read, by path.
    data_sha256: BTreeMap<String, String>,
}

fn file_sha256(path: &Path) -> Result<String, TrainError> {
    std::fs::read(path)
        .map(|b| sha256_hex(&b))
        .map_err(|e| TrainError::io(path, e))
}

fn prepare(job: &TrainJob) -> Result<Prepared, TrainError> {
    let base_manifest = Manifest::read(&job.base).ok();
    let (encoder_dir, mut spec) = match &base_manifest {
        Some(m) => (job.base.join(&m.encoder.dir), m.encoder.clone()),
        None => {
            // A sentence-transformers directory says how it pools and how long its inputs are.
            let hints = nudge_model::encoder::SentenceTransformerHints::read(&job.base);
            (
                job.base.clone(),
                EncoderSpec {
                    dir: "encoder".into(),
                    pooling: hints.pooling.unwrap_or(nudge_model::Pooling::Mean),
                    normalize: true,
                    text_prefix: String::new(),
                    max_tokens: hints.max_seq_length,
                    precision: Default::default(),
                    source: job.base.file_name().map(|n| n.to_string_lossy().to_string()),
                },
            )
        }
    };
    // Refuse a base that is not an encoder before reading any data.
    for f in ENCODER_FILES {
        if !encoder_dir.join(f).is_file() {
            return Err(TrainError::invalid(
                &job.base,
                format!("not an encoder: no {f} (expected a Hugging Face encoder directory or a bundle)"),
            ));
        }
    }
    let config = EncoderConfig::from_file(&encoder_dir.join(CONFIG_FILE))?;
    if config.activation().is_none() {
        return Err(TrainError::invalid(
            encoder_dir.join(CONFIG_FILE),
            "unsupported hidden_act",
        ));
    }
    if let Some(p) = &job.text_prefix {
        spec.text_prefix = p.clone();
    }
    if let Some(p) = job.pooling {
        spec.pooling = p;
    }
    if let Some(p) = job.precision {
        spec.precision = p;
    }
    if job.fine_tune.is_some() && spec.precision != nudge_model::Precision::F32 {
        return Err(TrainError::invalid(
            &job.base,
            format!(
                "precision: fine-tuning needs f32, the encoder is {} (quantize the result instead)",
                spec.precision.name()
            ),
        ));
    }
    let mut data_sha256 = BTreeMap::new();
    let mut train = Vec::new();
    for (i, f) in job.train.iter().enumerate() {
        data_sha256.insert(f.display().to_string(), file_sha256(f)?);
        train.extend(sample(
            read_examples(f, &job.columns)?,
            job.limit_per_file,
            job.training.seed + i as u64,
        ));
    }
    for (i, f) in job.oos_train.iter().enumerate() {
        data_sha256.insert(f.display().to_string(), file_sha256(f)?);
        let rows = read_examples(f, &job.columns)?;
        let rows: Vec<Example> = if rows.iter().any(|e| e.label == OOS_LABEL) {
            rows.into_iter().filter(|e| e.label == OOS_LABEL).collect()
        } else {
            rows
        };
        let picked = stratified_sample(rows, job.oos_limit_per_file, job.training.seed + 500 + i as u64);
        train.extend(picked.into_iter().map(|e| Example {
            text: e.text,
            label: OOS_LABEL.into(),
        }));
    }
    let first = job.train.first().cloned().unwrap_or_default();
    let (labels, y) = index_labels(&first, &train)?;
    let mut counts = vec![0usize; labels.len()];
    y.iter().for_each(|&i| counts[i] += 1);
    if let Some(i) = counts.iter().position(|&c| c < job.min_examples_per_label) {
        return Err(TrainError::invalid(
            &first,
            format!(
                "label `{}` has {} training example(s), fewer than the {} required (add examples, drop the label, or lower --min-examples-per-label)",
                labels[i], counts[i], job.min_examples_per_label
            ),
        ));
    }
    let mut vals = Vec::new();
    for (i, f) in job.val.iter().enumerate() {
        data_sha256.insert(f.display().to_string(), file_sha256(f)?);
        let v = sample(
            read_examples(f, &job.columns)?,
            job.val_limit_per_file,
            job.training.seed + 1000 + i as u64,
        );
        for (n, e) in v.iter().enumerate() {
            let oos_row = job.task == Task::Intent && e.label == OOS_LABEL;
            if !oos_row && !labels.contains(&e.label) {
                return Err(TrainError::invalid(
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
    Ok(Prepared {
        base_manifest,
        encoder_dir,
        spec,
        train,
        labels,
        y,
        vals,
        data_sha256,
    })
}

/// The threshold that maximises (in-scope accuracy + OOS recall) / 2 over every row of `vals`
/// while in-scope accuracy stays within `max_in_scope_loss` of its value with no threshold
/// (`None` when val has no `oos` rows). A row is flagged out of scope when its top label is
/// `oos` or its best in-scope probability is under the threshold, as the server does.
pub(crate) fn calibrate_oos_threshold(
    labels: &[String],
    vals: &[(PathBuf, Vec<Example>)],
    probs: &[Vec<Vec<f32>>],
    max_in_scope_loss: f64,
) -> Option<f32> {
    let oos_idx = labels.iter().position(|l| l == OOS_LABEL);
    // (confidence, is an oos row, counts as right if kept, flagged whatever the threshold)
    let mut rows: Vec<(f32, bool, bool, bool)> = Vec::new();
    for ((_, v), p) in vals.iter().zip(probs) {
        for (e, p) in v.iter().zip(p) {
            let v = intent_verdict(p, oos_idx, 0.0);
            rows.push((
                v.confidence,
                e.label == OOS_LABEL,
                labels[v.best_in_scope] == e.label,
                v.oos_label_wins,
            ));
        }
    }
    let n_oos = rows.iter().filter(|r| r.1).count();
    let n_ins = rows.len() - n_oos;
    if n_oos == 0 || n_ins == 0 {
        return None;
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Threshold at 0: only the `oos` argmax flags.
    let mut ins_ok = rows.iter().filter(|r| !r.1 && r.2 && !r.3).count();
    let mut oos_ok = rows.iter().filter(|r| r.1 && r.3).count();
    let score = |i: usize, o: usize| i as f64 / n_ins as f64 + o as f64 / n_oos as f64;
    let (mut best_t, mut best_s) = (0f32, score(ins_ok, oos_ok));
    let floor = ins_ok as f64 / n_ins as f64 - max_in_scope_loss;
    for k in 0..rows.len() {
        // Raise the threshold just past rows[k]: it is now flagged.
        let r = rows[k];
        if !r.3 {
            if r.1 {
                oos_ok += 1;
            } else if r.2 {
                ins_ok -= 1;
            }
        }
        if k + 1 < rows.len() && rows[k + 1].0 == r.0 {
            continue;
        }
        // In-scope accuracy only falls as the threshold rises.
        if (ins_ok as f64 / n_ins as f64) < floor - 1e-12 {
            break;
        }
        let s = score(ins_ok, oos_ok);
        if s > best_s {
            best_s = s;
            best_t = match rows.get(k + 1) {
                Some(next) => (r.0 + next.0) / 2.0,
                None => r.0 + 1e-6,
            };
        }
    }
    Some(best_t)
}

/// Per-file figures from each row's probabilities with `threshold` applied.
fn val_figures(
    task: Task,
    labels: &[String],
    threshold: f32,
    vals: &[(PathBuf, Vec<Example>)],
    probs: &[Vec<Vec<f32>>],
) -> Vec<ValFigures> {
    let oos_idx = labels.iter().position(|l| l == OOS_LABEL);
    let mut figures = Vec::new();
    for ((f, v), pv) in vals.iter().zip(probs) {
        let (mut top1, mut ins, mut ins_ok, mut oos, mut oos_ok) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for (e, p) in v.iter().zip(pv) {
            let v = intent_verdict(p, oos_idx, threshold);
            let best = v.best_in_scope;
            let flagged = task == Task::Intent && v.out_of_scope;
            if e.label == OOS_LABEL && task == Task::Intent {
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
    figures
}

/// Runs a whole job: read and check the data, embed or fine-tune, fit, calibrate the
/// out-of-scope threshold, score the val files, write the bundle.
pub fn run(job: &TrainJob, progress: &dyn Progress) -> Result<TrainReport, TrainError> {
    let prep = prepare(job)?;
    let labels = prep.labels.clone();
    let name = job
        .name
        .clone()
        .or_else(|| prep.base_manifest.as_ref().map(|m| m.name.clone()))
        .unwrap_or_else(|| "bundle".into());
    let mut report = TrainReport {
        task: job.task.name(),
        mode: if job.fine_tune.is_some() { "fine-tune" } else { "heads" },
        labels: labels.clone(),
        train_examples: prep.train.len(),
        train_accuracy: 0.0,
        oos_threshold: 0.0,
        oos_calibrated_on: "none",
        val: Vec::new(),
        embed_seconds: 0.0,
        fit_seconds: 0.0,
        epochs: Vec::new(),
        best_epoch: None,
        resumed_after_epoch: None,
        dropped_head: None,
    };
    let t0 = std::time::Instant::now();
    let (head, val_probs, hidden, tuned_weights, encoder_sha) = match &job.fine_tune {
        Some(ft) => {
            let data = crate::finetune::FineTuneData {
                task: job.task,
                labels: &labels,
                train: &prep.train,
                y: &prep.y,
                vals: &prep.vals,
            };
            let r = crate::finetune::fine_tune(&prep.encoder_dir, &prep.spec, &data, ft, progress)?;
            report.fit_seconds = t0.elapsed().as_secs_f64();
            report.train_accuracy = r.train_accuracy;
            report.epochs = r.history;
            report.best_epoch = Some(r.best_epoch);
            report.resumed_after_epoch = r.resumed_after_epoch;
            let sha = sha256_hex(&r.encoder_weights);
            let hidden = r.head.hidden();
            (r.head, r.val_probs, hidden, Some(r.encoder_weights), sha)
        }
        None => {
            let encoder = FrozenEncoder::load(&prep.encoder_dir, prep.spec.clone())?;
            let mut texts: Vec<&str> = prep.train.iter().map(|e| e.text.as_str()).collect();
            for (_, v) in &prep.vals {
                texts.extend(v.iter().map(|e| e.text.as_str()));
            }
            let embs = encoder.embed_all(&texts, job.cache_dir.as_deref(), progress)?;
            report.embed_seconds = t0.elapsed().as_secs_f64();
            let (x_train, rest) = embs.split_at(prep.train.len());
            let t1 = std::time::Instant::now();
            let fit =
                |x: &[Vec<f32>], y: &[usize]| fit_softmax(x, y, labels.len(), job.training).map_err(TrainError::from);
            let val_has_oos = prep.vals.iter().any(|(_, v)| v.iter().any(|e| e.label == OOS_LABEL));
            // Without out-of-scope rows in val: fit on 80% of train, take the quantile of the
            // held-out 20%'s top probability, so that share of in-scope texts would be flagged.
            if job.task == Task::Intent && job.oos_quantile > 0.0 && !val_has_oos {
                let mut idx: Vec<usize> = (0..x_train.len()).collect();
                idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(job.training.seed ^ 0x5eed));
                let cut = idx.len() * 4 / 5;
                let (a, b) = idx.split_at(cut);
                let xa: Vec<Vec<f32>> = a.iter().map(|&i| x_train[i].clone()).collect();
                let ya: Vec<usize> = a.iter().map(|&i| prep.y[i]).collect();
                let (h, _) = fit(&xa, &ya)?;
                let oos_idx = labels.iter().position(|l| l == OOS_LABEL);
                let mut conf: Vec<f32> = b
                    .iter()
                    .filter(|&&i| Some(prep.y[i]) != oos_idx)
                    .map(|&i| intent_verdict(&h.probabilities(&x_train[i]), oos_idx, 0.0).confidence)
                    .collect();
                conf.sort_by(|p, q| p.total_cmp(q));
                report.oos_threshold = conf
                    .get(((conf.len() as f32 * job.oos_quantile) as usize).min(conf.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0.0);
                report.oos_calibrated_on = "train";
            }
            let (head, _loss) = fit(x_train, &prep.y)?;
            report.fit_seconds = t1.elapsed().as_secs_f64();
            report.train_accuracy = accuracy(&head, x_train, &prep.y);
            let mut probs = Vec::new();
            let mut offset = 0;
            for (_, v) in &prep.vals {
                probs.push(
                    rest[offset..offset + v.len()]
                        .iter()
                        .map(|x| head.probabilities(x))
                        .collect::<Vec<_>>(),
                );
                offset += v.len();
            }
            (head, probs, encoder.hidden_size(), None, encoder.sha256.clone())
        }
    };
    if job.task == Task::Intent {
        if let Some(t) = calibrate_oos_threshold(&labels, &prep.vals, &val_probs, job.oos_max_in_scope_loss) {
            report.oos_threshold = t;
            report.oos_calibrated_on = "val";
        }
    }
    report.val = val_figures(job.task, &labels, report.oos_threshold, &prep.vals, &val_probs);

    let mut metrics = serde_json::Map::new();
    metrics.insert("mode".into(), report.mode.into());
    metrics.insert("train_examples".into(), prep.train.len().into());
    metrics.insert("train_accuracy".into(), report.train_accuracy.into());
    metrics.insert(
        "train_files".into(),
        job.train
            .iter()
            .map(|p| serde_json::Value::from(p.display().to_string()))
            .collect(),
    );
    if let Some(l) = &job.columns.lang {
        metrics.insert("lang".into(), l.as_str().into());
    }
    metrics.insert(
        "data_sha256".into(),
        serde_json::to_value(&prep.data_sha256).unwrap_or_default(),
    );
    metrics.insert("oos_calibrated_on".into(), report.oos_calibrated_on.into());
    metrics.insert("val".into(), serde_json::to_value(&report.val).unwrap_or_default());
    if let Some(ft) = &job.fine_tune {
        metrics.insert("fine_tuning".into(), serde_json::to_value(ft).unwrap_or_default());
        metrics.insert("best_epoch".into(), report.best_epoch.into());
        // Wall times differ run to run; they stay out of the bundle so a run is reproducible.
        let epochs: Vec<serde_json::Value> = report
            .epochs
            .iter()
            .map(|e| serde_json::json!({"epoch": e.epoch, "train_loss": e.train_loss, "val_accuracy": e.val_accuracy}))
            .collect();
        metrics.insert("epochs".into(), epochs.into());
    }
    let version = job
        .version
        .clone()
        .unwrap_or_else(|| format!("{}-{}", name, &encoder_sha[..8]));
    let (spec, files) = match &tuned_weights {
        Some(w) => (
            EncoderSpec {
                source: None,
                // Serve texts as the encoder was trained on them (and no slower).
                max_tokens: job
                    .fine_tune
                    .as_ref()
                    .map(|ft| prep.spec.max_tokens.map_or(ft.max_tokens, |m| m.min(ft.max_tokens))),
                ..prep.spec.clone()
            },
            BundleEncoder::Tuned {
                base: &prep.encoder_dir,
                weights: w,
            },
        ),
        None => (prep.spec.clone(), BundleEncoder::Link(&prep.encoder_dir)),
    };
    if tuned_weights.is_some() {
        if let Ok(m) = Manifest::read(&job.out) {
            let other = match job.task {
                Task::Intent => m.heads.sentiment.as_ref().map(|_| "sentiment"),
                Task::Sentiment => m.heads.intent.as_ref().map(|_| "intent"),
            };
            report.dropped_head = other;
        }
    }
    write_bundle(
        &job.out,
        &name,
        &version,
        spec,
        files,
        hidden,
        job.task,
        labels,
        &head,
        report.oos_threshold,
        metrics,
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oos_threshold_maximises_in_scope_accuracy_plus_oos_recall() {
        let labels: Vec<String> = ["a", "b", OOS_LABEL].iter().map(|s| s.to_string()).collect();
        let row = |l: &str| Example {
            text: String::new(),
            label: l.into(),
        };
        let vals = vec![(
            PathBuf::from("val"),
            vec![
                row("a"),
                row("a"),
                row("b"),
                row(OOS_LABEL),
                row(OOS_LABEL),
                row(OOS_LABEL),
            ],
        )];
        let probs = vec![vec![
            vec![0.9, 0.05, 0.05], // right, confident
            vec![0.6, 0.3, 0.1],   // right
            vec![0.5, 0.4, 0.1],   // wrong label
            vec![0.45, 0.35, 0.2], // oos, caught only by a threshold above 0.45
            vec![0.2, 0.2, 0.6],   // oos, argmax says so
            vec![0.7, 0.2, 0.1],   // oos, confidently wrong
        ]];
        // By hand: threshold 0 gives 2/3 + 1/3; just above 0.45 gives 2/3 + 2/3, the best, and
        // the first such threshold is the midpoint to the next confidence (0.5).
        let t = calibrate_oos_threshold(&labels, &vals, &probs, 1.0).unwrap();
        assert!((t - 0.475).abs() < 1e-6, "{t}");
        let f = val_figures(Task::Intent, &labels, t, &vals, &probs);
        assert!((f[0].in_scope_accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((f[0].oos_recall.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((f[0].accuracy - 2.0 / 3.0).abs() < 1e-9);
        // Capping the in-scope loss at 0.2 forbids dropping to 1/3: the best allowed stays 0.475
        // (in-scope accuracy 2/3 is no loss); a cap of 0 still allows it for the same reason.
        assert!((calibrate_oos_threshold(&labels, &vals, &probs, 0.0).unwrap() - 0.475).abs() < 1e-6);
        // No oos rows in val: nothing to calibrate on.
        let in_scope = vec![(PathBuf::from("val"), vec![row("a")])];
        assert_eq!(
            calibrate_oos_threshold(&labels, &in_scope, &[vec![vec![0.9, 0.05, 0.05]]], 1.0),
            None
        );
    }
}
