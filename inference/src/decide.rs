//! Offer decisions (`nudge.v1.Decisions`) and policy hot-loading (`nudge.v1.PolicyAdmin`).
//!
//! A decision reads one policy snapshot (an `Arc` out of an `ArcSwap`), so a swap never mixes
//! versions inside one answer and in-flight decisions finish on the version they started with.
//! Every decision is appended to the decision log, durable per the configured policy, before it
//! is answered; the customer id is logged only as a keyed hash and message text never is.
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::service::{finish, interpret, NluService};
use arc_swap::ArcSwapOption;
use hmac::{Hmac, Mac};
use nudge_eventlog::{Durability, EventLog, LogConfig};
use nudge_policy::version::{write_parts, PolicyVersion};
use nudge_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// `[decisions]` in the server's TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionsConfig {
    /// Local policy registry: one directory per version and a `SERVING` file naming the one
    /// served (so a restart serves what was serving).
    pub policy_registry: PathBuf,
    pub decision_log: PathBuf,
    pub durability: Durability,
    pub segment_bytes: u64,
    /// Key of the HMAC that pseudonymises customer ids in the log. Keep it secret and stable.
    pub customer_id_key: String,
    pub max_candidates: usize,
}

impl Default for DecisionsConfig {
    fn default() -> Self {
        Self {
            policy_registry: PathBuf::from("models/policies"),
            decision_log: PathBuf::from("logs/decisions"),
            durability: Durability::Always,
            segment_bytes: 64 << 20,
            customer_id_key: String::new(),
            max_candidates: 256,
        }
    }
}

const SERVING: &str = "SERVING";

/// The serving policy and the versions this server can roll back to.
pub struct PolicyStore {
    current: ArcSwapOption<PolicyVersion>,
    registry: PathBuf,
    /// Loads and rollbacks one at a time (the swap itself is lock-free for readers).
    admin: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PolicyStore {
    /// Serves the version `SERVING` names, if any; a bad one stops start-up.
    pub fn open(registry: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(registry).map_err(|e| format!("{}: {e}", registry.display()))?;
        let current = match std::fs::read_to_string(registry.join(SERVING)) {
            Ok(v) => {
                let v = v.trim();
                nudge_policy::version::check_version_name(v).map_err(|e| e.to_string())?;
                let pv = PolicyVersion::load(&registry.join(v)).map_err(|e| format!("policy {v}: {e}"))?;
                Some(Arc::new(pv))
            }
            Err(_) => None,
        };
        Ok(Self {
            current: ArcSwapOption::new(current),
            registry: registry.to_path_buf(),
            admin: Mutex::new(()),
        })
    }

    pub fn current(&self) -> Option<Arc<PolicyVersion>> {
        self.current.load_full()
    }

    fn point_at(&self, version: &str) -> Result<(), String> {
        let tmp = self.registry.join(format!(".{SERVING}.tmp"));
        std::fs::write(&tmp, version).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.registry.join(SERVING)).map_err(|e| e.to_string())
    }

    /// Validates, stores and swaps in a pushed version. Returns the previous version's name.
    pub fn load(&self, manifest: &[u8], files: &HashMap<String, Vec<u8>>) -> Result<String, RequestError> {
        let pv =
            PolicyVersion::from_parts(manifest, files).map_err(|e| RequestError::invalid("manifest", e.to_string()))?;
        let _guard = self
            .admin
            .lock()
            .map_err(|_| RequestError::Internal("policy admin lock poisoned".into()))?;
        let version = pv.manifest.version.clone();
        let dir = self.registry.join(&version);
        if dir.exists() {
            // Re-pushing a version is fine if it is the same one, byte for byte.
            let same = std::fs::read(dir.join(nudge_policy::version::MANIFEST)).is_ok_and(|m| m == manifest);
            if !same {
                return Err(RequestError::invalid(
                    "manifest.version",
                    format!("{version} exists here with different contents; versions are immutable"),
                ));
            }
        } else {
            write_parts(&self.registry, &version, manifest, files)
                .map_err(|e| RequestError::Internal(e.to_string()))?;
        }
        self.swap(pv)
    }

    pub fn rollback(&self, version: &str) -> Result<String, RequestError> {
        nudge_policy::version::check_version_name(version)
            .map_err(|e| RequestError::invalid("version", e.to_string()))?;
        let _guard = self
            .admin
            .lock()
            .map_err(|_| RequestError::Internal("policy admin lock poisoned".into()))?;
        let dir = self.registry.join(version);
        if !dir.is_dir() {
            return Err(RequestError::invalid(
                "version",
                format!("{version} was never loaded here"),
            ));
        }
        let pv = PolicyVersion::load(&dir).map_err(|e| RequestError::invalid("version", e.to_string()))?;
        self.swap(pv)
    }

