//! The optimizer service: `ReportOutcome` (validated, deduplicated, durable before the ack), a
//! trainer on a cadence (every N outcomes or T milliseconds), the off-policy gate with an audit
//! log, and pushes of new versions to every configured server.
//!
//! With `[cluster]` (NATS JetStream, `nudge_cluster`) the same jobs run on streams: decisions
//! arrive from every server through a durable consumer and are written to `decision_ledger`
//! before they are acknowledged; `ReportOutcome` is acknowledged once JetStream has stored the
//! outcome, and a second durable consumer writes it to `outcome_log` and the ledger; versions
//! are stored in the cluster and the SERVING pointer moved, instead of pushed server by server.
//! The ledger counts each decision and outcome once whatever is redelivered: ids it holds are
//! acknowledged without being written again.
//!
//! Several optimizers may share a cluster (for availability: `ReportOutcome` to any of them).
//! Each consumes both streams under its own name, so each keeps a complete ledger; one of them,
//! the holder of the `optimizer` lease ([`nudge_cluster::Lease`]), trains and publishes, and a
//! standby takes over when it goes quiet. Publishing is fenced where it lands as well: a version
//! name is claimed once in the cluster, and the SERVING pointer moves only from the revision the
//! round started from, so a candidate trained while the pointer moved (an operator's rollback,
//! another optimizer's version) is dropped rather than put over it.
use crate::audit::AuditTrail;
use crate::learn::{train_and_judge, LearnConfig, Verdict};
use crate::ledger::{Checkpoint, Ledger};
use crate::reward::Reward;
use crate::OptimizerError;
use nudge_cluster::{Cluster, Delivery, Ingest, Lease, DECISIONS_STREAM, OUTCOMES_STREAM, POLICY};
use nudge_policy::version::{from_file_set, to_file_set, PolicyManifest, PolicyVersion, FORMAT};
use nudge_policy::{FeatureSchema, Policy, Registry, RewardModel};
use nudge_proto::v1 as pb;
use nudge_records::{
    AuditEvent, DecisionRecord, Durability, EventLog, LogConfig, OutcomeKind, OutcomeRecord, Record, Tailer,
    OUTCOME_SCHEMA,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};
use tonic::{Request, Response, Status};

/// `optimizer.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub grpc_addr: SocketAddr,
    /// Decision-log directories of the servers (shared storage or shipped copies).
    pub decision_logs: Vec<PathBuf>,
    pub outcome_log: PathBuf,
    pub audit_log: PathBuf,
    /// Where versions are written: `<registry>/<version>/`, `SERVING` names the one in service.
    pub registry: PathBuf,
    /// The servers' admin listeners to push to, e.g. `http://10.0.0.5:50052` (`https://` with TLS).
    pub servers: Vec<String>,
    /// File holding the servers' bearer token, if they require one.
    pub admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the servers' TLS certificates, for `https://` servers.
    pub tls_ca_file: Option<PathBuf>,
    pub reward_file: PathBuf,
    pub train_every_outcomes: u64,
    pub train_every_ms: u64,
    pub durability: Durability,
    pub learn: LearnConfig,
    /// Schema of the first version, written (with the prior) when the registry is empty.
    pub initial_schema: Option<FeatureSchema>,
    pub prior_var: f64,
    /// NATS JetStream; absent, the single-machine mode (local logs, pushes to `servers`).
    pub cluster: Option<nudge_cluster::ClusterConfig>,
    /// Cluster mode: where decisions consumed from the stream are written before they are
    /// acknowledged (read back at start, like `decision_logs`).
    pub decision_ledger: PathBuf,
    /// Closed decisions kept as training examples (the newest); older ones leave the ledger,
    /// so memory stays bounded however long the optimizer runs.
    pub max_examples: usize,
    /// The ledger's checkpoint, written after every training round and read at start (then only
    /// the logs' tails are read). Default: `ledger.checkpoint.json` in `outcome_log`.
    pub checkpoint: Option<PathBuf>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50061)),
            decision_logs: vec![PathBuf::from("logs/decisions")],
            outcome_log: PathBuf::from("logs/outcomes"),
            audit_log: PathBuf::from("logs/audit"),
            registry: PathBuf::from("models/policy-registry"),
            servers: vec!["http://127.0.0.1:50052".into()],
            admin_token_file: None,
            tls_ca_file: None,
            reward_file: PathBuf::from("reward.toml"),
            train_every_outcomes: 1000,
            train_every_ms: 60_000,
            durability: Durability::Always,
            learn: LearnConfig::default(),
            initial_schema: None,
            prior_var: 1.0,
            cluster: None,
            decision_ledger: PathBuf::from("logs/ledger"),
            max_examples: 200_000,
            checkpoint: None,
        }
    }
}

