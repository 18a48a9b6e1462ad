//! `nudge.v1.ModelAdmin`: replacing a served NLU model (a new fine-tune, new heads, a new
//! threshold) without a restart. The new bundle is loaded and checked off the async runtime
//! while the old version keeps answering; only a bundle that passes every check is swapped in.
use crate::batcher::{Batcher, BatcherConfig};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::model::NluModel;
use crate::service::{finish, ServedModels};
use nudge_proto::v1 as pb;
use pb::model_admin_server::ModelAdmin;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct ModelAdminService {
    models: Arc<ServedModels>,
    batcher: BatcherConfig,
    metrics: Metrics,
    /// One reload at a time, so `previous_version` is the version each reload replaced.
    reloading: tokio::sync::Mutex<()>,
}

/// Loads a bundle and runs one probe text through it: a bundle whose checksums and shapes are
/// right can still hold weights that give NaN, and the first customer must not find out.
fn load_checked(dir: &std::path::Path) -> Result<NluModel, RequestError> {
    let bad = |reason: String| RequestError::invalid("bundle_dir", reason);
    let model = NluModel::load(dir, &candle_core::Device::Cpu).map_err(|e| bad(e.to_string()))?;
    let probe = model
        .tokenize("hello, where is my order?")
        .map_err(|e| bad(format!("{}: tokenizer: {e}", dir.display())))?;
    let out = model
        .run(&[&probe.ids])
        .map_err(|e| bad(format!("{}: probe pass failed: {e}", dir.display())))?;
    let finite = out.iter().all(|o| {
        o.embedding
            .iter()
            .chain(o.intent.iter().flatten())
            .chain(o.sentiment.iter().flatten())
            .all(|v| v.is_finite())
    });
    if !finite {
        return Err(bad(format!(
            "{}: probe pass gave NaN or infinite outputs",
            dir.display()
        )));
    }
    Ok(model)
}

impl ModelAdminService {
    pub fn new(models: Arc<ServedModels>, batcher: BatcherConfig, metrics: Metrics) -> Self {
        Self {
            models,
            batcher,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    async fn reload(&self, req: pb::ReloadModelRequest) -> Result<pb::ReloadModelResponse, RequestError> {
        let _one_at_a_time = self.reloading.lock().await;
        let (name, current_dir) = self.models.resolve(&req.model)?;
        let dir = if req.bundle_dir.is_empty() {
            current_dir
        } else {
            PathBuf::from(&req.bundle_dir)
        };
        let start = Instant::now();
        let d2 = dir.clone();
        let model = tokio::task::spawn_blocking(move || load_checked(&d2))
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))??;
        if model.name() != name {
            return Err(RequestError::invalid(
                "bundle_dir",
                format!(
                    "{}: the bundle is named `{}`, not `{name}`",
                    dir.display(),
                    model.name()
                ),
            ));
        }
        let load_ms = start.elapsed().as_millis() as u64;
        let version = model.version().to_string();
        let batcher = Batcher::spawn(Arc::new(model), self.batcher, self.metrics.clone())
            .map_err(|e| RequestError::Internal(format!("starting the batcher thread: {e}")))?;
        let old = self.models.replace(dir.clone(), batcher)?;
        let previous_version = old.model().version().to_string();
        tracing::info!(model = %name, %previous_version, %version, bundle = %dir.display(), load_ms, "model reloaded");
        Ok(pb::ReloadModelResponse {
            model: name,
            previous_version,
            version,
            bundle_dir: dir.display().to_string(),
            load_ms,
        })
    }
}

#[tonic::async_trait]
impl ModelAdmin for ModelAdminService {
    async fn reload_model(
        &self,
        request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let start = Instant::now();
        let r = self.reload(request.into_inner()).await;
        if let Err(e) = &r {
            tracing::warn!(error = %e, "model reload refused; the serving version is unchanged");
        }
        finish(&self.metrics, "ReloadModel", start, r)
    }
}
