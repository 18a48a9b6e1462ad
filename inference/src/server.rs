//! Wires a running server: loads every bundle (refusing to start on a bad one), one batcher
//! per model, the Nlu and ModelAdmin services with health and reflection on the gRPC port, and
//! `/metrics` over HTTP on its own port.
use crate::batcher::{Batcher, BatcherConfig};
use crate::metrics::Metrics;
use crate::model::NluModel;
use crate::service::{Limits, NluService, ServedModels};
use nudge_proto::v1::nlu_server::NluServer;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Bundle directories; the first is the default model.
    pub bundles: Vec<PathBuf>,
    pub batcher: BatcherConfig,
    pub limits: Limits,
    /// Offer decisions and policy hot-loading; off unless configured.
    pub decisions: Option<crate::decide::DecisionsConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            bundles: vec![PathBuf::from("models/bundles/default")],
            batcher: BatcherConfig::default(),
            limits: Limits::default(),
            decisions: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading bundle {path}: {source}")]
    Bundle { path: PathBuf, source: crate::LoadError },
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("starting the batcher thread: {0}")]
    Thread(std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    health: tonic_health::server::HealthReporter,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting calls, lets the ones in flight finish, and waits for both ports to close.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        // Load balancers polling health stop sending new calls while the old ones drain.
        self.health.set_not_serving::<NluServer<NluService>>().await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.http.abort();
        self.grpc.await.map_err(|e| ServeError::Config(e.to_string()))??;
        Ok(())
    }

    /// Serves until the gRPC task ends.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.grpc.await.map_err(|e| ServeError::Config(e.to_string()))??;
        Ok(())
    }
}

pub fn load_models(config: &ServeConfig, metrics: &Metrics) -> Result<ServedModels, ServeError> {
    let device = candle_core::Device::Cpu;
    let mut batchers = Vec::new();
    for path in &config.bundles {
        let t = std::time::Instant::now();
        let model = NluModel::load(path, &device).map_err(|source| ServeError::Bundle {
            path: path.clone(),
            source,
        })?;
        tracing::info!(bundle = %path.display(), name = model.name(), version = model.version(), secs = t.elapsed().as_secs_f32(), "model loaded");
        let batcher = Batcher::spawn(Arc::new(model), config.batcher, metrics.clone()).map_err(ServeError::Thread)?;
        batchers.push((path.clone(), batcher));
    }
    ServedModels::new(batchers).map_err(ServeError::Config)
}

/// Loads the models, binds both ports and starts serving in the background.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    if config.batcher.max_batch_size == 0 || config.limits.max_batch_texts == 0 || config.limits.max_text_bytes == 0 {
        return Err(ServeError::Config(
            "max_batch_size, max_batch_texts and max_text_bytes must be positive".into(),
        ));
    }
    let metrics = Metrics::new();
    let cfg = config.clone();
    let m2 = metrics.clone();
    let models = tokio::task::spawn_blocking(move || load_models(&cfg, &m2))
        .await
        .map_err(|e| ServeError::Config(e.to_string()))??;
    let models = Arc::new(models);
    let service = Arc::new(NluService::new(models.clone(), config.limits, metrics.clone()));
    let model_admin = crate::model_admin::ModelAdminService::new(models, config.batcher, metrics.clone());
    let decisions = match &config.decisions {
        Some(dc) => {
            let store = Arc::new(crate::decide::PolicyStore::open(&dc.policy_registry).map_err(ServeError::Config)?);
            let decide = crate::decide::DecisionService::new(service.clone(), store.clone(), dc, metrics.clone())
                .map_err(ServeError::Config)?;
            let admin = crate::decide::PolicyAdminService {
                store,
                metrics: metrics.clone(),
            };
            Some((
                nudge_proto::v1::decisions_server::DecisionsServer::new(decide),
                nudge_proto::v1::policy_admin_server::PolicyAdminServer::new(admin),
            ))
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<NluServer<NluService>>().await;
    // Both reflection versions: grpcurl and older tools still ask for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(nudge_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Config(format!("reflection: {e}")))?;

    let incoming = tonic::transport::server::TcpIncoming::bind(config.grpc_addr)
        .map_err(|source| ServeError::Bind {
            addr: config.grpc_addr,
            source,
        })?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr().map_err(|source| ServeError::Bind {
        addr: config.grpc_addr,
        source,
    })?;

    let http_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_addr = http_listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.metrics_addr,
        source,
    })?;
    let m3 = metrics.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = m3.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }
        }),
    );
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });

    let (tx, rx) = oneshot::channel::<()>();
    let (decide_svc, admin_svc) = decisions.unzip();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(NluServer::from_arc(service))
            .add_service(nudge_proto::v1::model_admin_server::ModelAdminServer::new(model_admin))
            .add_optional_service(decide_svc)
            .add_optional_service(admin_svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    tracing::info!(%grpc_addr, %metrics_addr, "serving");
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        shutdown: Some(tx),
        health: health_reporter,
        grpc,
        http,
    })
}