/// A failed log append as a status: `RESOURCE_EXHAUSTED` when the writer is behind (retry with
/// backoff), else `UNAVAILABLE`. Either way nothing was acknowledged.
fn log_status(what: &str, e: &nudge_records::LogError) -> Status {
    match e {
        nudge_records::LogError::Full(_) => Status::resource_exhausted(format!("{what}: {e}")),
        _ => Status::unavailable(format!("{what}: {e}")),
    }
}

/// The record of a validated `ReportOutcome`.
fn outcome_record(
    r: &pb::ReportOutcomeRequest,
    kind: OutcomeKind,
    time_ms: u64,
    received_ms: u64,
    late: bool,
) -> OutcomeRecord {
    OutcomeRecord {
        schema: OUTCOME_SCHEMA,
        event_id: r.event_id.clone(),
        decision_id: r.decision_id.clone(),
        kind,
        revenue: r.revenue,
        margin: r.margin,
        time_ms,
        received_ms,
        late,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct State {
    ledger: Ledger,
    /// Decision logs (the servers' on one machine, the stream's copy in cluster mode).
    tailers: Vec<(PathBuf, Tailer<DecisionRecord>)>,
    /// The outcome log: outcomes enter the ledger only from it, once durable, so the ledger
    /// and the log cursors a checkpoint saves always agree.
    outcome_tail: (PathBuf, Tailer<OutcomeRecord>),
    serving: Option<PolicyVersion>,
    trainings: u64,
    last_verdict: String,
    outcomes_since_training: u64,
    /// Cluster mode: stream messages that were not valid records (terminated, counted).
    malformed_streamed: u64,
    /// Stream messages not written again (see `StatusResponse.duplicates_dropped`).
    duplicates_dropped: u64,
    /// Cluster mode: the SERVING pointer's revision when it was last read; a version published
    /// from this state moves the pointer only if it is still there (`None`: never set).
    pointer: Option<u64>,
}

/// Records read per log per step when catching up at start (then the ledger is compacted).
const CATCH_UP_CHUNK: usize = 50_000;

impl State {
    fn poll_decisions(&mut self) -> usize {
        self.poll_decisions_at_most(usize::MAX)
    }

    fn poll_decisions_at_most(&mut self, max: usize) -> usize {
        let mut n = 0;
        for (_, t) in &mut self.tailers {
            match t.poll_at_most(max) {
                Ok(records) => {
                    n += records.len();
                    records.into_iter().for_each(|d| self.ledger.add_decision(d));
                }
                Err(e) => tracing::warn!(error = %e, "reading a decision log"),
            }
        }
        n
    }

    fn poll_outcomes_at_most(&mut self, max: usize) -> usize {
        match self.outcome_tail.1.poll_at_most(max) {
            Ok(records) => {
                records.iter().for_each(|o| self.ledger.add_outcome(o));
                records.len()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the outcome log");
                0
            }
        }
    }

    /// Reads every log to its end in pieces, compacting as it goes (start-up).
    fn catch_up(&mut self, window_ms: u64) {
        loop {
            let n = self.poll_outcomes_at_most(CATCH_UP_CHUNK) + self.poll_decisions_at_most(CATCH_UP_CHUNK);
            self.ledger.compact(window_ms, now_ms());
            if n == 0 {
                break;
            }
        }
        let orphans = self.ledger.drop_orphans();
        if orphans > 0 {
            tracing::info!(orphans, "outcomes of decisions no longer in the ledger were let go");
        }
    }

    fn cursors(&self) -> std::collections::BTreeMap<PathBuf, nudge_records::Cursor> {
        let mut c: std::collections::BTreeMap<_, _> =
            self.tailers.iter().map(|(d, t)| (d.clone(), t.cursor())).collect();
        c.insert(self.outcome_tail.0.clone(), self.outcome_tail.1.cursor());
        c
    }

    /// How far the ledger has read the log in `dir` (its end, once `poll_*` returned).
    fn cursor(&self, dir: &Path) -> Option<nudge_records::Cursor> {
        if self.outcome_tail.0 == dir {
            return Some(self.outcome_tail.1.cursor());
        }
        self.tailers.iter().find(|(d, _)| d == dir).map(|(_, t)| t.cursor())
    }

    fn malformed_decisions(&self) -> u64 {
        self.tailers.iter().map(|(_, t)| t.malformed()).sum::<u64>() + self.malformed_streamed
    }
}

/// The optimizer's shared state: ledger, reward, logs, registry and the servers it pushes to.
pub struct Optimizer {
    cfg: OptimizerConfig,
    reward: Reward,
    registry: Registry,
    state: Mutex<State>,
    outcomes: EventLog,
    audit: AuditTrail,
    wake: Notify,
    admin: AdminClients,
    cluster: Option<Cluster>,
    /// Cluster mode: leadership among the optimizers; only its holder trains and publishes.
    lease: Option<Lease>,
    /// Cluster mode: wakes `ReportOutcome` calls waiting for a decision to arrive.
    decisions_arrived: Notify,
}

fn kind(k: i32) -> Option<OutcomeKind> {
    Some(match pb::OutcomeKind::try_from(k).ok()? {
        pb::OutcomeKind::Shown => OutcomeKind::Shown,
        pb::OutcomeKind::Click => OutcomeKind::Click,
        pb::OutcomeKind::AddToCart => OutcomeKind::AddToCart,
        pb::OutcomeKind::Convert => OutcomeKind::Convert,
        pb::OutcomeKind::Decline => OutcomeKind::Decline,
        pb::OutcomeKind::OptOut => OutcomeKind::OptOut,
        pb::OutcomeKind::Complaint => OutcomeKind::Complaint,
        pb::OutcomeKind::Unspecified => return None,
    })
}

/// How the optimizer reaches the servers' admin listeners: token and TLS per the config.
struct AdminClients {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl AdminClients {
    fn new(cfg: &OptimizerConfig) -> Result<Self, OptimizerError> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| OptimizerError::file(p, e));
        let token = match &cfg.admin_token_file {
            Some(p) => {
                let t = String::from_utf8_lossy(&read(p)?).trim().to_string();
                Some(
                    format!("Bearer {t}")
                        .parse()
                        .map_err(|_| OptimizerError::config(p, "the token must be printable ASCII"))?,
                )
            }
            None => None,
        };
        let tls = match &cfg.tls_ca_file {
            Some(p) => Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(p)?)),
            ),
            None => None,
        };
        Ok(Self { token, tls })
    }

    async fn connect(
        &self,
        server: &str,
    ) -> Result<
        pb::policy_admin_client::PolicyAdminClient<
            tonic::service::interceptor::InterceptedService<
                tonic::transport::Channel,
                impl tonic::service::Interceptor,
            >,
        >,
        tonic::transport::Error,
    > {
        let mut ep = tonic::transport::Endpoint::from_shared(server.to_string())?;
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        let channel = ep.connect().await?;
        let token = self.token.clone();
        Ok(pb::policy_admin_client::PolicyAdminClient::with_interceptor(
            channel,
            move |mut req: Request<()>| {
                if let Some(t) = &token {
                    req.metadata_mut().insert("authorization", t.clone());
                }
                Ok(req)
            },
        ))
    }
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
        let kind = kind(r.kind).ok_or_else(|| invalid("kind", "must be one of the OutcomeKind values"))?;
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
        if let Some(cluster) = &self.cluster {
            return self.report_to_stream(cluster, r, kind, time_ms, received_ms).await;
        }
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
            outcome_record(&r, kind, time_ms, received_ms, late)
        };
        // Durable before acknowledged; a failed write frees the event id for a retry.
        if let Err(e) = self.outcomes.append(&record).await {
            self.lock()?.ledger.release_event(&r.event_id);
            return Err(log_status("outcome log", &e));
        }
        let mut st = self.lock()?;
        // This outcome and any other that became durable meanwhile.
        let n = st.poll_outcomes_at_most(usize::MAX) as u64;
        st.outcomes_since_training += n;
        if st.outcomes_since_training >= self.cfg.train_every_outcomes {
            self.wake.notify_one();
        }
        Ok(pb::ReportOutcomeResponse {
            duplicate: false,
            late: record.late,
        })
    }

    /// Cluster mode: the outcome is acknowledged once JetStream stores it (its event id as the
    /// message id: a retry inside the duplicate window is reported as a duplicate); the outcome
    /// consumer then writes it here. The decision may still be on its way from its server's
    /// forwarder, so an unknown one is waited for (up to 3 s) before `NOT_FOUND`.
    async fn report_to_stream(
        &self,
        cluster: &Cluster,
        r: pb::ReportOutcomeRequest,
        kind: OutcomeKind,
        time_ms: u64,
        received_ms: u64,
    ) -> Result<pb::ReportOutcomeResponse, Status> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let decision_time = loop {
            let arrived = self.decisions_arrived.notified();
            if let Some(d) = self.lock()?.ledger.decision(&r.decision_id) {
                break d.time_ms;
            }
            if tokio::time::timeout_at(deadline.into(), arrived).await.is_err() {
                return Err(Status::not_found(format!(
                    "decision_id: no decision `{}` has reached the optimizer (retry if it was just made)",
                    r.decision_id
                )));
            }
        };
        let late = time_ms > decision_time.saturating_add(self.reward.window_ms);
        if self.lock()?.ledger.has_event(&r.event_id) {
            return Ok(pb::ReportOutcomeResponse { duplicate: true, late });
        }
        let record = outcome_record(&r, kind, time_ms, received_ms, late);
        let duplicate = cluster
            .publish(OUTCOMES_STREAM, &record)
            .await
            .map_err(|e| Status::unavailable(format!("outcome stream: {e}")))?;
        Ok(pb::ReportOutcomeResponse { duplicate, late })
    }

    /// Applies consumed records: ids the ledger or the log (`kept`) holds are not written
    /// again; the rest are written to `log` in `dir` (one group commit for the batch) and read
    /// into the ledger from there (`after`); then the batch is done (its sequences recorded
    /// with the log's end, its messages acknowledged). A failed write acknowledges nothing:
    /// JetStream redelivers.
    async fn ingest_batch<T: Record>(
        &self,
        ingest: &mut Ingest<T>,
        batch: Vec<Delivery<T>>,
        (log, dir): (&EventLog, &Path),
        known: impl Fn(&crate::ledger::Ledger, &T) -> bool,
        after: impl Fn(&mut State),
    ) -> Result<usize, OptimizerError> {
        let mut fresh = Vec::new();
        {
            let mut st = self.state.lock().map_err(|_| OptimizerError::Poisoned)?;
            // Two copies of one id inside a batch: the first is written.
            let mut ids = std::collections::HashSet::new();
            for d in &batch {
                match &d.record {
                    Err(reason) => {
                        tracing::warn!(%reason, stream = T::PREFIX, "a malformed record in the stream, terminated");
                        st.malformed_streamed += 1;
                    }
                    Ok(rec) if !d.kept && !known(&st.ledger, rec) && ids.insert(rec.id().to_string()) => {
                        fresh.push(rec)
                    }
                    Ok(_) => st.duplicates_dropped += 1,
                }
            }
        }
        let n = fresh.len();
        for w in futures::future::join_all(fresh.into_iter().map(|r| log.append(r))).await {
            // Nothing of the batch is acked; it comes back after the ack wait.
            w?;
        }
        // Into the ledger from the log just written (as every record gets there).
        let log_end = {
            let mut st = self.state.lock().map_err(|_| OptimizerError::Poisoned)?;
            after(&mut st);
            st.cursor(dir)
                .ok_or(OptimizerError::Task(format!("no reader of {}", dir.display())))?
        };
        ingest.done(&batch, log_end).await?;
        Ok(n)
    }

    /// Follows one stream for as long as the optimizer runs, reconnecting after failures.
    async fn consume<T: Record + Send + Sync + 'static>(
        self: Arc<Self>,
        stream: &'static str,
        log: EventLog,
        state_dir: PathBuf,
        known: fn(&crate::ledger::Ledger, &T) -> bool,
        after: fn(&mut State),
    ) {
        let Some(cluster) = self.cluster.clone() else { return };
        loop {
            let opened = async {
                cluster.ensure().await?;
                cluster.ingest::<T>(stream, &state_dir).await
            };
            let mut ingest = match opened.await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "cannot consume the stream yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // What a batch wrote before a crash took its record: kept, whenever it comes back.
            if let Some(from) = ingest.log_end() {
                match Tailer::<T>::resume(&state_dir, from).poll() {
                    Ok(recs) => ingest.kept_before(recs.iter().map(|r| r.id().to_string())),
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "reading the end of the consumer's log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let mut dropped = 0;
            loop {
                let batch = ingest.next_batch(2_000, Duration::from_millis(500)).await;
                let now_dropped = ingest.redeliveries_dropped();
                if let Ok(mut st) = self.state.lock() {
                    st.duplicates_dropped += now_dropped - dropped;
                }
                dropped = now_dropped;
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "consuming");
                        break;
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                match self
                    .ingest_batch(&mut ingest, batch, (&log, &state_dir), known, after)
                    .await
                {
                    Ok(n) if n > 0 && stream == DECISIONS_STREAM => self.decisions_arrived.notify_waiters(),
                    Ok(_) => {
                        let due = self
                            .state
                            .lock()
                            .is_ok_and(|st| st.outcomes_since_training >= self.cfg.train_every_outcomes);
                        if due {
                            self.wake.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "a batch was not kept; JetStream redelivers it");
                        break;
                    }
                }
            }
            if dropped > 0 {
                tracing::info!(%stream, dropped, "redeliveries of records already kept were dropped");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks every server what it serves. A server serving nothing gets the registry's serving
    /// version; a server serving another version of this registry (an operator rolled back)
    /// wins: the registry follows it, and it is what the next candidate is judged against.
    /// Nothing is ever pushed over an operator's rollback.
    async fn reconcile(&self) -> Result<(), OptimizerError> {
        if let Some(cluster) = &self.cluster {
            return self.reconcile_cluster(cluster).await;
        }
        for server in &self.cfg.servers {
            let listed = async {
                let mut c = self
                    .admin
                    .connect(server)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                c.list_policies(pb::ListPoliciesRequest {}).await
            };
            let serving = match tokio::time::timeout(Duration::from_secs(10), listed).await {
                Ok(Ok(r)) => r.into_inner().serving_version,
                Ok(Err(e)) => {
                    tracing::warn!(%server, error = %e, "asking what the server serves");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%server, "asking what the server serves: timed out");
                    continue;
                }
            };
            let ours = self
                .lock()
                .ok()
                .and_then(|st| st.serving.as_ref().map(|s| s.manifest.version.clone()));
            if serving.is_empty() {
                if let Some(pv) = self.lock().ok().and_then(|st| st.serving.clone()) {
                    self.push_one(server, &pv).await;
                }
            } else if Some(&serving) != ours.as_ref() {
                match self.registry.rollback(&serving) {
                    Ok(pv) => {
                        tracing::info!(%server, version = %serving, previous = ?ours, "the server was rolled back; serving follows it");
                        if let Ok(mut st) = self.lock() {
                            st.serving = Some(pv);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%server, version = %serving, error = %e, "the server serves a version this registry lacks")
                    }
                }
            }
        }
        Ok(())
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.cfg
            .checkpoint
            .clone()
            .unwrap_or_else(|| self.cfg.outcome_log.join("ledger.checkpoint.json"))
    }

    /// Cluster mode: the SERVING pointer is the truth. Unset, this optimizer's serving version is
    /// stored in the cluster and pointed at; set to another version (an operator's load or
    /// rollback on a server), the registry follows it.
    async fn reconcile_cluster(&self, cluster: &Cluster) -> Result<(), OptimizerError> {
        cluster.ensure().await?;
        let ours = self
            .lock()
            .ok()
            .and_then(|st| st.serving.as_ref().map(|s| s.manifest.version.clone()));
        let entry = cluster.serving_entry(POLICY).await?;
        if let Ok(mut st) = self.lock() {
            st.pointer = entry.as_ref().map(|(_, r)| *r);
        }
        match entry {
            None => {
                if let Some(pv) = self.lock().ok().and_then(|st| st.serving.clone()) {
                    self.store_in_cluster(cluster, &pv).await?;
                    if !cluster.move_serving(POLICY, &pv.manifest.version, None).await? {
                        tracing::info!("another optimizer set the serving pointer first; following it next round");
                    }
                }
            }
            Some((v, _)) if Some(&v) != ours.as_ref() => {
                let pv = match self.registry.load(&v) {
                    Ok(pv) => pv,
                    Err(_) => {
                        let (manifest, files) = from_file_set(cluster.get_artifact(POLICY, &v).await?);
                        self.registry.store_encoded(&manifest, &files)?
                    }
                };
                self.registry.set_serving(&v)?;
                tracing::info!(version = %v, previous = ?ours, "the cluster serves another version; the optimizer follows it");
                if let Ok(mut st) = self.lock() {
                    st.serving = Some(pv);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Whether this optimizer trains and publishes: always on one machine; in a cluster, while
    /// it holds the lease.
    fn leads(&self) -> bool {
        self.lease.as_ref().is_none_or(Lease::held)
    }

    /// A name for a new version: the registry's next one, claimed in the cluster in cluster
    /// mode (a name another optimizer claimed is skipped).
    async fn new_version_name(&self) -> Result<String, OptimizerError> {
        let mut version = self.registry.next_version();
        let Some(cluster) = &self.cluster else {
            return Ok(version);
        };
        while !cluster.claim_version(POLICY, &version).await? {
            version = self.registry.next_version_above(&version);
        }
        Ok(version)
    }

    async fn store_in_cluster(&self, cluster: &Cluster, pv: &PolicyVersion) -> Result<(), OptimizerError> {
        let (manifest, files) = pv.encode()?;
        cluster
            .put_artifact(POLICY, &pv.manifest.version, &to_file_set(manifest, files))
            .await?;
        Ok(())
    }

    /// One training round: join, train, judge, and push if the gate passes.
    async fn train_round(self: &Arc<Self>) -> Result<Option<String>, OptimizerError> {
        self.reconcile().await?;
        let leads = self.leads();
        let (serving, examples, checkpoint) = {
            let mut st = self.state.lock().map_err(|_| OptimizerError::Poisoned)?;
            st.poll_decisions();
            st.outcomes_since_training = 0;
            let Some(serving) = st.serving.clone() else {
                return Err(OptimizerError::NoServingPolicy);
            };
            // A standby compacts too: its memory is bounded like the leader's.
            let examples = if leads {
                st.ledger.examples(&self.reward, now_ms())
            } else {
                st.ledger.compact(self.reward.window_ms, now_ms());
                Vec::new()
            };
            (serving, examples, st.ledger.checkpoint(st.cursors()))
        };
        let path = self.checkpoint_path();
        match tokio::task::spawn_blocking(move || checkpoint.save(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "saving the ledger checkpoint (start-up will read more of the logs)")
            }
            Err(e) => tracing::warn!(error = %e, "saving the ledger checkpoint"),
        }
        if !leads {
            // A standby: its ledger and checkpoint are kept current; the leader trains.
            return Ok(None);
        }
        let cfg = self.cfg.learn.clone();
        let n = examples.len();
        let judged = tokio::task::spawn_blocking(move || {
            train_and_judge(&serving.policy, &examples, &cfg).map(|r| (serving, r))
        })
        .await
        .map_err(|e| OptimizerError::Task(e.to_string()))?;
        let (serving, (candidate, verdict)) = match judged {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(examples = n, reason = %e, "not training yet");
                return Ok(None);
            }
        };
        let version = self.new_version_name().await?;
        self.audit_verdict(&version, &serving.manifest.version, &verdict).await;
        {
            let mut st = self.state.lock().map_err(|_| OptimizerError::Poisoned)?;
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
        Ok(self.publish(pv).await?.then_some(version))
    }

    async fn audit_verdict(&self, version: &str, serving: &str, v: &Verdict) {
        let event = AuditEvent::Judged {
            candidate_version: version.into(),
            serving_version: serving.into(),
            verdict: Box::new(v.clone()),
        };
        self.audit.record(now_ms(), event).await;
    }

    /// Writes the version to the registry, pushes it to every server (in a cluster: stores it
    /// and moves the pointer from where this round found it), then marks it serving. Returns
    /// false when the cluster's pointer had moved: the version is kept in the registry and the
    /// cluster's store, not served.
    async fn publish(&self, pv: PolicyVersion) -> Result<bool, OptimizerError> {
        let version = pv.manifest.version.clone();
        self.registry.publish(&pv)?;
        let t0 = Instant::now();
        if let Some(cluster) = &self.cluster {
            // Every server follows the pointer, including those down right now.
            self.store_in_cluster(cluster, &pv).await?;
            let from = self.lock().ok().and_then(|st| st.pointer);
            if !cluster.move_serving(POLICY, &version, from).await? {
                tracing::warn!(%version, "the serving pointer moved while this version was made; it is not served");
                let reason = "the cluster's serving pointer moved while it was trained".into();
                let event = AuditEvent::Superseded {
                    version: version.clone(),
                    reason,
                };
                self.audit.record(now_ms(), event).await;
                self.reconcile_cluster(cluster).await?;
                return Ok(false);
            }
        } else {
            for server in &self.cfg.servers {
                self.push_one(server, &pv).await;
            }
        }
        let push_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let event = AuditEvent::Pushed {
            version: version.clone(),
            servers: if self.cluster.is_some() {
                Vec::new()
            } else {
                self.cfg.servers.clone()
            },
            push_ms,
        };
        self.audit.record(now_ms(), event).await;
        self.registry.set_serving(&version)?;
        tracing::info!(%version, push_ms, "policy pushed");
        if let Ok(mut st) = self.state.lock() {
            st.serving = Some(pv);
        }
        Ok(true)
    }

    /// Announces `pv` to one server; a server that refuses or is down is logged (it keeps
    /// serving what it had, and gets the next version).
    async fn push_one(&self, server: &str, pv: &PolicyVersion) {
        let version = &pv.manifest.version;
        let (manifest, files) = match pv.encode() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(%version, error = %e, "encoding the policy");
                return;
            }
        };
        let req = pb::LoadPolicyRequest {
            manifest,
            files: files.into_iter().collect(),
        };
        let pushed = async {
            let mut c = self
                .admin
                .connect(server)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            c.load_policy(req).await
        };
        match tokio::time::timeout(Duration::from_secs(10), pushed).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(%server, %version, error = %e, "push refused or failed"),
            Err(_) => tracing::error!(%server, %version, "push timed out"),
        }
    }
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
            malformed_decisions: st.malformed_decisions(),
            duplicates_dropped: st.duplicates_dropped,
            leader: self.0.leads(),
        }))
    }

    async fn audit(&self, request: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let req = request.into_inner();
        if req.limit as usize > crate::audit::KEPT {
            return Err(Status::invalid_argument(format!(
                "limit: at most {} entries are kept for this call (the audit log has them all)",
                crate::audit::KEPT
            )));
        }
        let before = u64::try_from(req.before_unix_ms)
            .map_err(|_| Status::invalid_argument("before_unix_ms: must not be negative"))?;
        let entries = self.0.audit.latest(req.limit as usize, before);
        Ok(Response::new(pb::AuditResponse {
            entries: entries.iter().map(crate::audit::to_proto).collect(),
        }))
    }
}

