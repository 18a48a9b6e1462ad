//! Offer decisions (`nudge.v1.Decisions`) and policy hot-loading (`nudge.v1.PolicyAdmin`).
//!
//! A decision reads one policy snapshot (an `Arc` out of an `ArcSwap`), so a swap never mixes
//! versions inside one answer and in-flight decisions finish on the version they started with.
//! Every decision is appended to the decision log, durable per the configured policy, before it
//! is answered; the customer id is logged only as a keyed hash and message text never is. The
//! decision itself is five plain steps (`steps`): validate → featurize → choose → record → answer.
mod steps;

use crate::config::Secret;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::nlu::interpret;
use crate::service::{finish, NluService};
use arc_swap::ArcSwapOption;
use hmac::{Hmac, Mac};
use nudge_policy::{PolicyError, PolicyFiles, PolicyVersion, Registry};
use nudge_proto::v1 as pb;
use nudge_records::{Durability, EventLog, LogConfig, LogError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

pub use steps::{answer, check_against, choose, featurize, record, validate, Provenance};
pub(crate) use steps::{check_id, Candidate, DecideInput};

/// `[decisions]` in the server's TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionsConfig {
    /// Local policy registry: one directory per version and a `SERVING` file naming the one
    /// served (so a restart serves what was serving).
    pub policy_registry: PathBuf,
    /// Where decision logs go (`decisions-<ms>-<seq>.jsonl`).
    pub decision_log: PathBuf,
    /// When a decision counts as logged.
    pub durability: Durability,
    /// Decision-log segment size.
    pub segment_bytes: u64,
    /// Most decisions waiting for the log writer; beyond, Decide and Turn answer
    /// `RESOURCE_EXHAUSTED` at once rather than queueing without bound.
    pub queue_records: usize,
    /// Key of the HMAC that pseudonymises customer ids in the log. Keep it secret and stable.
    pub customer_id_key: Secret,
    /// Most candidates per request.
    pub max_candidates: usize,
}

impl Default for DecisionsConfig {
    fn default() -> Self {
        Self {
            policy_registry: PathBuf::from("models/policies"),
            decision_log: PathBuf::from("logs/decisions"),
            durability: Durability::Always,
            segment_bytes: 64 << 20,
            queue_records: 1 << 16,
            customer_id_key: Secret::default(),
            max_candidates: 256,
        }
    }
}

/// Validates a `Decide` request exactly as the service does before it reads any policy (ids,
/// candidates, features, numbers), for clients' own checks and the fuzzers.
pub fn validate_decide_request(req: pb::DecideRequest, max_candidates: usize) -> Result<(), RequestError> {
    validate(req, max_candidates).map(|_| ())
}

