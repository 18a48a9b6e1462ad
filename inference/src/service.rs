//! The `nudge.v1.Nlu` gRPC service: validates input, tokenizes, queues on the model's batcher
//! and turns head probabilities into labels, top-k and the out-of-scope verdict.
use crate::batcher::{Answer, Batcher};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::nlu::interpret;
use crate::server::ServeError;
use arc_swap::ArcSwap;
use nudge_model::NluModel;
use nudge_proto::v1 as pb;
use pb::nlu_server::Nlu;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Request limits, checked before anything is queued.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest text accepted, in UTF-8 bytes (longer: `INVALID_ARGUMENT` naming the field).
    pub max_text_bytes: usize,
    /// Most texts in one `UnderstandBatch` call.
    pub max_batch_texts: usize,
    /// Intents returned when a request's `top_k` is 0.
    pub default_top_k: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 8192,
            max_batch_texts: 64,
            default_top_k: 3,
        }
    }
}

/// The models being served, by name. Each name's batcher (model + its batching thread) sits
/// behind an `ArcSwap`: a call takes one `Arc` and keeps it to the end, so a reload never mixes
/// versions within a call, and the old batcher answers what it has queued before its thread ends.
pub struct ServedModels {
    by_name: HashMap<String, ServedModel>,
    default: String,
}

struct ServedModel {
    batcher: ArcSwap<Batcher>,
    /// Where the serving version was loaded from (what an empty `bundle_dir` reloads).
    bundle_dir: Mutex<PathBuf>,
}

impl ServedModels {
    /// The first batcher is the default model.
    pub fn new(batchers: Vec<(PathBuf, Batcher)>) -> Result<Self, ServeError> {
        let default = batchers
            .first()
            .map(|(_, b)| b.model().name().to_string())
            .ok_or(ServeError::NoModel)?;
        let mut by_name = HashMap::new();
        for (dir, b) in batchers {
            let name = b.model().name().to_string();
            let served = ServedModel {
                batcher: ArcSwap::from_pointee(b),
                bundle_dir: Mutex::new(dir),
            };
            if by_name.insert(name.clone(), served).is_some() {
                return Err(ServeError::DuplicateModel(name));
            }
        }
        Ok(Self { by_name, default })
    }

    fn entry(&self, name: &str) -> Result<(&str, &ServedModel), RequestError> {
        let key = if name.is_empty() { self.default.as_str() } else { name };
        self.by_name
            .get_key_value(key)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| RequestError::UnknownModel(name.to_string()))
    }

    /// The names of the served models.
    pub(crate) fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Batcher>, RequestError> {
        Ok(self.entry(name)?.1.batcher.load_full())
    }

    /// The served name `name` resolves to (the default for "") and its current bundle directory.
    pub(crate) fn resolve(&self, name: &str) -> Result<(String, PathBuf), RequestError> {
        let (key, m) = self.entry(name)?;
        let dir = m
            .bundle_dir
            .lock()
            .map_err(|_| RequestError::Internal("lock poisoned".into()))?;
        Ok((key.to_string(), dir.clone()))
    }

    /// Serves `batcher` under its model's name from now on; returns the batcher it replaced.
    pub(crate) fn replace(&self, dir: PathBuf, batcher: Batcher) -> Result<Arc<Batcher>, RequestError> {
        let (_, m) = self.entry(batcher.model().name())?;
        let mut d = m
            .bundle_dir
            .lock()
            .map_err(|_| RequestError::Internal("lock poisoned".into()))?;
        let old = m.batcher.swap(Arc::new(batcher));
        *d = dir;
        Ok(old)
    }
}

/// A bundle's intent and sentiment labels (none for a head it lacks).
pub(crate) fn labels_of(manifest: &nudge_model::Manifest) -> (Vec<String>, Vec<String>) {
    let heads = &manifest.heads;
    (
        heads.intent.as_ref().map(|i| i.labels.clone()).unwrap_or_default(),
        heads.sentiment.as_ref().map(|s| s.labels.clone()).unwrap_or_default(),
    )
}

