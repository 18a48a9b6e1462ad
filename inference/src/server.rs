//! Wires a running server: loads every bundle (refusing to start on a bad one), one batcher
//! per model, and three listeners —
//! - **data** (`grpc_addr`): Nlu, Decisions, health, reflection;
//! - **admin** (`admin_addr`, loopback by default): ModelAdmin, PolicyAdmin, health, reflection;
//! - **metrics** (`metrics_addr`): Prometheus `/metrics` over HTTP.
//!
//! With a token configured every service but health requires it; with TLS configured both gRPC
//! listeners speak only TLS.
use crate::auth::BearerAuth;
use crate::batcher::Batcher;
use crate::config::{Secret, ServeConfig};
use crate::conversations::{load_strategy, ConversationService, StrategyAdminService, StrategyLoadError};
use crate::decide::{DecisionService, DecisionsError, PolicyAdminService, PolicyStore};
use crate::metrics::Metrics;
use crate::model_admin::{ModelAdminService, Reloader};
use crate::service::{NluService, ServedModels};
use nudge_model::{LoadError, NluModel};
use nudge_proto::v1::{
    conversations_server::ConversationsServer, decisions_server::DecisionsServer, model_admin_server::ModelAdminServer,
    nlu_server::NluServer, policy_admin_server::PolicyAdminServer, strategy_admin_server::StrategyAdminServer,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bundle failed its checks.
    #[error("loading bundle {path}: {source}")]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// What was wrong.
        source: LoadError,
    },
    /// No bundle configured.
    #[error("bundles: no model to serve")]
    NoModel,
    /// Two bundles share a name.
    #[error("bundles: two bundles are both named `{0}`")]
    DuplicateModel(String),
    /// A limit is zero.
    #[error("{0} must be positive")]
    Limit(&'static str),
    /// A file the configuration names cannot be read.
    #[error("{what} {path}: {source}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The decision service could not start.
    #[error(transparent)]
    Decisions(#[from] DecisionsError),
    /// The strategy (catalog, rules, guardrails) could not start.
    #[error(transparent)]
    Strategy(#[from] StrategyLoadError),
    /// `[console]` is wrong or its listener could not bind.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// `[cluster]` is wrong.
    #[error(transparent)]
    Cluster(#[from] nudge_cluster::ClusterError),
    /// A listener could not bind.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A batching thread could not start.
    #[error("starting the batcher thread: {0}")]
    Thread(std::io::Error),
    /// gRPC reflection could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A server task panicked or was cancelled.
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A started server; `shutdown` drains it.
pub struct RunningServer {
    /// Where the data listener listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Where the operator console listens (`[console]`).
    pub console_addr: Option<SocketAddr>,
    console: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<()>,
    /// Conversations, saved once more when the server stops.
    conversations: Option<(Arc<ConversationService>, JoinHandle<()>)>,
    /// The cluster's forwarder and follower (`[cluster]`).
    cluster_tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting calls, lets the ones in flight finish, and waits for the ports to close.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        // Load balancers polling health stop sending new calls while the old ones drain.
        self.health.set_not_serving::<NluServer<NluService>>().await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = self.shutdown.send(true);
        self.http.abort();
        if let Some(c) = &self.console {
            c.abort();
        }
        self.grpc.await??;
        self.admin.await??;
        // Stopped after the listeners: what was logged is forwarded on the next start.
        self.cluster_tasks.iter().for_each(JoinHandle::abort);
        save_conversations(self.conversations).await;
        Ok(())
    }

    /// Serves until the data listener's task ends.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.grpc.await??;
        save_conversations(self.conversations).await;
        Ok(())
    }
}

/// Stops the periodic snapshots and writes a last one.
async fn save_conversations(c: Option<(Arc<ConversationService>, JoinHandle<()>)>) {
    if let Some((svc, task)) = c {
        task.abort();
        match tokio::task::spawn_blocking(move || svc.save()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "saving conversation state at shutdown"),
            Err(e) => tracing::error!(error = %e, "saving conversation state at shutdown"),
            Ok(Ok(())) => {}
        }
    }
}

/// Loads every configured bundle and starts its batcher.
pub fn load_models(config: &ServeConfig, metrics: &Metrics) -> Result<ServedModels, ServeError> {
    let mut batchers = Vec::new();
    for path in &config.bundles {
        let t = std::time::Instant::now();
        let model = NluModel::load(path, config.device).map_err(|source| ServeError::Bundle {
            path: path.clone(),
            source,
        })?;
        tracing::info!(bundle = %path.display(), name = model.name(), version = model.version(), backend = model.backend_name(), device = %model.device(), secs = t.elapsed().as_secs_f32(), "model loaded");
        let batcher = Batcher::spawn(Arc::new(model), config.batcher, metrics.clone()).map_err(ServeError::Thread)?;
        batchers.push((path.clone(), batcher));
    }
    ServedModels::new(batchers)
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::File {
        what,
        path: path.clone(),
        source,
    })
}