/// Why the decision service could not start.
#[derive(Debug, thiserror::Error)]
pub enum DecisionsError {
    /// The pseudonymisation key is missing or short.
    #[error("decisions.customer_id_key must be set (16 bytes or more): customer ids are logged only as its HMAC")]
    WeakKey,
    /// The policy registry cannot be read, or its serving version is bad.
    #[error("policy registry: {0}")]
    Registry(#[from] PolicyError),
    /// The decision log cannot be opened.
    #[error("decision log: {0}")]
    Log(#[from] LogError),
}

/// The serving policy and the registry of versions this server can roll back to.
pub struct PolicyStore {
    current: ArcSwapOption<PolicyVersion>,
    registry: Registry,
    /// Loads and rollbacks one at a time (the swap itself is lock-free for readers).
    admin: Mutex<()>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PolicyStore {
    /// Serves the version the registry's `SERVING` names, if any; a bad one stops start-up.
    pub fn open(registry: Registry) -> Result<Self, PolicyError> {
        let current = registry.serving()?.map(Arc::new);
        Ok(Self {
            current: ArcSwapOption::new(current),
            registry,
            admin: Mutex::new(()),
        })
    }

    /// The serving version.
    pub fn current(&self) -> Option<Arc<PolicyVersion>> {
        self.current.load_full()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, RequestError> {
        self.admin
            .lock()
            .map_err(|_| RequestError::Internal("policy admin lock poisoned".into()))
    }

    /// Validates, stores and swaps in a pushed version. Returns the previous version's name.
    pub fn load(&self, manifest: &[u8], files: &PolicyFiles) -> Result<String, RequestError> {
        let _guard = self.lock()?;
        let pv = self
            .registry
            .store_encoded(manifest, files)
            .map_err(|e| RequestError::invalid("manifest", e.to_string()))?;
        self.swap(pv)
    }

    /// Validates and stores a version without serving it (an experiment arm's, fetched from the
    /// cluster).
    pub fn keep(&self, manifest: &[u8], files: &PolicyFiles) -> Result<(), RequestError> {
        let _guard = self.lock()?;
        self.registry
            .store_encoded(manifest, files)
            .map(drop)
            .map_err(|e| RequestError::invalid("manifest", e.to_string()))
    }

    /// Serves a version loaded here before.
    pub fn rollback(&self, version: &str) -> Result<String, RequestError> {
        let _guard = self.lock()?;
        let pv = self.registry.load(version).map_err(|e| match e {
            PolicyError::Invalid { reason, .. } => RequestError::invalid("version", reason),
            other => RequestError::Internal(other.to_string()),
        })?;
        self.swap(pv)
    }

    fn swap(&self, pv: PolicyVersion) -> Result<String, RequestError> {
        self.registry
            .set_serving(&pv.manifest.version)
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        let prev = self.current.swap(Some(Arc::new(pv)));
        Ok(prev.map(|p| p.manifest.version.clone()).unwrap_or_default())
    }

    /// A version stored here, loaded (an experiment arm's), without serving it.
    pub fn version(&self, version: &str) -> Result<Arc<PolicyVersion>, RequestError> {
        self.registry.load(version).map(Arc::new).map_err(|e| match e {
            PolicyError::Invalid { reason, .. } => RequestError::invalid("version", reason),
            other => RequestError::Internal(other.to_string()),
        })
    }

    /// Versions stored here.
    pub fn versions(&self) -> Vec<String> {
        self.registry.versions()
    }
}

/// The Decisions service.
pub struct DecisionService {
    nlu: Arc<NluService>,
    pub(crate) store: Arc<PolicyStore>,
    pub(crate) log: EventLog,
    key: Secret,
    max_candidates: usize,
    metrics: Metrics,
}

impl DecisionService {
    /// Opens the decision log; refuses a missing or short pseudonymisation key.
    pub fn new(
        nlu: Arc<NluService>,
        store: Arc<PolicyStore>,
        config: &DecisionsConfig,
        metrics: Metrics,
    ) -> Result<Self, DecisionsError> {
        if config.customer_id_key.expose().len() < 16 {
            return Err(DecisionsError::WeakKey);
        }
        let log = EventLog::open(LogConfig {
            segment_bytes: config.segment_bytes,
            queue_records: config.queue_records,
            ..LogConfig::new(&config.decision_log, "decisions", config.durability)
        })?;
        Ok(Self {
            nlu,
            store,
            log,
            key: config.customer_id_key.clone(),
            max_candidates: config.max_candidates,
            metrics,
        })
    }

    /// The keyed hash a customer id is kept and logged as ("" for none).
    pub(crate) fn pseudonym(&self, customer_id: &str) -> String {
        if customer_id.is_empty() {
            return String::new();
        }
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(self.key.expose().as_bytes()) else {
            return String::new();
        };
        mac.update(customer_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    async fn decide_inner(&self, req: pb::DecideRequest) -> Result<pb::DecideResponse, RequestError> {
        let t0 = Instant::now();
        let input = validate(req, self.max_candidates)?;
        let Some(pv) = self.store.current() else {
            return Err(RequestError::FailedPrecondition(
                "no policy loaded: push one with PolicyAdmin.LoadPolicy".into(),
            ));
        };
        let policy = &pv.policy;
        check_against(&input, policy)?;

        // NLU: computed here in the shared batched encoder pass, or taken from the caller.
        let (nlu, model_version) = match &input.text {
            Some(text) => {
                let (m, mut answers) = self
                    .nlu
                    .understand_texts(&input.model, &[("text".to_string(), text.as_str())])
                    .await?;
                let (a, truncated, count) = answers.remove(0);
                let mut u = interpret(&m, &a.output, 3, false, truncated, count);
                // The embedding feeds the projection; it is not echoed back to the caller.
                u.embedding = a.output.embedding;
                (Some(u), m.version().to_string())
            }
            None => (input.nlu.clone(), String::new()),
        };

        let context = featurize(&input.context, &input.channel, nlu.as_ref(), policy);
        let t_policy = Instant::now();
        let choice = choose(policy, &context, &input.candidates, &mut rand::rng())?;
        let decision_id = {
            use rand::Rng;
            let r: u128 = rand::rng().random();
            format!("{r:032x}")
        };
        let rec = record(
            &input,
            context,
            &choice,
            Provenance {
                decision_id,
                time_ms: now_ms(),
                customer: self.pseudonym(&input.customer_id),
                policy_version: &pv.manifest.version,
                model_version: &model_version,
            },
        );
        let compute_us = t_policy.elapsed().as_micros() as u64;
        // Durable before answered: an answer always has its log line.
        self.log.append(&rec).await.map_err(RequestError::decision_log)?;
        self.metrics.decisions.with_label_values(&[choice.how]).inc();
        let nlu = nlu.map(|mut u| {
            if input.text.is_some() {
                u.embedding.clear();
            }
            u
        });
        let trace = pb::DecisionTrace {
            policy: policy.exploration.name().to_string(),
            how: choice.how.to_string(),
            propensity_std_error: choice.std_error,
            queue_us: (t_policy - t0).as_micros() as u64,
            compute_us,
        };
        Ok(answer(&rec, &choice, policy, nlu, trace))
    }
}

/// Runs a policy-store change on the blocking pool (it reads, checks and writes files) and
/// answers with the versions before and after.
async fn admin_change(
    store: &Arc<PolicyStore>,
    change: impl FnOnce(&PolicyStore) -> Result<String, RequestError> + Send + 'static,
) -> Result<pb::LoadPolicyResponse, RequestError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || change(&store).map(|prev| (store.current(), prev)))
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))?
        .map(|(cur, prev)| pb::LoadPolicyResponse {
            serving_version: cur.map(|c| c.manifest.version.clone()).unwrap_or_default(),
            previous_version: prev,
        })
}

#[tonic::async_trait]
impl pb::decisions_server::Decisions for DecisionService {
    async fn decide(&self, request: Request<pb::DecideRequest>) -> Result<Response<pb::DecideResponse>, Status> {
        let start = Instant::now();
        let r = self.decide_inner(request.into_inner()).await;
        finish(&self.metrics, "Decide", start, r)
    }
}

/// The PolicyAdmin service (admin listener only); the console changes policies through it too.
#[derive(Clone)]
pub struct PolicyAdminService {
    /// The store it changes.
    pub store: Arc<PolicyStore>,
    /// Request metrics.
    pub metrics: Metrics,
    /// In cluster mode loads and rollbacks move the cluster's SERVING pointer (`crate::cluster`).
    pub cluster: Option<nudge_cluster::Cluster>,
}

impl PolicyAdminService {
    /// Serves a version stored here: in cluster mode by moving the cluster's SERVING pointer
    /// (every server follows), otherwise here. Returns the previous version.
    pub async fn serve(&self, version: &str) -> Result<String, RequestError> {
        match &self.cluster {
            Some(c) => crate::cluster::point_at(c, &self.store, &self.metrics, version).await,
            None => {
                let v = version.to_string();
                admin_change(&self.store, move |s| s.rollback(&v))
                    .await
                    .map(|r| r.previous_version)
            }
        }
    }

    /// Versions stored here, and the serving one.
    pub fn versions(&self) -> (Vec<String>, Option<String>) {
        (
            self.store.versions(),
            self.store.current().map(|p| p.manifest.version.clone()),
        )
    }

    fn answer(&self, previous_version: String) -> pb::LoadPolicyResponse {
        pb::LoadPolicyResponse {
            serving_version: self
                .store
                .current()
                .map(|c| c.manifest.version.clone())
                .unwrap_or_default(),
            previous_version,
        }
    }
}

#[tonic::async_trait]
impl pb::policy_admin_server::PolicyAdmin for PolicyAdminService {
    async fn load_policy(
        &self,
        request: Request<pb::LoadPolicyRequest>,
    ) -> Result<Response<pb::LoadPolicyResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let files: HashMap<String, Vec<u8>> = req.files.into_iter().collect();
        let r = match &self.cluster {
            Some(c) => crate::cluster::publish(c, &self.store, &self.metrics, req.manifest, files)
                .await
                .map(|prev| self.answer(prev)),
            // Validation reads and checks every byte: off the async workers.
            None => admin_change(&self.store, move |s| s.load(&req.manifest, &files)).await,
        };
        if let Ok(r) = &r {
            tracing::info!(version = %r.serving_version, previous = %r.previous_version, "policy loaded");
        }
        finish(&self.metrics, "LoadPolicy", start, r)
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::LoadPolicyResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = self.serve(&req.version).await.map(|prev| self.answer(prev));
        if let Ok(r) = &r {
            tracing::info!(version = %r.serving_version, previous = %r.previous_version, "policy rolled back");
        }
        finish(&self.metrics, "Rollback", start, r)
    }

    async fn list_policies(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        Ok(Response::new(pb::ListPoliciesResponse {
            serving_version: self
                .store
                .current()
                .map(|c| c.manifest.version.clone())
                .unwrap_or_default(),
            loaded_versions: self.store.versions(),
        }))
    }
}
