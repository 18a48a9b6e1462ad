//! `nudge.v1.ModelAdmin`: replacing a served NLU model (a new fine-tune, new heads, a new
//! threshold) without a restart. The new bundle is loaded and checked off the async runtime
//! while the old version keeps answering; only a bundle that passes every check is swapped in.
//!
//! In cluster mode a reload is a cluster-wide change: the bundle is checked here, stored in the
//! cluster and the model's SERVING pointer moved before this server swaps, and every other
//! server follows the pointer (`crate::cluster::bundles`) through the same [`Reloader`].
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

/// Loads bundles and swaps them in, one at a time: what the admin door and the cluster's
/// follower share, so a bundle that arrives through the cluster passes exactly the checks of one
/// an operator loads by hand.
pub(crate) struct Reloader {
    models: Arc<ServedModels>,
    batcher: BatcherConfig,
    backend: BackendKind,
    /// Bundles may only be loaded from under this directory (canonical).
    models_root: PathBuf,
    metrics: Metrics,
    /// One reload at a time, so `previous_version` is the version each reload replaced.
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// A bundle that passed every check, ready to be swapped in.
pub(crate) struct Checked {
    pub name: String,
    pub dir: PathBuf,
    pub model: NluModel,
    pub load_ms: u64,
}

impl Reloader {
    pub(crate) fn new(
        models: Arc<ServedModels>,
        batcher: BatcherConfig,
        backend: BackendKind,
        models_root: &Path,
        metrics: Metrics,
    ) -> Self {
        Self {
            models,
            batcher,
            backend,
            // A root that does not exist (yet) admits nothing; it is not a reason not to serve.
            models_root: models_root.canonicalize().unwrap_or_else(|_| models_root.to_path_buf()),
            metrics,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn models(&self) -> &ServedModels {
        &self.models
    }

    pub(crate) fn models_root(&self) -> &Path {
        &self.models_root
    }

    /// Holds off every other reload until dropped.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.one_at_a_time.lock().await
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

    /// Loads the bundle at `dir` (empty: the model's current directory) for the served model
    /// `model` and runs every check, off the async workers; nothing is swapped yet.
    pub(crate) async fn check(&self, model: &str, dir: &str) -> Result<Checked, RequestError> {
        let (name, current_dir) = self.models.resolve(model)?;
        let dir = if dir.is_empty() {
            current_dir
        } else {
            PathBuf::from(dir)
        };
        let dir = self.confine(&dir)?;
        let start = Instant::now();
        let (d2, backend) = (dir.clone(), self.backend);
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
        Ok(Checked {
            name,
            dir,
            model,
            load_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Serves a checked bundle from now on; calls in flight finish on the old one.
    pub(crate) fn swap(&self, checked: Checked) -> Result<pb::ReloadModelResponse, RequestError> {
        let Checked {
            name,
            dir,
            model,
            load_ms,
        } = checked;
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

/// A bundle found under the models root, for the console's model versions.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BundleInfo {
    /// The bundle directory (canonical).
    pub dir: PathBuf,
    /// The served model it is a version of (its manifest's name).
    pub name: String,
    /// Its manifest's version.
    pub version: String,
    /// Whether it is the directory the model serves now.
    pub serving: bool,
    /// Figures recorded when it was made (eval accuracy…).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Why its manifest cannot be read (it cannot be served).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Directories below the models root searched for bundles (`models/bundles/<name>/`).
const BUNDLE_DEPTH: usize = 3;

/// The ModelAdmin service (admin listener only).
#[derive(Clone)]
pub struct ModelAdminService {
    reloader: Arc<Reloader>,
    /// In cluster mode a reload moves the model's SERVING pointer for every server.
    cluster: Option<nudge_cluster::Cluster>,
    /// The rules a new default model must still serve (with `[strategy]`).
    conversations: Option<Arc<crate::conversations::ConversationService>>,
    metrics: Metrics,
}

impl ModelAdminService {
    pub(crate) fn new(reloader: Arc<Reloader>, cluster: Option<nudge_cluster::Cluster>, metrics: Metrics) -> Self {
        Self {
            reloader,
            cluster,
            conversations: None,
            metrics,
        }
    }

    /// Refuses, from now on, a default model whose labels the rules of `conversations` need
    /// (see [`crate::conversations::ConversationService::check_model_labels`]). Only reloads
    /// through this door are checked: a server following the cluster takes its bundle and its
    /// rules as they come, one pointer after the other, since the cluster's pair passed this
    /// check where it was made.
    pub(crate) fn checking_rules(mut self, conversations: Arc<crate::conversations::ConversationService>) -> Self {
        self.conversations = Some(conversations);
        self
    }

    /// The served models: name, version serving, bundle directory.
    pub(crate) fn served(&self) -> Vec<serde_json::Value> {
        let models = self.reloader.models();
        let mut names = models.names();
        names.sort();
        names
            .iter()
            .filter_map(|n| {
                let batcher = models.get(n).ok()?;
                let (_, dir) = models.resolve(n).ok()?;
                Some(serde_json::json!({
                    "name": n,
                    "version": batcher.model().version(),
                    "dir": dir.canonicalize().unwrap_or(dir),
                }))
            })
            .collect()
    }

    /// Every bundle under the models root (manifests only: nothing is loaded), by model and
    /// version, and the served models' current directories among them.
    pub(crate) fn bundles(&self) -> Vec<BundleInfo> {
        let serving: Vec<PathBuf> = self
            .reloader
            .models()
            .names()
            .iter()
            .filter_map(|n| self.reloader.models().resolve(n).ok())
            .filter_map(|(_, dir)| dir.canonicalize().ok())
            .collect();
        let mut found = Vec::new();
        let mut dirs = vec![(self.reloader.models_root().to_path_buf(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            if dir.join(nudge_model::MANIFEST).is_file() {
                let (name, version, metrics, error) = match nudge_model::Manifest::read(&dir) {
                    Ok(m) => (m.name, m.version, m.metrics, String::new()),
                    Err(e) => (String::new(), String::new(), Default::default(), e.to_string()),
                };
                let dir = dir.canonicalize().unwrap_or(dir);
                found.push(BundleInfo {
                    serving: serving.contains(&dir),
                    dir,
                    name,
                    version,
                    metrics,
                    error,
                });
                continue;
            }
            if depth == BUNDLE_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), depth + 1)),
            );
        }
        found.sort_by(|a, b| (&a.name, &a.dir).cmp(&(&b.name, &b.dir)));
        found
    }

    /// Serves the bundle at `dir` for `model` (every check of `ReloadModel`; in a cluster every
    /// server follows): the console's "serve this bundle".
    pub(crate) async fn reload(&self, req: pb::ReloadModelRequest) -> Result<pb::ReloadModelResponse, RequestError> {
        let _one_at_a_time = self.reloader.lock().await;
        let checked = self.reloader.check(&req.model, &req.bundle_dir).await?;
        if let Some(conv) = &self.conversations {
            let (default, _) = self.reloader.models().resolve("")?;
            if checked.name == default {
                let (intents, sentiments) = crate::service::labels_of(checked.model.manifest());
                conv.check_model_labels(&intents, &sentiments).map_err(|reason| {
                    RequestError::invalid("bundle_dir", format!("{}: {reason}", checked.dir.display()))
                })?;
            }
        }
        if let Some(cluster) = &self.cluster {
            // Stored and pointed at before it is served here: if the cluster cannot take it,
            // nothing changes anywhere and the caller retries.
            crate::cluster::bundles::publish(cluster, &self.reloader, &checked).await?;
        }
        self.reloader.swap(checked)
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
