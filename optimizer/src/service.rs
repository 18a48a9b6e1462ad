//! The optimizer service: `ReportOutcome` (validated, deduplicated, durable before the ack), a
//! trainer on a cadence (every N outcomes or T milliseconds), the off-policy gate with an audit
//! log, and pushes of new versions to every configured server.
use crate::learn::{train_and_judge, LearnConfig, Verdict};
use crate::ledger::{Ledger, OutcomeRecord};
use crate::reward::Reward;
use nudge_eventlog::{Durability, EventLog, LogConfig, Tailer};
use nudge_policy::version::{PolicyManifest, PolicyVersion, FORMAT};
use nudge_policy::{FeatureSchema, Policy, RewardModel};
use nudge_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub grpc_addr: SocketAddr,
    /// Decision-log directories of the servers (shared storage or shipped copies).
    pub decision_logs: Vec<PathBuf>,
    pub outcome_log: PathBuf,
    pub audit_log: PathBuf,
    /// Where versions are written: `<registry>/<version>/`, `LATEST` names the newest pushed.
    pub registry: PathBuf,
    /// Servers to push to, e.g. `http://10.0.0.5:50051`.
    pub servers: Vec<String>,
    pub reward_file: PathBuf,
    pub train_every_outcomes: u64,
    pub train_every_ms: u64,
    pub durability: Durability,
    pub learn: LearnConfig,
    /// Schema of the first version, written (with the prior) when the registry is empty.
    pub initial_schema: Option<FeatureSchema>,
    pub prior_var: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50061)),
            decision_logs: vec![PathBuf::from("logs/decisions")],
            outcome_log: PathBuf::from("logs/outcomes"),
            audit_log: PathBuf::from("logs/audit"),
            registry: PathBuf::from("models/policy-registry"),
            servers: vec!["http://127.0.0.1:50051".into()],
            reward_file: PathBuf::from("reward.toml"),
            train_every_outcomes: 1000,
            train_every_ms: 60_000,
            durability: Durability::Always,
            learn: LearnConfig::default(),
            initial_schema: None,
            prior_var: 1.0,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct State {
    ledger: Ledger,
    tailers: Vec<Tailer>,
    malformed_decisions: u64,
    serving: Option<PolicyVersion>,
    trainings: u64,
    last_verdict: String,
    outcomes_since_training: u64,
}

