//! `nudge.v1.ModelAdmin`: replacing a served NLU model (a new fine-tune, new heads, a new
//! threshold) without a restart. The new bundle is loaded and checked off the async runtime
//! while the old version keeps answering; only a bundle that passes every check is swapped in.
use crate::batcher::{Batcher, BatcherConfig};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::service::{finish, ServedModels};
use nudge_model::{BackendKind, NluModel};
use nudge_proto::v1 as pb;
use pb::model_admin_server::ModelAdmin;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The ModelAdmin service (admin listener only).
pub struct ModelAdminService {
    models: Arc<ServedModels>,
    batcher: BatcherConfig,
    backend: BackendKind,
    /// Bundles may only be loaded from under this directory (canonical).
    models_root: PathBuf,
    metrics: Metrics,
    /// One reload at a time, so `previous_version` is the version each reload replaced.
    reloading: tokio::sync::Mutex<()>,
}

impl ModelAdminService {
    /// A reload service for `models`; new bundles must lie under `models_root`.
    pub fn new(
        models: Arc<ServedModels>,
        batcher: BatcherConfig,
        backend: BackendKind,
        models_root: &Path,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        Ok(Self {
            models,
            batcher,
            backend,
            // A root that does not exist (yet) admits nothing; it is not a reason not to serve.
            models_root: models_root.canonicalize().unwrap_or_else(|_| models_root.to_path_buf()),
            metrics,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// `dir`, resolved, if it lies under the models root: the admin door loads bundles the
    /// operator put there, not any directory a caller can name.
    fn confine(&self, dir: &Path) -> Result<PathBuf, RequestError> {
        let real = dir
            .canonicalize()
            .map_err(|e| RequestError::invalid("bundle_dir", format!("{}: {e}", dir.display())))?;
        if !real.starts_with(&self.models_root) {
            return Err(RequestError::invalid(
                "bundle_dir",
                format!(
                    "{} is outside the models root {} (serve.models_root)",
                    dir.display(),
                    self.models_root.display()
                ),
            ));
        }
        Ok(real)
    }

    async fn reload(&self, req: pb::ReloadModelRequest) -> Result<pb::ReloadModelResponse, RequestError> {
        let _one_at_a_time = self.reloading.lock().await;
        let (name, current_dir) = self.models.resolve(&req.model)?;
        let dir = if req.bundle_dir.is_empty() {
            current_dir
        } else {
            PathBuf::from(&req.bundle_dir)
        };
        self.confine(&dir)?;
        let start = Instant::now();
        let d2 = dir.clone();
        let backend = self.backend;
        let model = tokio::task::spawn_blocking(move || NluModel::load_probed(&d2, backend))
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?
            .map_err(|e| RequestError::invalid("bundle_dir", e.to_string()))?;
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