pub struct NluService {
    models: Arc<ServedModels>,
    limits: Limits,
    metrics: Metrics,
}

impl NluService {
    pub fn new(models: Arc<ServedModels>, limits: Limits, metrics: Metrics) -> Self {
        Self {
            models,
            limits,
            metrics,
        }
    }

    fn check_text(&self, field: &str, text: &str) -> Result<(), RequestError> {
        if text.trim().is_empty() {
            return Err(RequestError::invalid(field, "must not be empty or whitespace only"));
        }
        if text.len() > self.limits.max_text_bytes {
            return Err(RequestError::invalid(
                field,
                format!(
                    "{} bytes exceeds the limit of {} bytes",
                    text.len(),
                    self.limits.max_text_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The intent and sentiment labels of the model `name` ("" = the default), which the
    /// strategy's rules are checked against.
    pub(crate) fn labels(&self, name: &str) -> Result<(Vec<String>, Vec<String>), RequestError> {
        Ok(labels_of(self.models.get(name)?.model().manifest()))
    }

    pub(crate) async fn understand_texts(
        &self,
        model: &str,
        texts: &[(String, &str)],
    ) -> Result<(Arc<NluModel>, Vec<(Answer, bool, u32)>), RequestError> {
        let batcher = self.models.get(model)?;
        let m = batcher.model().clone();
        for (field, text) in texts {
            self.check_text(field, text)?;
        }
        // One text is tokenized right here (tens of µs); a batch on the blocking pool, in parallel.
        let tokenized = if texts.len() == 1 {
            vec![m.tokenize(texts[0].1)]
        } else {
            let (m2, owned): (Arc<NluModel>, Vec<String>) =
                (m.clone(), texts.iter().map(|(_, t)| t.to_string()).collect());
            tokio::task::spawn_blocking(move || {
                use rayon::prelude::*;
                owned.par_iter().map(|t| m2.tokenize(t)).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?
        };
        let mut ids = Vec::with_capacity(texts.len());
        let mut flags = Vec::with_capacity(texts.len());
        for ((field, _), t) in texts.iter().zip(tokenized) {
            let t = t.map_err(|e| RequestError::invalid(field.as_str(), e.to_string()))?;
            flags.push((t.truncated, t.ids.len() as u32));
            ids.push(t.ids);
        }
        let receivers = batcher.submit(ids)?;
        let mut answers = Vec::with_capacity(receivers.len());
        for (rx, (truncated, count)) in receivers.into_iter().zip(flags) {
            let a = rx.await.map_err(|_| RequestError::ShuttingDown)??;
            answers.push((a, truncated, count));
        }
        Ok((m, answers))
    }

    fn finish<T>(&self, method: &str, start: Instant, r: Result<T, RequestError>) -> Result<Response<T>, Status> {
        finish(&self.metrics, method, start, r)
    }
}

/// Maps the handler's result to a gRPC status and counts it (method, code, latency).
pub(crate) fn finish<T>(
    metrics: &Metrics,
    method: &str,
    start: Instant,
    r: Result<T, RequestError>,
) -> Result<Response<T>, Status> {
    let r = r.map_err(to_status);
    let code = match &r {
        Ok(_) => "OK".to_string(),
        Err(s) => format!("{:?}", s.code()),
    };
    metrics.requests.with_label_values(&[method, &code]).inc();
    metrics
        .request_seconds
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    r.map(Response::new)
}

pub fn to_status(e: RequestError) -> Status {
    match &e {
        RequestError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        RequestError::UnknownModel(_) | RequestError::NotFound(_) => Status::not_found(e.to_string()),
        RequestError::QueueFull(_) | RequestError::LogFull(_) => Status::resource_exhausted(e.to_string()),
        RequestError::ShuttingDown => Status::unavailable(e.to_string()),
        RequestError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        RequestError::Unavailable(_) => Status::unavailable(e.to_string()),
        RequestError::Internal(_) => Status::internal(e.to_string()),
    }
}

fn top_k_or(default: usize, asked: u32) -> usize {
    if asked == 0 {
        default
    } else {
        asked as usize
    }
}

#[tonic::async_trait]
impl Nlu for NluService {
    async fn understand(
        &self,
        request: Request<pb::UnderstandRequest>,
    ) -> Result<Response<pb::UnderstandResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let k = top_k_or(self.limits.default_top_k, req.top_k);
        let r = self
            .understand_texts(&req.model, &[("text".to_string(), req.text.as_str())])
            .await
            .map(|(m, mut answers)| {
                let (a, truncated, count) = answers.remove(0);
                pb::UnderstandResponse {
                    result: Some(interpret(&m, &a.output, k, req.include_embedding, truncated, count).into()),
                    model: m.name().to_string(),
                    model_version: m.version().to_string(),
                    timing: Some(timing(&a)),
                }
            });
        self.finish("Understand", start, r)
    }

    async fn understand_batch(
        &self,
        request: Request<pb::UnderstandBatchRequest>,
    ) -> Result<Response<pb::UnderstandBatchResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let k = top_k_or(self.limits.default_top_k, req.top_k);
        let r = async {
            if req.texts.is_empty() {
                return Err(RequestError::invalid("texts", "must hold at least one text"));
            }
            if req.texts.len() > self.limits.max_batch_texts {
                return Err(RequestError::invalid(
                    "texts",
                    format!(
                        "{} texts exceeds the limit of {}",
                        req.texts.len(),
                        self.limits.max_batch_texts
                    ),
                ));
            }
            let named: Vec<(String, &str)> = req
                .texts
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("texts[{i}]"), t.as_str()))
                .collect();
            let (m, answers) = self.understand_texts(&req.model, &named).await?;
            let slowest = answers
                .iter()
                .map(|(a, _, _)| a)
                .max_by_key(|a| a.queue_time + a.compute_time)
                .map(timing);
            Ok(pb::UnderstandBatchResponse {
                results: answers
                    .iter()
                    .map(|(a, t, c)| interpret(&m, &a.output, k, req.include_embedding, *t, *c).into())
                    .collect(),
                model: m.name().to_string(),
                model_version: m.version().to_string(),
                timing: slowest,
            })
        }
        .await;
        self.finish("UnderstandBatch", start, r)
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let mut models: Vec<pb::ModelInfo> = self
            .models
            .by_name
            .values()
            .map(|served| {
                let b = served.batcher.load();
                let m = b.model();
                pb::ModelInfo {
                    name: m.name().to_string(),
                    version: m.version().to_string(),
                    is_default: m.name() == self.models.default,
                    intent_labels: m.intent_spec().map(|s| s.labels.clone()).unwrap_or_default(),
                    sentiment_labels: m.sentiment_labels().map(|l| l.to_vec()).unwrap_or_default(),
                    oos_threshold: m.intent_spec().map_or(0.0, |s| s.oos_threshold),
                    embedding_dim: m.hidden_size() as u32,
                    max_tokens: m.max_tokens() as u32,
                    max_text_bytes: self.limits.max_text_bytes as u32,
                    max_batch_texts: self.limits.max_batch_texts as u32,
                    backend: m.backend_name().to_string(),
                    device: m.device(),
                }
            })
            .collect();
        models.sort_by(|a, b| b.is_default.cmp(&a.is_default).then(a.name.cmp(&b.name)));
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

fn timing(a: &Answer) -> pb::Timing {
    pb::Timing {
        queue_us: a.queue_time.as_micros() as u64,
        compute_us: a.compute_time.as_micros() as u64,
        batch_size: a.batch_size as u32,
        device: a.device.to_string(),
    }
}