impl State {
    fn poll_decisions(&mut self) {
        for t in &mut self.tailers {
            match t.poll() {
                Ok(records) => {
                    for r in records {
                        if !self.ledger.add_decision(r) {
                            self.malformed_decisions += 1;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading a decision log"),
            }
        }
    }
}

pub struct Optimizer {
    cfg: OptimizerConfig,
    reward: Reward,
    state: Mutex<State>,
    outcomes: EventLog,
    audit: EventLog,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

fn kind_name(k: i32) -> Option<&'static str> {
    Some(match pb::OutcomeKind::try_from(k).ok()? {
        pb::OutcomeKind::Shown => "shown",
        pb::OutcomeKind::Click => "click",
        pb::OutcomeKind::AddToCart => "add_to_cart",
        pb::OutcomeKind::Convert => "convert",
        pb::OutcomeKind::Decline => "decline",
        pb::OutcomeKind::OptOut => "opt_out",
        pb::OutcomeKind::Complaint => "complaint",
        pb::OutcomeKind::Unspecified => return None,
    })
}

impl Optimizer {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("optimizer state lock poisoned"))
    }

    async fn report(&self, r: pb::ReportOutcomeRequest) -> Result<pb::ReportOutcomeResponse, Status> {
        let invalid = |f: &str, why: &str| Status::invalid_argument(format!("{f}: {why}"));
        if r.event_id.trim().is_empty() || r.event_id.len() > 256 {
            return Err(invalid("event_id", "must be 1–256 bytes"));
        }
        if r.decision_id.trim().is_empty() {
            return Err(invalid("decision_id", "must not be empty"));
        }
        let kind = kind_name(r.kind).ok_or_else(|| invalid("kind", "must be one of the OutcomeKind values"))?;
        if !r.revenue.is_finite() || !r.margin.is_finite() {
            return Err(invalid(
                if r.revenue.is_finite() { "margin" } else { "revenue" },
                "must be a finite number",
            ));
        }
        if r.time_unix_ms < 0 {
            return Err(invalid("time_unix_ms", "must not be negative"));
        }
        let received_ms = now_ms();
        let time_ms = if r.time_unix_ms == 0 {
            received_ms
        } else {
            r.time_unix_ms as u64
        };
        let record = {
            let mut st = self.lock()?;
            if st.ledger.decision(&r.decision_id).is_none() {
                st.poll_decisions();
            }
            let Some(d) = st.ledger.decision(&r.decision_id) else {
                return Err(Status::not_found(format!(
                    "decision_id: no decision `{}` in the decision logs",
                    r.decision_id
                )));
            };
            let late = time_ms > d.time_ms.saturating_add(self.reward.window_ms);
            if !st.ledger.claim_event(&r.event_id) {
                return Ok(pb::ReportOutcomeResponse { duplicate: true, late });
            }
            OutcomeRecord {
                event_id: r.event_id.clone(),
                decision_id: r.decision_id.clone(),
                kind: kind.to_string(),
                revenue: r.revenue,
                margin: r.margin,
                time_ms,
                received_ms,
                late,
            }
        };
        // Durable before acknowledged; a failed write frees the event id for a retry.
        if let Err(e) = self.outcomes.append(&record).await {
            self.lock()?.ledger.release_event(&r.event_id);
            return Err(Status::unavailable(format!("outcome log: {e}")));
        }
        let mut st = self.lock()?;
        st.ledger.add_outcome(&record);
        st.outcomes_since_training += 1;
        if st.outcomes_since_training >= self.cfg.train_every_outcomes {
            self.wake.notify_one();
        }
        Ok(pb::ReportOutcomeResponse {
            duplicate: false,
            late: record.late,
        })
    }

    /// One training round: join, train, judge, and push if the gate passes.
    async fn train_round(self: &Arc<Self>) -> Result<Option<String>, String> {
        let (serving, examples) = {
            let mut st = self.state.lock().map_err(|_| "lock poisoned")?;
            st.poll_decisions();
            st.outcomes_since_training = 0;
            let Some(serving) = st.serving.clone() else {
                return Err("no serving policy".into());
            };
            (serving, st.ledger.examples(&self.reward, now_ms()))
        };
        let cfg = self.cfg.learn.clone();
        let n = examples.len();
        let judged = tokio::task::spawn_blocking(move || {
            train_and_judge(&serving.policy, &examples, &cfg).map(|r| (serving, r))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (serving, (candidate, verdict)) = match judged {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(examples = n, reason = %e, "not training yet");
                return Ok(None);
            }
        };
        let version = next_version(&self.cfg.registry);
        self.audit_verdict(&version, &serving.manifest.version, &verdict).await;
        {
            let mut st = self.state.lock().map_err(|_| "lock poisoned")?;
            st.trainings += 1;
            st.last_verdict = serde_json::to_string(&verdict).unwrap_or_default();
        }
        if !verdict.pass {
            tracing::info!(%version, rule = %verdict.rule, "candidate refused by the off-policy gate");
            return Ok(None);
        }
        let pv = PolicyVersion {
            manifest: PolicyManifest {
                format: FORMAT,
                version: version.clone(),
                parent: Some(serving.manifest.version.clone()),
                created_unix_ms: now_ms(),
                schema: candidate.schema.clone(),
                exploration: candidate.exploration.clone(),
                reward_sha256: Some(self.reward.sha256.clone()),
                training_window: Some(serde_json::json!({
                    "trained_on": verdict.train_examples,
                    "judged_on": verdict.holdout_examples,
                    "until_ms": now_ms().saturating_sub(self.reward.window_ms),
                })),
                ope: serde_json::to_value(&verdict).ok(),
                files: Default::default(),
            },
            policy: candidate,
        };
        self.publish(pv).await?;
        Ok(Some(version))
    }

    async fn audit_verdict(&self, version: &str, serving: &str, v: &Verdict) {
        let rec = serde_json::json!({"time_ms": now_ms(), "candidate_version": version, "serving_version": serving, "verdict": v});
        if let Err(e) = self.audit.append(&rec).await {
            tracing::error!(error = %e, "audit log");
        }
    }

    /// Writes the version to the registry, pushes it to every server, then marks it serving.
    async fn publish(&self, pv: PolicyVersion) -> Result<(), String> {
        let version = pv.manifest.version.clone();
        pv.write(&self.cfg.registry).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        self.push_all(&pv).await?;
        let push_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let _ = self
            .audit
            .append(&serde_json::json!({"time_ms": now_ms(), "pushed_version": version, "servers": self.cfg.servers, "push_ms": push_ms}))
            .await;
        std::fs::write(self.cfg.registry.join("LATEST"), &version).map_err(|e| e.to_string())?;
        tracing::info!(%version, push_ms, "policy pushed");
        if let Ok(mut st) = self.state.lock() {
            st.serving = Some(pv);
        }
        Ok(())
    }
}

/// `v<n+1>` after the highest `v<n>` in the registry.
fn next_version(registry: &std::path::Path) -> String {
    let n = std::fs::read_dir(registry)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('v')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("v{}", n + 1)
}

/// The gRPC face of the shared optimizer state.
struct OptimizerApi(Arc<Optimizer>);

#[tonic::async_trait]
impl pb::optimizer_server::Optimizer for OptimizerApi {
    async fn report_outcome(
        &self,
        request: Request<pb::ReportOutcomeRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        self.0.report(request.into_inner()).await.map(Response::new)
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.0.lock()?;
        Ok(Response::new(pb::StatusResponse {
            serving_version: st
                .serving
                .as_ref()
                .map(|s| s.manifest.version.clone())
                .unwrap_or_default(),
            decisions_seen: st.ledger.decisions() as u64,
            outcomes_recorded: st.ledger.outcomes_recorded,
            trainings: st.trainings,
            last_verdict: st.last_verdict.clone(),
        }))
    }
}

pub struct RunningOptimizer {
    pub grpc_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    trainer: tokio::task::JoinHandle<()>,
}

impl RunningOptimizer {
    pub async fn shutdown(mut self) {
        self.trainer.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.grpc.await;
    }

    pub async fn wait(self) {
        let _ = self.grpc.await;
    }
}

/// Replays the logs, makes sure a version is serving, and starts the gRPC service and trainer.
pub async fn start(cfg: OptimizerConfig) -> Result<RunningOptimizer, StartError> {
    let reward = Reward::load(&cfg.reward_file).map_err(|e| StartError::Config(e.to_string()))?;
    cfg.learn.validate().map_err(StartError::Config)?;
    let mut ledger = Ledger::default();
    for v in nudge_eventlog::read_all(&cfg.outcome_log, "outcomes").map_err(|e| StartError::Config(e.to_string()))? {
        if let Ok(o) = serde_json::from_value::<OutcomeRecord>(v) {
            ledger.add_outcome(&o);
        }
    }
    let log = |dir: &PathBuf, prefix: &str| {
        EventLog::open(LogConfig {
            dir: dir.clone(),
            prefix: prefix.into(),
            segment_bytes: 64 << 20,
            durability: cfg.durability,
        })
        .map_err(|e| StartError::Config(e.to_string()))
    };
    let outcomes = log(&cfg.outcome_log, "outcomes")?;
    let audit = log(&cfg.audit_log, "audit")?;
    std::fs::create_dir_all(&cfg.registry)
        .map_err(|e| StartError::Config(format!("{}: {e}", cfg.registry.display())))?;
    let serving = match std::fs::read_to_string(cfg.registry.join("LATEST")) {
        Ok(v) => {
            Some(PolicyVersion::load(&cfg.registry.join(v.trim())).map_err(|e| StartError::Config(e.to_string()))?)
        }
        Err(_) => None,
    };
    let mut state = State {
        ledger,
        tailers: cfg.decision_logs.iter().map(|d| Tailer::new(d, "decisions")).collect(),
        malformed_decisions: 0,
        serving: serving.clone(),
        trainings: 0,
        last_verdict: String::new(),
        outcomes_since_training: 0,
    };
    state.poll_decisions();
    let opt = Arc::new(Optimizer {
        cfg: cfg.clone(),
        reward,
        state: Mutex::new(state),
        outcomes,
        audit,
        wake: Notify::new(),
    });
    match serving {
        // Re-announce what is serving: a server that restarted empty gets it back.
        Some(pv) => {
            if let Err(e) = opt.push_all(&pv).await {
                tracing::warn!(error = %e, "re-announcing the serving policy");
            }
        }
        None => {
            let schema = cfg.initial_schema.clone().ok_or_else(|| {
                StartError::Config("the registry is empty and no initial_schema is configured".into())
            })?;
            let pv = PolicyVersion {
                manifest: PolicyManifest {
                    format: FORMAT,
                    version: next_version(&cfg.registry),
                    parent: None,
                    created_unix_ms: now_ms(),
                    schema: schema.clone(),
                    exploration: cfg.learn.exploration.clone(),
                    reward_sha256: Some(opt.reward.sha256.clone()),
                    training_window: None,
                    ope: None,
                    files: Default::default(),
                },
                policy: Policy {
                    model: RewardModel::prior(schema.dim(), cfg.prior_var),
                    schema,
                    exploration: cfg.learn.exploration.clone(),
                    projection: None,
                },
            };
            pv.policy.validate().map_err(|e| StartError::Config(e.to_string()))?;
            opt.publish(pv).await.map_err(StartError::Config)?;
        }
    }

    let incoming = tonic::transport::server::TcpIncoming::bind(cfg.grpc_addr)
        .map_err(|source| StartError::Bind {
            addr: cfg.grpc_addr,
            source,
        })?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.grpc_addr,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::optimizer_server::OptimizerServer::new(OptimizerApi(opt.clone())))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    let o2 = opt.clone();
    let trainer = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(o2.cfg.train_every_ms), o2.wake.notified()).await;
            match o2.train_round().await {
                Ok(Some(v)) => tracing::info!(version = %v, "trained and pushed"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "training round failed"),
            }
        }
    });
    tracing::info!(%grpc_addr, "optimizer serving");
    Ok(RunningOptimizer {
        grpc_addr,
        shutdown: Some(tx),
        grpc,
        trainer,
    })
}