/// The bearer token from the configuration: the value itself, or the file's contents.
fn token(config: &ServeConfig) -> Result<Option<Secret>, ServeError> {
    if let Some(t) = config.auth_token.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    match &config.auth_token_file {
        Some(p) => {
            let bytes = read_file("auth_token_file", p)?;
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            Ok((!text.is_empty()).then(|| Secret::new(text)))
        }
        None => Ok(None),
    }
}

async fn bind(addr: SocketAddr) -> Result<(tonic::transport::server::TcpIncoming, SocketAddr), ServeError> {
    let bind_err = |source| ServeError::Bind { addr, source };
    let incoming = tonic::transport::server::TcpIncoming::bind(addr)
        .map_err(bind_err)?
        .with_nodelay(Some(true));
    let local = incoming.local_addr().map_err(bind_err)?;
    Ok((incoming, local))
}

/// Loads the models, binds every port and starts serving in the background.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    if config.batcher.max_batch_size == Some(0) {
        return Err(ServeError::Limit("batcher.max_batch_size"));
    }
    if config.limits.max_batch_texts == 0 {
        return Err(ServeError::Limit("limits.max_batch_texts"));
    }
    if config.limits.max_text_bytes == 0 {
        return Err(ServeError::Limit("limits.max_text_bytes"));
    }
    let auth = BearerAuth::new(token(&config)?);
    let tls = match &config.tls {
        Some(t) => Some(ServerTlsConfig::new().identity(Identity::from_pem(
            read_file("tls.cert", &t.cert)?,
            read_file("tls.key", &t.key)?,
        ))),
        None => None,
    };
    let metrics = Metrics::new();
    let cfg = config.clone();
    let m2 = metrics.clone();
    let models = Arc::new(tokio::task::spawn_blocking(move || load_models(&cfg, &m2)).await??);
    let service = Arc::new(NluService::new(models.clone(), config.limits, metrics.clone()));
    let cluster = match &config.cluster {
        Some(cc) => Some(nudge_cluster::Cluster::connect(cc.clone()).await?),
        None => None,
    };
    if cluster.is_some() {
        // Versions that arrive through the cluster are written under the models root.
        std::fs::create_dir_all(&config.models_root).map_err(|source| ServeError::File {
            what: "models_root",
            path: config.models_root.clone(),
            source,
        })?;
    }
    let reloader = Arc::new(Reloader::new(
        models,
        config.batcher,
        config.device,
        &config.models_root,
        metrics.clone(),
    ));
    let model_admin = ModelAdminService::new(reloader.clone(), cluster.clone(), metrics.clone());
    let mut cluster_tasks = match &cluster {
        Some(c) => crate::cluster::start_bundles(c.clone(), reloader, metrics.clone())?,
        None => Vec::new(),
    };
    let decisions = match &config.decisions {
        Some(dc) => {
            let registry = nudge_policy::Registry::open(&dc.policy_registry).map_err(DecisionsError::from)?;
            let store = Arc::new(PolicyStore::open(registry).map_err(DecisionsError::from)?);
            let decide = Arc::new(DecisionService::new(
                service.clone(),
                store.clone(),
                dc,
                metrics.clone(),
            )?);
            if let Some(c) = &cluster {
                cluster_tasks.extend(crate::cluster::start_decisions(
                    c.clone(),
                    dc.decision_log.clone(),
                    store.clone(),
                    metrics.clone(),
                ));
            }
            let admin = PolicyAdminService {
                store,
                metrics: metrics.clone(),
                cluster: cluster.clone(),
            };
            Some((decide, admin))
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

    let (grpc_incoming, grpc_addr) = bind(config.grpc_addr).await?;
    let (admin_incoming, admin_addr) = bind(config.admin_addr).await?;
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

    let builder = || -> Result<Server, ServeError> {
        let b = Server::builder();
        Ok(match &tls {
            Some(t) => b.tls_config(t.clone())?,
            None => b,
        })
    };
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let conversations = match (&config.strategy, &decisions) {
        (None, _) => None,
        (Some(_), None) => return Err(StrategyLoadError::NeedsDecisions.into()),
        (Some(sc), Some((d, _))) => {
            // The rules are checked against the default model's labels.
            let (intents, sentiments) = service.labels("").unwrap_or_default();
            let strategy = load_strategy(sc, &intents, &sentiments)?;
            tracing::info!(
                catalog = strategy.catalog.version(),
                rules = strategy.rules.version(),
                products = strategy.catalog.products().len(),
                offers = strategy.catalog.offers().len(),
                "strategy loaded"
            );
            let svc = Arc::new(
                ConversationService::new(service.clone(), d.clone(), strategy, sc, metrics.clone())?
                    .with_cluster(cluster.clone()),
            );
            if let Some(c) = &cluster {
                cluster_tasks.push(crate::cluster::start_strategy(c.clone(), svc.clone(), metrics.clone()));
                if let Some(dir) = &sc.events_log {
                    cluster_tasks.extend(crate::cluster::start_events(
                        c.clone(),
                        dir.clone(),
                        svc.kpis_shared(),
                        metrics.clone(),
                    ));
                }
            }
            Some((svc, Duration::from_secs(sc.snapshot_every_seconds.max(1))))
        }
    };
    let model_admin = match &conversations {
        Some((svc, _)) => model_admin.checking_rules(svc.clone()),
        None => model_admin,
    };
    let policy_admin = decisions.as_ref().map(|(_, a)| a.clone());
    let (decide_svc, admin_svc) = match decisions {
        Some((d, a)) => (
            Some(InterceptedService::new(DecisionsServer::from_arc(d), auth.clone())),
            Some(InterceptedService::new(PolicyAdminServer::new(a), auth.clone())),
        ),
        None => (None, None),
    };
    let grpc = tokio::spawn(
        builder()?
            .add_service(health_service.clone())
            .add_service(InterceptedService::new(reflection().build_v1()?, auth.clone()))
            .add_service(InterceptedService::new(reflection().build_v1alpha()?, auth.clone()))
            .add_service(InterceptedService::new(NluServer::from_arc(service), auth.clone()))
            .add_optional_service(decide_svc)
            .add_optional_service(
                conversations
                    .as_ref()
                    .map(|(svc, _)| InterceptedService::new(ConversationsServer::from_arc(svc.clone()), auth.clone())),
            )
            .serve_with_incoming_shutdown(grpc_incoming, stopped(rx.clone())),
    );
    let admin = tokio::spawn(
        builder()?
            .add_service(health_service)
            .add_service(InterceptedService::new(reflection().build_v1()?, auth.clone()))
            .add_service(InterceptedService::new(
                ModelAdminServer::new(model_admin.clone()),
                auth.clone(),
            ))
            .add_optional_service(admin_svc)
            .add_optional_service(conversations.as_ref().map(|(svc, _)| {
                InterceptedService::new(
                    StrategyAdminServer::new(StrategyAdminService {
                        conversations: svc.clone(),
                        metrics: metrics.clone(),
                    }),
                    auth.clone(),
                )
            }))
            .serve_with_incoming_shutdown(admin_incoming, stopped(rx)),
    );
    tracing::info!(%grpc_addr, %admin_addr, %metrics_addr, auth = auth.enabled(), tls = config.tls.is_some(), "serving");
    let console = match (&config.console, &conversations) {
        (None, _) => None,
        (Some(_), None) => return Err(crate::console::ConsoleError::NeedsStrategy.into()),
        (Some(cc), Some((svc, _))) => {
            Some(crate::console::start(cc, config.tls.as_ref(), svc.clone(), policy_admin, model_admin).await?)
        }
    };
    if let (Some(c), Some((svc, _))) = (&cluster, &conversations) {
        cluster_tasks.push(crate::cluster::start_experiments(
            c.clone(),
            svc.clone(),
            metrics.clone(),
        ));
    }
    let conversations = conversations.map(|(svc, every)| {
        let s = svc.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = s.clone();
                match tokio::task::spawn_blocking(move || s.save()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "saving conversation state"),
                    Err(e) => tracing::warn!(error = %e, "saving conversation state"),
                    Ok(Ok(())) => {}
                }
            }
        });
        (svc, task)
    });
    Ok(RunningServer {
        grpc_addr,
        admin_addr,
        metrics_addr,
        console_addr: console.as_ref().map(|c| c.addr),
        console: console.map(|c| c.task),
        shutdown: tx,
        health: health_reporter,
        grpc,
        admin,
        http,
        conversations,
        cluster_tasks,
    })
}