    fn swap(&self, pv: PolicyVersion) -> Result<String, RequestError> {
        self.point_at(&pv.manifest.version).map_err(RequestError::Internal)?;
        let prev = self.current.swap(Some(Arc::new(pv)));
        Ok(prev.map(|p| p.manifest.version.clone()).unwrap_or_default())
    }

    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.registry)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

/// One logged decision: everything needed to learn from it and to evaluate other policies on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub time_ms: u64,
    pub conversation_id: String,
    /// HMAC-SHA256 of the customer id (hex, 32 chars); empty when none was given.
    pub customer: String,
    pub channel: String,
    pub policy_version: String,
    pub model_version: String,
    /// The context features the policy saw, by name (request features, channel, NLU, embedding sketch).
    pub context: BTreeMap<String, f64>,
    pub candidates: Vec<LoggedOffer>,
    /// Chosen offer id; empty for "no offer".
    pub offer_id: String,
    /// Index of the chosen option (candidates, then "no offer").
    pub option: usize,
    pub propensity: f64,
    pub probabilities: Vec<f64>,
    pub scores: Vec<f64>,
    pub how: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoggedOffer {
    pub id: String,
    pub features: BTreeMap<String, f64>,
}

pub struct DecisionService {
    nlu: Arc<NluService>,
    store: Arc<PolicyStore>,
    log: EventLog,
    key: Vec<u8>,
    max_candidates: usize,
    metrics: Metrics,
}

fn check_finite(field: String, v: f64) -> Result<(), RequestError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(RequestError::invalid(field, "must be a finite number"))
    }
}

fn check_id(field: &str, v: &str, required: bool) -> Result<(), RequestError> {
    if required && v.trim().is_empty() {
        return Err(RequestError::invalid(field, "must not be empty"));
    }
    if v.len() > 256 {
        return Err(RequestError::invalid(field, "longer than 256 bytes"));
    }
    Ok(())
}

impl DecisionService {
    pub fn new(
        nlu: Arc<NluService>,
        store: Arc<PolicyStore>,
        config: &DecisionsConfig,
        metrics: Metrics,
    ) -> Result<Self, String> {
        if config.customer_id_key.len() < 16 {
            return Err(
                "decisions.customer_id_key must be set (16 bytes or more): customer ids are logged only as its HMAC"
                    .into(),
            );
        }
        let log = EventLog::open(LogConfig {
            dir: config.decision_log.clone(),
            prefix: "decisions".into(),
            segment_bytes: config.segment_bytes,
            durability: config.durability,
        })
        .map_err(|e| e.to_string())?;
        Ok(Self {
            nlu,
            store,
            log,
            key: config.customer_id_key.as_bytes().to_vec(),
            max_candidates: config.max_candidates,
            metrics,
        })
    }