/// A started optimizer.
pub struct RunningOptimizer {
    /// Where ReportOutcome and Status listen.
    pub grpc_addr: SocketAddr,
    optimizer: Arc<Optimizer>,
    shutdown: Option<oneshot::Sender<()>>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    trainer: tokio::task::JoinHandle<()>,
    /// Cluster mode: the stream consumers.
    consumers: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningOptimizer {
    /// Stops training and the gRPC service; in a cluster a standby optimizer leads at once.
    pub async fn shutdown(mut self) {
        self.trainer.abort();
        self.consumers.iter().for_each(tokio::task::JoinHandle::abort);
        if let Some(lease) = &self.optimizer.lease {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "handing the optimizer lease over (a standby waits it out)");
            }
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.grpc.await;
    }

    /// Runs one training round now (reconcile, join, train, judge, audit, push if the gate
    /// passes), as the cadence would: benchmarks and simulations step rounds themselves.
    /// Returns the version pushed, if any.
    pub async fn train_now(&self) -> Result<Option<String>, OptimizerError> {
        self.optimizer.train_round().await
    }

    /// The verdict of the latest training round (JSON), as `Status` reports it.
    pub fn last_verdict(&self) -> String {
        self.optimizer
            .state
            .lock()
            .map(|s| s.last_verdict.clone())
            .unwrap_or_default()
    }

