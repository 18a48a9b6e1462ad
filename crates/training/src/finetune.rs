//! Full fine-tuning of the encoder together with one classification head, on candle autograd.
//!
//! AdamW with decoupled weight decay (none on biases and layer norms), linear warm-up then
//! linear decay, global gradient-norm clipping, early stopping on validation accuracy, and a
//! checkpoint after every epoch from which a killed run resumes when the same command is run
//! again. No dropout and a batch order drawn from `(seed, epoch)`, so a run is a pure function
//! of its inputs: a resumed run ends with the same bytes as an uninterrupted one.
//!
//! The optimiser is written here rather than taken from candle-nn because its state (moments,
//! step) must be saved with the checkpoint, and because one fused multi-threaded pass per
//! parameter is several times faster than candle's chain of single-threaded tensor ops.
use crate::data::{Example, Task};
use crate::error::TrainError;
use crate::progress::Progress;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use nudge_model::batching::sorted_batches;
use nudge_model::bundle::{f32_safetensors, f32_safetensors_with_metadata, sha256_hex, write_atomic};
use nudge_model::encoder::{read_weights, BertEncoder, EncoderConfig, NamedWeights, TOKENIZER_FILE};
use nudge_model::{EncoderFiles, EncoderSpec, LinearHead};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Hyper-parameters of a fine-tuning run (the defaults are the usual BERT recipe).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FineTuning {
    /// Most epochs; early stopping may end sooner.
    pub epochs: usize,
    /// Texts per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate of the encoder.
    pub lr: f64,
    /// Peak learning rate of the freshly initialised head.
    pub head_lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Share of all steps spent warming the learning rate up from zero.
    pub warmup: f64,
    /// Gradients are rescaled so their global L2 norm is at most this (0 = no clipping).
    pub max_grad_norm: f64,
    /// Stop after this many epochs without a better validation accuracy (0 = never).
    pub patience: usize,
    /// Keep the word-embedding matrix fixed (for multilingual vocabularies it is most weights).
    pub freeze_embeddings: bool,
    /// Train only the top this-many transformer layers (and the head); `None` trains all. The
    /// frozen layers' output is computed once per text and kept, so each step runs only the top.
    pub train_layers: Option<usize>,
    /// Tokens per text while training (longer texts are truncated).
    pub max_tokens: usize,
    /// Seeds the head's initialisation and the shuffling: same seed, same run.
    pub seed: u64,
    /// Checkpoints go to `<checkpoint_dir>/<job fingerprint>/`, removed when the run ends.
    #[serde(skip)]
    pub checkpoint_dir: PathBuf,
}

impl Default for FineTuning {
    fn default() -> Self {
        Self {
            epochs: 4,
            batch_size: 32,
            lr: 5e-5,
            head_lr: 2e-3,
            weight_decay: 0.01,
            warmup: 0.06,
            max_grad_norm: 1.0,
            patience: 1,
            freeze_embeddings: true,
            train_layers: None,
            max_tokens: 128,
            seed: 17,
            checkpoint_dir: PathBuf::from("models/cache/checkpoints"),
        }
    }
}

/// One epoch as the run saw it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's steps.
    pub train_loss: f64,
    /// Share of training texts predicted right during the epoch.
    pub train_accuracy: f64,
    /// Accuracy on the validation files after the epoch, if there are any.
    pub val_accuracy: Option<f64>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

pub struct FineTuned {
    /// Every encoder weight by canonical name (safetensors bytes, f32).
    pub encoder_weights: Vec<u8>,
    pub head: LinearHead,
    /// Probabilities for every row of every val file, in file order.
    pub val_probs: Vec<Vec<Vec<f32>>>,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub resumed_after_epoch: Option<usize>,
    pub train_accuracy: f64,
}

/// What the fine-tuning needs to know about the data.
pub struct FineTuneData<'a> {
    pub task: Task,
    pub labels: &'a [String],
    pub train: &'a [Example],
    pub y: &'a [usize],
    pub vals: &'a [(PathBuf, Vec<Example>)],
}

#[derive(Clone, Copy, PartialEq)]
enum Group {
    Encoder,
    Head,
}