    fn pseudonym(&self, customer_id: &str) -> String {
        if customer_id.is_empty() {
            return String::new();
        }
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(customer_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    async fn decide_inner(&self, req: pb::DecideRequest) -> Result<pb::DecideResponse, RequestError> {
        let t0 = Instant::now();
        check_id("conversation_id", &req.conversation_id, true)?;
        check_id("customer_id", &req.customer_id, false)?;
        check_id("channel", &req.channel, false)?;
        if req.candidates.len() > self.max_candidates {
            return Err(RequestError::invalid(
                "candidates",
                format!(
                    "{} offers exceeds the limit of {}",
                    req.candidates.len(),
                    self.max_candidates
                ),
            ));
        }
        let mut ids = HashSet::new();
        for (i, c) in req.candidates.iter().enumerate() {
            check_id(&format!("candidates[{i}].id"), &c.id, true)?;
            if !ids.insert(c.id.as_str()) {
                return Err(RequestError::invalid(
                    format!("candidates[{i}].id"),
                    format!("`{}` appears twice", c.id),
                ));
            }
            for (k, v) in &c.features {
                check_finite(format!("candidates[{i}].features[{k}]"), *v)?;
            }
        }
        for (k, v) in &req.context {
            check_finite(format!("context[{k}]"), *v)?;
        }
        let Some(pv) = self.store.current() else {
            return Err(RequestError::FailedPrecondition(
                "no policy loaded: push one with PolicyAdmin.LoadPolicy".into(),
            ));
        };
        let policy = &pv.policy;
        if req.candidates.is_empty() && !policy.schema.allow_none {
            return Err(RequestError::invalid(
                "candidates",
                "empty, and the serving policy cannot choose \"no offer\"",
            ));
        }

        // NLU: computed here in the shared batched encoder pass, or taken from the caller.
        let (nlu, model_version, embedding) = if !req.text.is_empty() {
            let (m, mut answers) = self
                .nlu
                .understand_texts(&req.model, &[("text".to_string(), req.text.as_str())])
                .await?;
            let (a, truncated, count) = answers.remove(0);
            let u = interpret(&m, &a.output, 3, false, truncated, count);
            (Some(u), m.version().to_string(), Some(a.output.embedding.clone()))
        } else {
            let e = req.nlu.as_ref().map(|n| n.embedding.clone()).filter(|e| !e.is_empty());
            (req.nlu.clone(), String::new(), e)
        };

        let mut context: BTreeMap<String, f64> = req.context.iter().map(|(k, v)| (k.clone(), *v)).collect();
        if !req.channel.is_empty() {
            context.insert(format!("channel={}", req.channel), 1.0);
        }
        if let Some(u) = &nlu {
            if let Some(i) = &u.intent {
                context.insert(format!("intent={}", i.label), 1.0);
                context.insert("intent_confidence".into(), i.confidence as f64);
                context.insert("out_of_scope".into(), if i.out_of_scope { 1.0 } else { 0.0 });
            }
            if let Some(s) = &u.sentiment {
                for ls in &s.scores {
                    context.insert(format!("sentiment={}", ls.label), ls.score as f64);
                }
            }
        }
        if let (Some(p), Some(e)) = (&policy.projection, &embedding) {
            if p.ncols() == e.len() {
                for (i, row) in p.rows().into_iter().enumerate() {
                    let v: f64 = row.iter().zip(e).map(|(a, b)| a * *b as f64).sum();
                    context.insert(format!("emb_{i}"), v);
                }
            }
        }
        let ctx_map: HashMap<String, f64> = context.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let cvec = policy.schema.context_vector(&ctx_map);
        let offers: Vec<Vec<f64>> = req
            .candidates
            .iter()
            .map(|c| {
                policy
                    .schema
                    .offer_vector(&c.features.iter().map(|(k, v)| (k.clone(), *v)).collect())
            })
            .collect();
        let xs = policy.schema.options(&cvec, &offers);
        let t_policy = Instant::now();
        let choice = policy
            .choose(&xs, &mut rand::rng())
            .ok_or_else(|| RequestError::Internal("no options to choose from".into()))?;
        let offer_id = req
            .candidates
            .get(choice.option)
            .map(|c| c.id.clone())
            .unwrap_or_default();

        let decision_id = {
            use rand::Rng;
            let r: u128 = rand::rng().random();
            format!("{r:032x}")
        };
        let record = DecisionRecord {
            decision_id: decision_id.clone(),
            time_ms: now_ms(),
            conversation_id: req.conversation_id.clone(),
            customer: self.pseudonym(&req.customer_id),
            channel: req.channel.clone(),
            policy_version: pv.manifest.version.clone(),
            model_version: model_version.clone(),
            context,
            candidates: req
                .candidates
                .iter()
                .map(|c| LoggedOffer {
                    id: c.id.clone(),
                    features: c.features.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
                .collect(),
            offer_id: offer_id.clone(),
            option: choice.option,
            propensity: choice.propensity,
            probabilities: choice.probabilities.clone(),
            scores: choice.scores.clone(),
            how: choice.how.to_string(),
        };
        let compute_us = t_policy.elapsed().as_micros() as u64;
        // Durable before answered: an answer always has its log line.
        self.log
            .append(&record)
            .await
            .map_err(|e| RequestError::Internal(format!("decision log: {e}")))?;
        self.metrics.decisions.with_label_values(&[choice.how]).inc();

        let mut scores: Vec<pb::OfferScore> = req
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| pb::OfferScore {
                offer_id: c.id.clone(),
                score: choice.scores[i],
                probability: choice.probabilities[i],
            })
            .collect();
        if policy.schema.allow_none {
            let i = req.candidates.len();
            scores.push(pb::OfferScore {
                offer_id: String::new(),
                score: choice.scores[i],
                probability: choice.probabilities[i],
            });
        }
        Ok(pb::DecideResponse {
            decision_id,
            offer_id,
            propensity: choice.propensity,
            scores,
            policy_version: pv.manifest.version.clone(),
            nlu,
            model_version,
            trace: Some(pb::DecisionTrace {
                policy: policy.exploration.name().to_string(),
                how: choice.how.to_string(),
                propensity_std_error: choice.std_error,
                queue_us: (t_policy - t0).as_micros() as u64,
                compute_us,
            }),
        })
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

pub struct PolicyAdminService {
    pub store: Arc<PolicyStore>,
    pub metrics: Metrics,
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
        // Validation reads and checks every byte: off the async workers.
        let r = admin_change(&self.store, move |s| s.load(&req.manifest, &files)).await;
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
        let r = admin_change(&self.store, move |s| s.rollback(&req.version)).await;
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