    /// Serves until the gRPC task ends.
    pub async fn wait(self) {
        let _ = self.grpc.await;
    }
}

/// Replays the logs, makes sure a version is serving, and starts the gRPC service and trainer.
pub async fn start(cfg: OptimizerConfig) -> Result<RunningOptimizer, OptimizerError> {
    let reward = Reward::load(&cfg.reward_file)?;
    cfg.learn.validate()?;
    let checkpoint_path = cfg
        .checkpoint
        .clone()
        .unwrap_or_else(|| cfg.outcome_log.join("ledger.checkpoint.json"));
    let (ledger, cursors) = match Checkpoint::load(&checkpoint_path)? {
        Some(c) => Ledger::from_checkpoint(c, cfg.max_examples),
        None => (Ledger::keeping(cfg.max_examples), Default::default()),
    };
    let log = |dir: &PathBuf, prefix: &str| EventLog::open(LogConfig::new(dir, prefix, cfg.durability));
    let outcomes = log(&cfg.outcome_log, "outcomes")?;
    let audit = AuditTrail::open(LogConfig::new(&cfg.audit_log, "audit", cfg.durability))?;
    let registry = Registry::open(&cfg.registry)?;
    let (cluster, decision_ledger) = match &cfg.cluster {
        Some(cc) => (
            Some(Cluster::connect(cc.clone()).await?),
            Some(log(&cfg.decision_ledger, "decisions")?),
        ),
        None => (None, None),
    };
    let mut dirs = cfg.decision_logs.clone();
    if cluster.is_some() {
        dirs.push(cfg.decision_ledger.clone());
    }
    let resume = |d: &PathBuf| cursors.get(d).cloned().unwrap_or_default();
    let mut state = State {
        tailers: dirs
            .iter()
            .map(|d| (d.clone(), Tailer::resume(d, &resume(d))))
            .collect(),
        outcome_tail: (
            cfg.outcome_log.clone(),
            Tailer::resume(&cfg.outcome_log, &resume(&cfg.outcome_log)),
        ),
        ledger,
        serving: registry.serving()?,
        trainings: 0,
        last_verdict: String::new(),
        outcomes_since_training: 0,
        malformed_streamed: 0,
        duplicates_dropped: 0,
        pointer: None,
    };
    let t0 = Instant::now();
    state.catch_up(reward.window_ms);
    tracing::info!(
        decisions = state.ledger.decisions(),
        outcomes = state.ledger.outcomes_recorded,
        secs = t0.elapsed().as_secs_f32(),
        "ledger read"
    );
    let malformed = state.outcome_tail.1.malformed();
    if malformed > 0 {
        tracing::warn!(malformed, log = %cfg.outcome_log.display(), "outcome-log lines that are not outcome records");
    }
    let opt = Arc::new(Optimizer {
        admin: AdminClients::new(&cfg)?,
        cfg: cfg.clone(),
        reward,
        registry,
        state: Mutex::new(state),
        outcomes: outcomes.clone(),
        audit,
        wake: Notify::new(),
        lease: cluster.as_ref().map(|c| Lease::new(c, "optimizer")),
        cluster,
        decisions_arrived: Notify::new(),
    });
    let mut consumers = Vec::new();
    if let Some(ledger_log) = decision_ledger {
        consumers.push(tokio::spawn(opt.clone().consume::<DecisionRecord>(
            DECISIONS_STREAM,
            ledger_log,
            cfg.decision_ledger.clone(),
            |l, d| l.decision(&d.decision_id).is_some(),
            |st| {
                st.poll_decisions();
            },
        )));
        consumers.push(tokio::spawn(opt.clone().consume::<OutcomeRecord>(
            OUTCOMES_STREAM,
            outcomes,
            cfg.outcome_log.clone(),
            |l, o| l.has_event(&o.event_id),
            |st| {
                let n = st.poll_outcomes_at_most(usize::MAX) as u64;
                st.outcomes_since_training += n;
            },
        )));
        // The pointer may name a version this registry has not seen (this optimizer is new, or
        // an operator loaded one on a server): follow it before deciding there is none.
        if let Err(e) = opt.reconcile().await {
            tracing::warn!(error = %e, "reading the cluster's serving pointer at start (retried every round)");
        }
    }
    let serving = opt.lock().ok().and_then(|st| st.serving.clone());
    match serving {
        // Servers that restarted empty get the serving version; rolled-back ones are followed.
        // In cluster mode that was done above (and is retried every round if NATS was down).
        Some(_) if opt.cluster.is_some() => {}
        Some(_) => opt.reconcile().await?,
        None => {
            let schema = cfg.initial_schema.clone().ok_or(OptimizerError::NoInitialSchema)?;
            let pv = PolicyVersion {
                manifest: PolicyManifest {
                    format: FORMAT,
                    version: opt.new_version_name().await?,
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
            pv.policy.validate()?;
            if !opt.publish(pv).await? {
                // Another optimizer started the cluster's first version meanwhile: follow it.
                opt.reconcile().await?;
            }
        }
    }
    if let Some(lease) = &opt.lease {
        let o = opt.clone();
        let period = lease.period();
        consumers.push(tokio::spawn(async move {
            let Some(lease) = &o.lease else { return };
            let mut led = false;
            loop {
                match lease.step().await {
                    Ok(leads) => {
                        if leads && !led {
                            tracing::info!("this optimizer leads: it trains and publishes");
                            // Catch up with the pointer and the ledger now, not a period later.
                            o.wake.notify_one();
                        } else if !leads && led {
                            tracing::info!("this optimizer stands by: another one leads");
                        }
                        led = leads;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the optimizer lease"),
                }
                tokio::time::sleep(period).await;
            }
        }));
    }

    let bind_err = |source| OptimizerError::Bind {
        addr: cfg.grpc_addr,
        source,
    };
    let incoming = tonic::transport::server::TcpIncoming::bind(cfg.grpc_addr)
        .map_err(bind_err)?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr().map_err(bind_err)?;
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
        optimizer: opt,
        shutdown: Some(tx),
        grpc,
        trainer,
        consumers,
    })
}

/// Reads and validates `optimizer.toml`.
pub fn load_config(path: &Path) -> Result<OptimizerConfig, OptimizerError> {
    let text = std::fs::read_to_string(path).map_err(|e| OptimizerError::file(path, e))?;
    let cfg: OptimizerConfig = toml::from_str(&text).map_err(|e| OptimizerError::config(path, e.to_string()))?;
    cfg.learn
        .validate()
        .map_err(|e| OptimizerError::config(path, e.to_string()))?;
    Ok(cfg)
}

/// Runs the service until SIGTERM or Ctrl-C; prints `listening grpc=ADDR` once ready.
pub fn run_from_file(path: &Path) -> Result<(), OptimizerError> {
    let cfg = load_config(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| OptimizerError::file(path, e))?;
    rt.block_on(async move {
        let running = start(cfg).await?;
        println!("listening grpc={}", running.grpc_addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| OptimizerError::Task(e.to_string()))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.shutdown().await;
        Ok(())
    })
}