struct Param {
    name: String,
    var: Var,
    group: Group,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// Saved each epoch inside the checkpoint's safetensors metadata.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RunState {
    fingerprint: String,
    epochs_done: usize,
    step: usize,
    best_metric: Option<f64>,
    best_epoch: usize,
    bad_epochs: usize,
    history: Vec<EpochRecord>,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// A model input: token ids, or the frozen layers' output for the text's real tokens.
enum Inputs {
    Tokens(Vec<Vec<u32>>),
    /// (tokens, `tokens × hidden` states)
    States(Vec<(usize, Vec<f32>)>),
}

impl Inputs {
    fn len(&self, i: usize) -> usize {
        match self {
            Inputs::Tokens(t) => t[i].len(),
            Inputs::States(s) => s[i].0,
        }
    }

    fn count(&self) -> usize {
        match self {
            Inputs::Tokens(t) => t.len(),
            Inputs::States(s) => s.len(),
        }
    }
}

struct Model {
    config: EncoderConfig,
    origin: PathBuf,
    spec: EncoderSpec,
    frozen: HashMap<String, Tensor>,
    params: Vec<Param>,
    /// Logit scale for unit-length embeddings (folded into the saved head).
    scale: f64,
    /// First trained layer; the ones below it are frozen and precomputed.
    first_trained: usize,
}

impl Model {
    fn encoder(&self, detach: bool) -> Result<BertEncoder, TrainError> {
        let mut tensors = self.frozen.clone();
        for p in self.params.iter().filter(|p| p.group == Group::Encoder) {
            let t = if detach {
                p.var.as_tensor().detach()
            } else {
                p.var.as_tensor().clone()
            };
            tensors.insert(p.name.clone(), t);
        }
        let w = NamedWeights {
            origin: self.origin.clone(),
            tensors,
        };
        Ok(BertEncoder::from_weights(
            self.config.clone(),
            &w,
            &self.origin,
            &Device::Cpu,
        )?)
    }

    fn head(&self, detach: bool) -> (Tensor, Tensor) {
        let get = |n: &str| {
            let t = self
                .params
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.var.as_tensor().clone())
                .expect("head parameters are created with the model");
            if detach {
                t.detach()
            } else {
                t
            }
        };
        (get("head.weight"), get("head.bias"))
    }