impl Optimizer {
    /// Announces `pv` to every configured server; a server that refuses or is down is logged
    /// (it keeps serving what it had, and gets the next version).
    async fn push_all(&self, pv: &PolicyVersion) -> Result<(), String> {
        let (manifest, files) = pv.encode().map_err(|e| e.to_string())?;
        let version = &pv.manifest.version;
        for server in &self.cfg.servers {
            let req = pb::LoadPolicyRequest {
                manifest: manifest.clone(),
                files: files.clone().into_iter().collect(),
            };
            let pushed = async {
                let mut c = pb::policy_admin_client::PolicyAdminClient::connect(server.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                c.load_policy(req).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(10), pushed).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(%server, %version, error = %e, "push refused or failed"),
                Err(_) => tracing::error!(%server, %version, "push timed out"),
            }
        }
        Ok(())
    }
}

pub fn load_config(path: &std::path::Path) -> anyhow::Result<OptimizerConfig> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: OptimizerConfig =
        toml::from_str(&text).with_context(|| format!("{}: invalid configuration", path.display()))?;
    cfg.learn
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: invalid configuration: {e}", path.display()))?;
    Ok(cfg)
}

/// Runs the service until SIGTERM or Ctrl-C; prints `listening grpc=ADDR` once ready.
pub fn run_from_file(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = load_config(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let running = start(cfg).await?;
        println!("listening grpc={}", running.grpc_addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        running.shutdown().await;
        Ok(())
    })
}