    fn logits(&self, enc: &BertEncoder, inputs: &Inputs, batch: &[usize], detach: bool) -> candle_core::Result<Tensor> {
        let (x, mask) = match inputs {
            Inputs::Tokens(t) => {
                let seqs: Vec<&[u32]> = batch.iter().map(|&i| t[i].as_slice()).collect();
                enc.embeddings(&seqs)?
            }
            Inputs::States(s) => {
                let h = self.config.hidden_size;
                let l = batch.iter().map(|&i| s[i].0).max().unwrap_or(1).max(1);
                let mut x = vec![0f32; batch.len() * l * h];
                let mut mask = vec![0f32; batch.len() * l];
                for (r, &i) in batch.iter().enumerate() {
                    let (n, v) = &s[i];
                    x[r * l * h..r * l * h + n * h].copy_from_slice(v);
                    mask[r * l..r * l + n].iter_mut().for_each(|m| *m = 1.0);
                }
                (
                    Tensor::from_vec(x, (batch.len(), l, h), &Device::Cpu)?,
                    Tensor::from_vec(mask, (batch.len(), l), &Device::Cpu)?,
                )
            }
        };
        let x = enc.layers(x, &mask, self.first_trained..enc.num_layers())?;
        let pooled = BertEncoder::pool(&x, &mask, self.spec.pooling)?;
        let x = if self.spec.normalize {
            let norm = (pooled.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        let (w, b) = self.head(detach);
        x.matmul(&w.t()?)?.broadcast_add(&b)? * self.scale
    }

    /// With frozen bottom layers, their output for every text (computed once, no graph).
    fn inputs(&self, ids: Vec<Vec<u32>>) -> Result<Inputs, TrainError> {
        if self.first_trained == 0 {
            return Ok(Inputs::Tokens(ids));
        }
        let enc = self.encoder(true)?;
        let h = self.config.hidden_size;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out = vec![(0, Vec::new()); ids.len()];
        for chunk in sorted_batches(&lengths, 64, usize::MAX) {
            let chunk = chunk.as_slice();
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, mask) = enc.embeddings(&seqs)?;
            let x = enc.layers(x, &mask, 0..self.first_trained)?;
            for (r, &i) in chunk.iter().enumerate() {
                let n = ids[i].len();
                let v = x.get(r)?.narrow(0, 0, n)?.flatten_all()?.to_vec1::<f32>()?;
                debug_assert_eq!(v.len(), n * h);
                out[i] = (n, v);
            }
        }
        Ok(Inputs::States(out))
    }

    /// Softmax probabilities for every input, computed in length-sorted batches without a graph.
    fn probabilities(&self, inputs: &Inputs, batch: usize) -> Result<Vec<Vec<f32>>, TrainError> {
        let enc = self.encoder(true)?;
        let lengths: Vec<usize> = (0..inputs.count()).map(|i| inputs.len(i)).collect();
        let mut out = vec![Vec::new(); inputs.count()];
        for chunk in sorted_batches(&lengths, batch.max(1), usize::MAX) {
            let chunk = chunk.as_slice();
            let p = candle_nn::ops::softmax_last_dim(&self.logits(&enc, inputs, chunk, true)?)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(p) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    fn values(&self) -> candle_core::Result<Vec<Vec<f32>>> {
        self.params
            .iter()
            .map(|p| p.var.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect()
    }

    fn set_values(&self, values: &[Vec<f32>]) -> candle_core::Result<()> {
        for (p, v) in self.params.iter().zip(values) {
            p.var.set(&Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }
}

/// AdamW over all parameters with the gradient clipped to `max_norm`. Returns the norm before
/// clipping.
fn adamw_step(
    params: &mut [Param],
    grads: &GradStore,
    cfg: &FineTuning,
    lr_factor: f64,
    t: usize,
) -> candle_core::Result<f64> {
    let gs: Vec<Option<Vec<f32>>> = params
        .iter()
        .map(|p| grads.get(&p.var).map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose())
        .collect::<candle_core::Result<_>>()?;
    // Fixed chunks summed in order: rayon's adaptive splitting would make the sum, and so the
    // whole run, depend on thread timing.
    let norm = gs
        .iter()
        .flatten()
        .flat_map(|g| {
            g.par_chunks(16_384)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect::<Vec<f64>>()
        })
        .sum::<f64>()
        .sqrt();
    let clip = if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm {
        (cfg.max_grad_norm / norm) as f32
    } else {
        1.0
    };
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = 1.0 - b2.powi(t as i32);
    for (p, g) in params.iter_mut().zip(gs) {
        let Some(g) = g else { continue };
        let lr = (match p.group {
            Group::Encoder => cfg.lr,
            Group::Head => cfg.head_lr,
        } * lr_factor) as f32;
        let decay = if p.decay {
            1.0 - lr * cfg.weight_decay as f32
        } else {
            1.0
        };
        let mut theta = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        const C: usize = 16_384;
        theta
            .par_chunks_mut(C)
            .zip(p.m.par_chunks_mut(C))
            .zip(p.v.par_chunks_mut(C))
            .zip(g.par_chunks(C))
            .for_each(|(((th, m), v), g)| {
                for i in 0..th.len() {
                    let g = g[i] * clip;
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    let mh = m[i] / bc1;
                    let vh = v[i] / bc2;
                    th[i] = th[i] * decay - lr * mh / (vh.sqrt() + eps);
                }
            });
        p.var.set(&Tensor::from_vec(theta, p.var.shape(), &Device::Cpu)?)?;
    }
    Ok(norm)
}

/// Learning-rate multiplier: linear warm-up over `warmup` steps, then linear decay to zero.
fn lr_factor(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        (step + 1) as f64 / warmup as f64
    } else {
        ((total - step) as f64 / (total - warmup).max(1) as f64).max(0.0)
    }
}

/// The epoch's batches: a seeded shuffle, then length-sorted within windows of 16 batches (so a
/// batch pads little) and the batches shuffled again.
fn epoch_batches(lengths: &[usize], batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks(batch * 16) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(batch).map(|c| c.to_vec()));
    }
    batches.shuffle(&mut rng);
    batches
}

fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm")
}

fn fingerprint(parts: &[&[u8]]) -> String {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(sha256_hex(p).as_bytes());
    }
    sha256_hex(&all)
}

fn save_checkpoint(dir: &Path, model: &Model, best: Option<&BestParams>, state: &RunState) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let path = dir.join(CHECKPOINT);
    let values = model.values()?;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (p, v) in model.params.iter().zip(values) {
        let shape = p.var.dims().to_vec();
        tensors.insert(format!("param.{}", p.name), (shape.clone(), v));
        tensors.insert(format!("m.{}", p.name), (shape.clone(), p.m.clone()));
        tensors.insert(format!("v.{}", p.name), (shape.clone(), p.v.clone()));
        if let Some(b) = best {
            if let Some(i) = model.params.iter().position(|q| q.name == p.name) {
                tensors.insert(format!("best.{}", p.name), (shape, b[i].clone()));
            }
        }
    }
    let meta = serde_json::to_string(state).map_err(|e| TrainError::invalid(&path, e.to_string()))?;
    let bytes = f32_safetensors_with_metadata(&path, &tensors, Some([("state".to_string(), meta)].into()))?;
    Ok(write_atomic(&path, &bytes)?)
}

/// The best epoch's parameter values, one flat vector per trainable tensor.
type BestParams = Vec<Vec<f32>>;

/// Restores parameters, moments and best values from a checkpoint of the same job.
fn load_checkpoint(
    dir: &Path,
    fp: &str,
    model: &mut Model,
) -> Result<Option<(RunState, Option<BestParams>)>, TrainError> {
    let path = dir.join(CHECKPOINT);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::invalid(&path, format!("not a checkpoint: {e}")))?;
    let state: RunState = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("state"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| TrainError::invalid(&path, "checkpoint has no run state"))?;
    if state.fingerprint != fp {
        return Ok(None);
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TrainError::invalid(&path, e.to_string()))?;
    let read = |name: &str, len: usize| -> Result<Vec<f32>, TrainError> {
        let v = st
            .tensor(name)
            .map_err(|_| TrainError::invalid(&path, format!("checkpoint lacks `{name}`")))?;
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if vals.len() != len {
            return Err(TrainError::invalid(&path, format!("`{name}` has the wrong size")));
        }
        Ok(vals)
    };
    let mut values = Vec::new();
    let mut best = Vec::new();
    let has_best = state.best_metric.is_some();
    for p in model.params.iter_mut() {
        let n = p.var.elem_count();
        values.push(read(&format!("param.{}", p.name), n)?);
        p.m = read(&format!("m.{}", p.name), n)?;
        p.v = read(&format!("v.{}", p.name), n)?;
        if has_best {
            best.push(read(&format!("best.{}", p.name), n)?);
        }
    }
    model.set_values(&values)?;
    Ok(Some((state, has_best.then_some(best))))
}

fn val_accuracy(labels: &[String], vals: &[(PathBuf, Vec<Example>)], probs: &[Vec<Vec<f32>>]) -> Option<f64> {
    let (mut n, mut ok) = (0usize, 0usize);
    for ((_, rows), p) in vals.iter().zip(probs) {
        for (e, p) in rows.iter().zip(p) {
            let Some(t) = labels.iter().position(|l| *l == e.label) else {
                continue;
            };
            n += 1;
            let top = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|x| x.0);
            ok += (top == Some(t)) as usize;
        }
    }
    (n > 0).then(|| ok as f64 / n as f64)
}

/// Fine-tunes the encoder in `encoder_dir` with a fresh head for `data`.
pub fn fine_tune(
    encoder_dir: &Path,
    spec: &EncoderSpec,
    data: &FineTuneData<'_>,
    cfg: &FineTuning,
    progress: &dyn Progress,
) -> Result<FineTuned, TrainError> {
    if cfg.batch_size == 0 || cfg.epochs == 0 || cfg.max_tokens < 3 {
        return Err(TrainError::invalid(
            encoder_dir,
            "epochs and batch size must be positive, max tokens at least 3",
        ));
    }
    let EncoderFiles {
        config,
        tokenizer,
        tokenizer_bytes: tok_bytes,
        weights_path: w_path,
        weights: w_bytes,
    } = EncoderFiles::open_dir(encoder_dir, spec, Some(cfg.max_tokens))?;
    let tok_path = encoder_dir.join(TOKENIZER_FILE);
    let weights = read_weights(&config, &w_path, &w_bytes, &Device::Cpu)?;
    let tokenize = |rows: &[Example]| -> Result<Vec<Vec<u32>>, TrainError> {
        rows.iter()
            .map(|e| {
                tokenizer
                    .tokenize(&e.text)
                    .map(|t| t.ids)
                    .map_err(|err| TrainError::invalid(&tok_path, format!("tokenizing {:?}: {err}", e.text)))
            })
            .collect()
    };
    let train_ids = tokenize(data.train)?;
    let val_ids: Vec<Vec<Vec<u32>>> = data.vals.iter().map(|(_, v)| tokenize(v)).collect::<Result<_, _>>()?;

    let h = config.hidden_size;
    let k = data.labels.len();
    let n_layers = config.num_hidden_layers;
    let first_trained = n_layers - cfg.train_layers.unwrap_or(n_layers).min(n_layers);
    let trained = |name: &str| match name.strip_prefix("encoder.layer.") {
        Some(rest) => rest
            .split('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= first_trained),
        None => first_trained == 0 && !(cfg.freeze_embeddings && name == "embeddings.word_embeddings.weight"),
    };
    let mut frozen = HashMap::new();
    let mut params = Vec::new();
    for (name, t) in weights {
        if !trained(&name) {
            frozen.insert(name, t);
            continue;
        }
        let n = t.elem_count();
        params.push(Param {
            decay: !no_decay(&name),
            name,
            var: Var::from_tensor(&t)?,
            group: Group::Encoder,
            m: vec![0.0; n],
            v: vec![0.0; n],
        });
    }
    for (name, shape, decay) in [("head.weight", vec![k, h], true), ("head.bias", vec![k], false)] {
        let n = shape.iter().product();
        params.push(Param {
            name: name.into(),
            var: Var::zeros(shape, candle_core::DType::F32, &Device::Cpu)?,
            group: Group::Head,
            decay,
            m: vec![0.0; n],
            v: vec![0.0; n],
        });
    }
    let mut model = Model {
        config,
        origin: w_path.clone(),
        spec: spec.clone(),
        frozen,
        params,
        scale: if spec.normalize { 20.0 } else { 1.0 },
        first_trained,
    };

    // Everything that determines the result, so a checkpoint is only ever resumed by its own job.
    let rows = |v: &[Example]| -> Vec<u8> {
        v.iter()
            .flat_map(|e| [e.text.as_bytes(), b"\x1f", e.label.as_bytes(), b"\x1e"].concat())
            .collect()
    };
    let val_rows: Vec<u8> = data.vals.iter().flat_map(|(_, v)| rows(v)).collect();
    let job =
        serde_json::json!({"cfg": cfg, "spec": spec, "labels": data.labels, "task": data.task.name()}).to_string();
    let fp = fingerprint(&[&w_bytes, &tok_bytes, &rows(data.train), &val_rows, job.as_bytes()]);
    let ckpt_dir = cfg.checkpoint_dir.join(&fp[..16]);

    let steps_per_epoch = data.train.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = ((total_steps as f64 * cfg.warmup).ceil() as usize).min(total_steps);
    let (mut state, mut best) = match load_checkpoint(&ckpt_dir, &fp, &mut model)? {
        Some((s, b)) => (s, b),
        None => (
            RunState {
                fingerprint: fp.clone(),
                epochs_done: 0,
                step: 0,
                best_metric: None,
                best_epoch: 0,
                bad_epochs: 0,
                history: Vec::new(),
            },
            None,
        ),
    };
    let resumed_after_epoch = (state.epochs_done > 0).then_some(state.epochs_done);
    let lengths: Vec<usize> = train_ids.iter().map(|s| s.len()).collect();
    // Frozen layers' outputs come from the base weights, which a resumed run has not changed.
    let train_inputs = model.inputs(train_ids)?;
    let val_inputs: Vec<Inputs> = val_ids.into_iter().map(|v| model.inputs(v)).collect::<Result<_, _>>()?;
    let stopped = |s: &RunState| cfg.patience > 0 && s.bad_epochs >= cfg.patience;
    progress.start("training", (total_steps - state.step) as u64);
    while state.epochs_done < cfg.epochs && !stopped(&state) {
        let epoch = state.epochs_done;
        let t0 = std::time::Instant::now();
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for batch in epoch_batches(&lengths, cfg.batch_size, cfg.seed, epoch) {
            let targets: Vec<u32> = batch.iter().map(|&i| data.y[i] as u32).collect();
            let targets = Tensor::from_vec(targets, batch.len(), &Device::Cpu)?;
            let enc = model.encoder(false)?;
            let logits = model.logits(&enc, &train_inputs, &batch, false)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let grads = loss.backward()?;
            state.step += 1;
            adamw_step(
                &mut model.params,
                &grads,
                cfg,
                lr_factor(state.step - 1, warmup, total_steps),
                state.step,
            )?;
            let l = loss.to_scalar::<f32>()? as f64;
            loss_sum += l * batch.len() as f64;
            let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
            correct += pred
                .iter()
                .zip(&batch)
                .filter(|(p, &i)| **p as usize == data.y[i])
                .count();
            progress.advance(1);
            progress.status(&format!("epoch {}/{} loss {l:.3}", epoch + 1, cfg.epochs));
        }
        let val_probs: Vec<Vec<Vec<f32>>> = val_inputs
            .iter()
            .map(|v| model.probabilities(v, 64))
            .collect::<Result<_, _>>()?;
        let val_acc = val_accuracy(data.labels, data.vals, &val_probs);
        state.history.push(EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / data.train.len() as f64,
            train_accuracy: correct as f64 / data.train.len() as f64,
            val_accuracy: val_acc,
            seconds: t0.elapsed().as_secs_f64(),
        });
        state.epochs_done += 1;
        // Without val the last epoch is the best one.
        let metric = val_acc.unwrap_or(state.epochs_done as f64);
        if state.best_metric.is_none_or(|b| metric > b) {
            state.best_metric = Some(metric);
            state.best_epoch = state.epochs_done;
            state.bad_epochs = 0;
            best = Some(model.values()?);
        } else {
            state.bad_epochs += 1;
        }
        save_checkpoint(&ckpt_dir, &model, best.as_ref(), &state)?;
        if let Some(a) = val_acc {
            let line = format!(
                "epoch {}: train loss {:.4}, val accuracy {:.2}%",
                epoch + 1,
                state.history[epoch].train_loss,
                100.0 * a
            );
            progress.line(&line);
        }
    }
    if let Some(b) = &best {
        model.set_values(b)?;
    }
    let val_probs: Vec<Vec<Vec<f32>>> = val_inputs
        .iter()
        .map(|v| model.probabilities(v, 64))
        .collect::<Result<_, _>>()?;

    // The served model: every encoder weight by canonical name, the head with the scale folded in.
    let mut out: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (n, t) in &model.frozen {
        out.insert(n.clone(), (t.dims().to_vec(), t.flatten_all()?.to_vec1()?));
    }
    let values = model.values()?;
    for (p, v) in model.params.iter().zip(&values) {
        if p.group == Group::Encoder {
            out.insert(p.name.clone(), (p.var.dims().to_vec(), v.clone()));
        }
    }
    let encoder_weights = f32_safetensors(&w_path, &out)?;
    let (w, b) = model.head(true);
    let head = LinearHead::new(
        (w * model.scale)?.flatten_all()?.to_vec1()?,
        (b * model.scale)?.to_vec1()?,
        h,
    );
    let train_accuracy = state
        .history
        .get(state.best_epoch.saturating_sub(1))
        .map_or(0.0, |r| r.train_accuracy);
    let _ = std::fs::remove_dir_all(&ckpt_dir);
    Ok(FineTuned {
        encoder_weights,
        head,
        val_probs,
        history: state.history,
        best_epoch: state.best_epoch,
        resumed_after_epoch,
        train_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let f: Vec<f64> = (0..10).map(|s| lr_factor(s, 2, 10)).collect();
        assert_eq!(f[0], 0.5);
        assert_eq!(f[1], 1.0);
        assert_eq!(f[2], 1.0);
        assert!((f[6] - 0.5).abs() < 1e-12);
        assert!(f[9] > 0.0 && f[9] < 0.2);
        assert!(f.windows(2).skip(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn batches_cover_every_example_once_and_depend_on_the_epoch() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 50).collect();
        let a = epoch_batches(&lengths, 32, 3, 0);
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_batches(&lengths, 32, 3, 0));
        assert_ne!(a, epoch_batches(&lengths, 32, 3, 1));
    }
}
