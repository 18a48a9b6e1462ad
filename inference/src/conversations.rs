//! `nudge.v1.Conversations`: a conversation turn by turn. A turn's way: validate → understand
//! the text (the shared batched encoder pass) → link products (`nudge_strategy::link`) → under
//! the store lock: take the turn into the state, plan (rules → guardrails → prices), let the
//! serving policy choose among the candidates (or, with no policy loaded, the highest priority,
//! logged with propensity 1) → without the lock: the optional external risk check, failing
//! closed → under the lock again: commit (every guardrail checked again, so a concurrent turn
//! of the same customer cannot slip past a cap) → log the decision durably (the same
//! `DecisionRecord` Decide writes) → answer with the state, the hand-off signal and the priced
//! offer. `StrategyAdmin` swaps catalog and rules whole; a turn keeps the version it started on.
//!
//! If the decision log fails after a commit, the caller gets UNAVAILABLE and the conversation
//! counts an offer the customer never saw: the error costs an offer, never adds one.
use crate::decide::{choose, featurize, now_ms, record, Candidate, DecideInput, DecisionService, Provenance};
use crate::error::RequestError;
use crate::experiment::{ArmChooser, ArmPolicy, ExperimentSpec, Running, SpecError};
use crate::kpi::Kpis;
use crate::metrics::Metrics;
use crate::nlu::{interpret, Understanding};
use crate::service::{finish, NluService};
use arc_swap::{ArcSwap, ArcSwapOption};
use nudge_policy::{context as names, Choice};
use nudge_proto::v1 as pb;
use nudge_records::{ConversationEvent, Durability, EventKind, EventLog, LogConfig, OutcomeKind, Tailer, EVENT_SCHEMA};
use nudge_strategy::conversation::{
    Conversation, ConversationStore, OfferStatus, Snapshot, StoreLimits, TurnFacts, SNAPSHOT_SCHEMA,
};
use nudge_strategy::engine::{Clock, CustomerProfile, Ledger, Plan, Strategy};
use nudge_strategy::guardrails::Guardrails;
use nudge_strategy::link::SkuLinker;
use nudge_strategy::pricing::CartLine;
use nudge_strategy::rules::{Rules, Stage, Vocabulary};
use nudge_strategy::{Catalog, Cents, Channel, StrategyError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::{Request, Response, Status};

/// `[strategy]` in the server's TOML: the shop's catalog and rules, the guardrails, the
/// conversation store's bounds. Needs `[decisions]` (its log and customer key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// The catalog file (TOML, may name a products CSV).
    pub catalog: PathBuf,
    /// The operators' rules file.
    pub rules: PathBuf,
    /// The shop's time zone as an offset from UTC, in hours (quiet hours, days, rule hours).
    #[serde(default)]
    pub utc_offset_hours: i8,
    /// Limits nobody lifts.
    #[serde(default)]
    pub guardrails: Guardrails,
    /// Bounds of the conversation store.
    #[serde(default)]
    pub conversations: StoreLimits,
    /// Longest cart accepted, in lines.
    #[serde(default = "default_max_cart_lines")]
    pub max_cart_lines: usize,
    /// An external risk-control service (`nudge.v1.RiskControl`) asked before every offer.
    #[serde(default)]
    pub risk: Option<RiskConfig>,
    /// Where conversations, caps, opt-outs and budgets are kept across restarts (a snapshot
    /// written every `snapshot_every_seconds` when something changed, and at shutdown). None:
    /// they live in memory only.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How often the snapshot is written; a crash loses at most this much.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_seconds: u64,
    /// Where every turn and outcome is logged as a `ConversationEvent` (`events-*.jsonl`): the
    /// console's KPIs and experiment verdicts are rebuilt from it at start, and in a cluster it
    /// is forwarded so that every server's KPIs count every server's events. None: they count
    /// this server's events from its start only.
    #[serde(default)]
    pub events_log: Option<PathBuf>,
    /// Hours of per-minute KPIs kept in memory (and read back from `events_log` at start).
    #[serde(default = "default_kpi_hours")]
    pub kpi_hours: u64,
}

fn default_kpi_hours() -> u64 {
    48
}

fn default_snapshot_every() -> u64 {
    5
}

/// `[strategy.risk]`: where the risk check is and how long it may take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// e.g. `http://127.0.0.1:7070`.
    pub endpoint: String,
    /// Deadline per check; past it the offer is not made.
    #[serde(default = "default_risk_timeout")]
    pub timeout_ms: u64,
}

fn default_risk_timeout() -> u64 {
    150
}

/// The risk check's client. Fails closed: an error, a refusal or a missed deadline is `Err`
/// with the reason, and the offer is not made.
struct RiskCheck {
    client: pb::risk_control_client::RiskControlClient<tonic::transport::Channel>,
    timeout: std::time::Duration,
}

impl RiskCheck {
    fn new(config: &RiskConfig) -> Result<RiskCheck, StrategyLoadError> {
        let timeout = std::time::Duration::from_millis(config.timeout_ms.max(1));
        let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| StrategyLoadError::Risk(format!("endpoint `{}`: {e}", config.endpoint)))?
            .connect_timeout(timeout);
        Ok(RiskCheck {
            // Connected on first use, so a risk service that starts later is found.
            client: pb::risk_control_client::RiskControlClient::new(endpoint.connect_lazy()),
            timeout,
        })
    }

    async fn check(
        &self,
        conversation_id: &str,
        customer: &str,
        channel: Channel,
        k: &nudge_strategy::engine::Candidate,
    ) -> Result<(), String> {
        let req = pb::RiskCheckRequest {
            conversation_id: conversation_id.to_string(),
            customer: customer.to_string(),
            channel: channel.name().to_string(),
            offer_id: k.offer.clone(),
            discount_cents: k.quote.discount.0,
            final_price_cents: k.quote.final_price.0,
        };
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.check(req)).await {
            Ok(Ok(r)) if r.get_ref().allow => Ok(()),
            Ok(Ok(r)) => Err(format!("refused: {}", r.into_inner().reason)),
            Ok(Err(status)) => Err(format!("unavailable: {}", status.message())),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }
}

fn default_max_cart_lines() -> usize {
    100
}

/// Why the strategy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StrategyLoadError {
    /// A catalog or rules file was refused.
    #[error(transparent)]
    File(#[from] StrategyError),
    /// The guardrails' settings are out of range.
    #[error("strategy.{0}")]
    Guardrails(#[from] nudge_strategy::guardrails::SettingError),
    /// The saved conversation state could not be read.
    #[error("strategy.state_file: {0}")]
    State(StrategyError),
    /// The event log could not be opened or read.
    #[error("strategy.events_log: {0}")]
    Events(nudge_records::LogError),
    /// The risk check's endpoint is not a URL.
    #[error("strategy.risk.{0}")]
    Risk(String),
    /// Conversations need the decision log and the customer key of `[decisions]`.
    #[error("[strategy] needs [decisions] (the decision log and customer_id_key)")]
    NeedsDecisions,
}

/// Loads catalog and rules, checking the rules against the default model's labels.
pub fn load_strategy(
    config: &StrategyConfig,
    intents: &[String],
    sentiments: &[String],
) -> Result<Strategy, StrategyLoadError> {
    config.guardrails.validate()?;
    let catalog = Catalog::load(&config.catalog)?;
    let rules = Rules::load(
        &config.rules,
        &Vocabulary {
            intents,
            sentiments,
            catalog: &catalog,
        },
    )?;
    let linker = SkuLinker::new(&catalog)?;
    Ok(Strategy {
        catalog,
        rules,
        guardrails: config.guardrails.clone(),
        linker: linker.into(),
    })
}

struct State {
    store: ConversationStore,
    ledger: Ledger,
}

/// The Conversations service.
pub struct ConversationService {
    nlu: Arc<NluService>,
    decisions: Arc<DecisionService>,
    /// Swapped whole by `ReloadStrategy`; a turn holds the version it started with.
    strategy: ArcSwap<Strategy>,
    config: StrategyConfig,
    state: Mutex<State>,
    /// Set when the state changed since the last snapshot.
    dirty: AtomicBool,
    risk: Option<RiskCheck>,
    state_file: Option<PathBuf>,
    utc_offset_s: i64,
    max_cart_lines: usize,
    metrics: Metrics,
    /// The experiment being served, if one runs (the console starts and stops it).
    experiment: ArcSwapOption<Running>,
    /// One change of the strategy files at a time: a console edit, a reload by hand and a
    /// version arriving from the cluster each write their files and reload them whole, so none
    /// ever reloads a mixture of another's files and its own.
    changing_files: Mutex<()>,
    /// In a cluster, the experiment its pointer last named as running (`Some(None)`: none),
    /// whether or not this server could serve it; `None` until the pointer is read.
    cluster_experiment: Mutex<Option<Option<String>>>,
    kpis: Arc<Kpis>,
    events: Option<EventLog>,
    /// In a cluster, where a change made here is shared (`share`).
    cluster: Option<nudge_cluster::Cluster>,
}

/// A strategy file's text, or an error naming it.
fn read_text(path: &std::path::Path) -> Result<String, StrategyError> {
    std::fs::read_to_string(path).map_err(|source| StrategyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the event log back into `kpis` (start-up), a chunk at a time: the events of the KPI
/// window, the older ones of experiments that may still run (the console forgets stopped ones)
/// and the purchases before them. Returns how many events were read.
fn replay_events(dir: &std::path::Path, kpis: &Kpis) -> Result<u64, nudge_records::LogError> {
    let now = now_ms();
    let mut tail = Tailer::<ConversationEvent>::new(dir);
    let mut n = 0;
    loop {
        let chunk = tail.poll_at_most(50_000)?;
        if chunk.is_empty() {
            break;
        }
        for e in &chunk {
            kpis.observe_replayed(e, now);
        }
        n += chunk.len() as u64;
    }
    if tail.malformed() > 0 {
        tracing::warn!(dir = %dir.display(), lines = tail.malformed(), "event-log lines that are not conversation events");
    }
    Ok(n)
}

/// A validated turn or nudge.
struct TurnInput {
    conversation_id: String,
    /// The customer as the keyed hash (the raw id goes no further than validation).
    pseudonym: String,
    channel: Channel,
    customer: CustomerProfile,
    cart: Vec<CartLine>,
}

fn check_id(field: &str, v: &str) -> Result<(), RequestError> {
    crate::decide::check_id(field, v, true)
}

impl ConversationService {
    /// A service over `strategy`, deciding with `decisions`' policy and log; restores the
    /// saved state when `config.state_file` has one (expired conversations are dropped).
    pub fn new(
        nlu: Arc<NluService>,
        decisions: Arc<DecisionService>,
        strategy: Strategy,
        config: &StrategyConfig,
        metrics: Metrics,
    ) -> Result<Self, StrategyLoadError> {
        let mut store = ConversationStore::new(config.conversations);
        let mut ledger = Ledger::default();
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        if let Some(path) = &config.state_file {
            if let Some(snap) = Snapshot::load(path).map_err(StrategyLoadError::State)? {
                let n = snap.conversations.len();
                for c in snap.conversations {
                    store.restore(c, now);
                }
                ledger = snap.ledger;
                tracing::info!(file = %path.display(), saved = n, kept = store.len(), "conversation state restored");
            }
        }
        let kpis = Arc::new(Kpis::new(config.kpi_hours));
        let events = match &config.events_log {
            Some(dir) => {
                let n = replay_events(dir, &kpis).map_err(StrategyLoadError::Events)?;
                tracing::info!(dir = %dir.display(), events = n, "KPIs read back from the event log");
                let cfg = LogConfig::new(
                    dir,
                    <ConversationEvent as nudge_records::Record>::PREFIX,
                    Durability::Interval { ms: 1000 },
                );
                Some(EventLog::open(cfg).map_err(StrategyLoadError::Events)?)
            }
            None => None,
        };
        Ok(Self {
            nlu,
            decisions,
            strategy: ArcSwap::from_pointee(strategy),
            config: config.clone(),
            state: Mutex::new(State { store, ledger }),
            dirty: AtomicBool::new(false),
            risk: config.risk.as_ref().map(RiskCheck::new).transpose()?,
            state_file: config.state_file.clone(),
            utc_offset_s: i64::from(config.utc_offset_hours) * 3600,
            max_cart_lines: config.max_cart_lines,
            metrics,
            experiment: ArcSwapOption::empty(),
            changing_files: Mutex::new(()),
            cluster_experiment: Mutex::new(None),
            kpis,
            events,
            cluster: None,
        })
    }

    /// Shares changes made here through `cluster` (see [`Self::share`]).
    pub(crate) fn with_cluster(mut self, cluster: Option<nudge_cluster::Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    /// In a cluster, stores the files serving here (after a reload or a console change) and
    /// points every server at them; nothing to do on one machine. A failure leaves this server
    /// serving them alone: the caller says so, and sharing again retries.
    pub(crate) async fn share(self: &Arc<Self>) -> Result<(), RequestError> {
        match &self.cluster {
            Some(c) => crate::cluster::strategy::publish(c, self).await.map(drop),
            None => Ok(()),
        }
    }

    /// Holds off every other change of the strategy files while the caller writes and reloads
    /// them (see the field). A holder that panicked left files its own restore may not have
    /// finished; the next reload checks them whole either way, so the lock outlives it.
    pub(crate) fn changing_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the strategy files again and swaps them in if they pass every check (against the
    /// default model's labels as they are now); otherwise the old version keeps serving.
    /// Returns the versions before and after. Blocking file I/O.
    pub fn reload(&self) -> Result<(Arc<Strategy>, Arc<Strategy>), RequestError> {
        let (intents, sentiments) = self.model_labels()?;
        let new = load_strategy(&self.config, &intents, &sentiments)
            .map_err(|e| RequestError::FailedPrecondition(e.to_string()))?;
        // A running experiment's arms are rebuilt over the new catalog, or nothing changes.
        let rebuilt = match self.experiment.load_full() {
            Some(r) => Some(self.build(r.spec.clone(), r.rules.clone(), &new).map_err(|e| {
                RequestError::FailedPrecondition(format!(
                    "experiment `{}`: {e} with the new files; stop the experiment first",
                    r.spec.id
                ))
            })?),
            None => None,
        };
        let new = Arc::new(new);
        let old = self.strategy.swap(new.clone());
        if let Some(r) = rebuilt {
            self.experiment.store(Some(Arc::new(r)));
        }
        Ok((old, new))
    }

    /// Resolves an experiment's arms over `base`: each arm's rules parsed against its catalog
    /// and the model's labels, each named policy version loaded. An arm that cannot be built is
    /// refused, naming it.
    fn build(&self, spec: ExperimentSpec, rules: Vec<Option<String>>, base: &Strategy) -> Result<Running, SpecError> {
        spec.check()?;
        if rules.len() != spec.arms.len() {
            return Err(SpecError {
                field: "arms".into(),
                reason: "one rules text (or none) per arm".into(),
            });
        }
        let mut strategies = Vec::new();
        let mut choosers = Vec::new();
        for (i, (arm, text)) in spec.arms.iter().zip(&rules).enumerate() {
            let mut strategy = match text {
                Some(t) => {
                    let r = self.parse_rules(t, &base.catalog).map_err(|e| SpecError {
                        field: format!("arms[{i}].rules_version"),
                        reason: e.to_string(),
                    })?;
                    Some(base.with_rules(r))
                }
                None => None,
            };
            for (j, w) in arm.wording.iter().enumerate() {
                let s = strategy.get_or_insert_with(|| base.with_rules(base.rules.clone()));
                s.catalog = s
                    .catalog
                    .with_titles(&w.offer, &w.title_zh, &w.title_en)
                    .ok_or_else(|| SpecError {
                        field: format!("arms[{i}].wording[{j}].offer"),
                        reason: format!("no offer `{}` in the catalog", w.offer),
                    })?;
            }
            strategies.push(strategy.map(Arc::new));
            choosers.push(match &arm.policy {
                ArmPolicy::Serving => ArmChooser::Serving,
                ArmPolicy::RulesOnly => ArmChooser::RulesOnly,
                ArmPolicy::Version(v) => {
                    ArmChooser::Version(self.decisions.store.version(v).map_err(|e| SpecError {
                        field: format!("arms[{i}].policy"),
                        reason: e.to_string(),
                    })?)
                }
            });
        }
        Ok(Running {
            spec,
            rules,
            strategies,
            choosers,
        })
    }

    /// Starts serving `spec` (one rules text or none per arm, in arm order); refused while
    /// another runs.
    pub fn start_experiment(&self, spec: ExperimentSpec, rules: Vec<Option<String>>) -> Result<(), SpecError> {
        if let Some(r) = self.experiment.load_full() {
            return Err(SpecError {
                field: "id".into(),
                reason: format!("experiment `{}` is running; stop it first", r.spec.id),
            });
        }
        let running = self.build(spec, rules, &self.strategy.load())?;
        tracing::info!(id = %running.spec.id, arms = running.spec.arms.len(), "experiment started");
        self.experiment.store(Some(Arc::new(running)));
        Ok(())
    }

    /// Stops the running experiment: every customer gets the serving strategy again.
    pub fn stop_experiment(&self) -> Option<ExperimentSpec> {
        self.experiment.swap(None).map(|r| r.spec.clone())
    }

    /// The experiment served here, with the rules text of each arm that has its own: what a
    /// cluster shares, and what shipping an arm writes.
    pub(crate) fn served_experiment(&self) -> Option<(ExperimentSpec, Vec<Option<String>>)> {
        self.experiment
            .load()
            .as_ref()
            .map(|r| (r.spec.clone(), r.rules.clone()))
    }

    /// In a cluster, makes the experiment served here (or that none is) every server's; nothing
    /// to do on one machine. A failure leaves the change on this server alone: the caller says
    /// so.
    pub(crate) async fn share_experiment(self: &Arc<Self>) -> Result<(), RequestError> {
        match &self.cluster {
            Some(c) => crate::cluster::experiment::publish(c, self).await.map(drop),
            None => Ok(()),
        }
    }

    /// In a cluster, the experiment its pointer names as running (`Some(None)`: none), whether
    /// or not this server serves it; `None` on one machine or before the pointer is read.
    pub(crate) fn cluster_experiment(&self) -> Option<Option<String>> {
        self.cluster_experiment.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Records what the cluster's pointer names as running (see `cluster_experiment`).
    pub(crate) fn set_cluster_experiment(&self, id: Option<String>) {
        if let Ok(mut g) = self.cluster_experiment.lock() {
            *g = Some(id);
        }
    }

    /// This server's name in its cluster (None: one machine).
    pub(crate) fn cluster_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.name())
    }

    /// The policy versions stored here (an experiment's arms name them).
    pub(crate) fn policy_store(&self) -> &Arc<crate::decide::PolicyStore> {
        &self.decisions.store
    }

    /// The conversations kept now, most recently active first (at most `limit`); their texts
    /// were masked when they were kept.
    pub fn conversations(&self, limit: usize) -> Vec<Conversation> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        let mut v: Vec<&Conversation> = st.store.iter().collect();
        v.sort_by(|a, b| b.last_active_ms.cmp(&a.last_active_ms).then(a.id.cmp(&b.id)));
        v.into_iter().take(limit).cloned().collect()
    }

    /// The kept conversation with this id, or else the first for which `matches` holds.
    pub fn conversation(&self, id: &str, matches: impl Fn(&Conversation) -> bool) -> Option<Conversation> {
        let st = self.state.lock().ok()?;
        st.store
            .get(id)
            .or_else(|| st.store.iter().find(|c| matches(c)))
            .cloned()
    }

    /// The catalog serving now.
    pub fn strategy(&self) -> Arc<Strategy> {
        self.strategy.load_full()
    }

    /// The running experiment.
    pub fn experiment(&self) -> Option<ExperimentSpec> {
        self.experiment.load().as_ref().map(|r| r.spec.clone())
    }

    /// The KPIs counted from this server's conversation events (and, in a cluster with an
    /// events log, every other server's).
    pub fn kpis(&self) -> &Kpis {
        &self.kpis
    }

    /// The KPIs, for the cluster's reader of the other servers' events.
    pub(crate) fn kpis_shared(&self) -> Arc<Kpis> {
        self.kpis.clone()
    }

    /// Counts an event and logs it. A failed write is counted and logged, never fails the turn
    /// (the customer has the answer already).
    async fn emit(&self, e: ConversationEvent) {
        self.kpis.observe(&e);
        let arm = if e.experiment.is_empty() {
            String::new()
        } else {
            format!("{}/{}", e.experiment, e.arm)
        };
        let count = |what: &str| {
            self.metrics
                .conversation_events
                .with_label_values(&[what, e.channel.as_str(), arm.as_str()])
                .inc()
        };
        match e.kind {
            EventKind::Turn | EventKind::Nudge => {
                count(if e.kind == EventKind::Turn { "turn" } else { "nudge" });
                if e.turn == 1 {
                    count("conversation");
                }
                if e.resolved {
                    count("resolved");
                }
                if !e.handoff.is_empty() {
                    count("handoff");
                }
                if !e.offer_id.is_empty() {
                    count("offer");
                }
            }
            EventKind::Outcome => {
                if let Some(k) = e.outcome {
                    count(k.name());
                }
                if e.revenue_cents > 0 {
                    self.metrics
                        .revenue_cents
                        .with_label_values(&[e.channel.as_str(), arm.as_str()])
                        .inc_by(e.revenue_cents.unsigned_abs());
                }
            }
        }
        if let Some(log) = &self.events {
            if let Err(err) = log.append(&e).await {
                self.metrics
                    .conversation_events
                    .with_label_values(&["not_logged", e.channel.as_str(), arm.as_str()])
                    .inc();
                tracing::warn!(error = %err, "a conversation event was not logged (KPIs count it until restart)");
            }
        }
    }

    /// The event of an answered turn or nudge.
    fn turn_event(
        &self,
        kind: EventKind,
        input: &TurnInput,
        r: &pb::TurnResponse,
        resolved: bool,
        started: Instant,
    ) -> ConversationEvent {
        let offer = r.offer.clone().unwrap_or_default();
        ConversationEvent {
            schema: EVENT_SCHEMA,
            id: event_id(),
            time_ms: now_ms(),
            kind,
            conversation_id: input.conversation_id.clone(),
            customer: input.pseudonym.clone(),
            channel: input.channel.name().to_string(),
            experiment: r.experiment.clone(),
            arm: r.arm.clone(),
            turn: r.state.as_ref().map_or(0, |s| s.turns),
            resolved,
            intent: r
                .nlu
                .as_ref()
                .and_then(|u| u.intent.as_ref())
                .filter(|i| !i.out_of_scope)
                .map(|i| i.label.clone())
                .unwrap_or_default(),
            response_ms: started.elapsed().as_secs_f64() * 1e3,
            handoff: r.handoff.as_ref().map(|h| h.reason.clone()).unwrap_or_default(),
            decision_id: offer.decision_id,
            offer_id: offer.offer_id,
            policy_version: offer.policy_version,
            outcome: None,
            revenue_cents: 0,
        }
    }

    /// Checks rules `text` against the model's labels and the catalog serving now, exactly as a
    /// reload of the rules file would (the console's editor, before anything is written).
    pub fn check_rules(&self, text: &str) -> Result<(), StrategyError> {
        self.parse_rules(text, &self.strategy.load().catalog).map(drop)
    }

    fn parse_rules(&self, text: &str, catalog: &Catalog) -> Result<Rules, StrategyError> {
        let (intents, sentiments) = self
            .nlu
            .labels("")
            .map_err(|e| StrategyError::invalid(&self.config.rules, None, "model", e.to_string()))?;
        Rules::parse(
            &self.config.rules,
            text,
            &Vocabulary {
                intents: &intents,
                sentiments: &sentiments,
                catalog,
            },
        )
    }

    /// The rules file this service reads (the console writes it, then reloads).
    pub fn rules_path(&self) -> &std::path::Path {
        &self.config.rules
    }

    /// Checks `text` as the catalog file, as a reload would: it parses, its product names
    /// build the SKU linker, and the serving rules file still passes against it (a rule naming
    /// an offer the text removes is an error, reported as the rules file's).
    pub fn check_catalog(&self, text: &str) -> Result<(), StrategyError> {
        self.check_catalog_with(text, None)
    }

    /// Checks `csv` as the products CSV the catalog file names, exactly as a reload would check
    /// it (every row, the catalog's offers over its SKUs, the SKU linker, the serving rules):
    /// what the console runs before a CSV text replaces the file.
    pub fn check_products(&self, csv: &str) -> Result<(), StrategyError> {
        let text = read_text(&self.config.catalog)?;
        self.check_catalog_with(&text, Some(csv.as_bytes()))
    }

    /// The catalog checks on `text`, with `csv` in place of the products CSV on disk if given.
    fn check_catalog_with(&self, text: &str, csv: Option<&[u8]>) -> Result<(), StrategyError> {
        let catalog = Catalog::parse_with(&self.config.catalog, text, csv)?;
        SkuLinker::new(&catalog)?;
        let rules = read_text(&self.config.rules)?;
        self.parse_rules(&rules, &catalog).map(drop)
    }

    /// The products CSV the catalog file names, beside it (None: it names none).
    pub fn products_path(&self) -> Result<Option<std::path::PathBuf>, StrategyError> {
        Catalog::products_path(&self.config.catalog, &read_text(&self.config.catalog)?)
    }

    /// The catalog file this service reads (the console writes it, then reloads).
    pub fn catalog_path(&self) -> &std::path::Path {
        &self.config.catalog
    }

    /// The default model's intent and sentiment labels, which the rules and an experiment's
    /// arms are checked against.
    pub(crate) fn model_labels(&self) -> Result<(Vec<String>, Vec<String>), RequestError> {
        self.nlu.labels("")
    }

    /// Refuses a default model of these labels if the rules serving here, or the rules of an
    /// arm of the running experiment, name an intent or sentiment it lacks: their conditions
    /// would never match again, and nothing would say so. Rules are checked against the model
    /// when they change; this is the same check when the model does.
    pub(crate) fn check_model_labels(&self, intents: &[String], sentiments: &[String]) -> Result<(), String> {
        let base = self.strategy.load_full();
        let running = self.experiment.load_full();
        let arms = running.iter().flat_map(|r| {
            r.spec.arms.iter().zip(&r.strategies).filter_map(|(arm, s)| {
                s.as_ref()
                    .map(|s| (format!("arm `{}` of experiment `{}`", arm.name, r.spec.id), s.clone()))
            })
        });
        for (whose, strategy) in std::iter::once(("the serving rules".to_string(), base)).chain(arms) {
            let (named_intents, named_sentiments) = strategy.rules.labels_named();
            let lacking = |named: BTreeSet<&str>, labels: &[String]| -> Vec<String> {
                named
                    .into_iter()
                    .filter(|n| !labels.iter().any(|l| l == n))
                    .map(|n| format!("`{n}`"))
                    .collect()
            };
            let (intents, sentiments) = (lacking(named_intents, intents), lacking(named_sentiments, sentiments));
            if !intents.is_empty() || !sentiments.is_empty() {
                let mut what = Vec::new();
                if !intents.is_empty() {
                    what.push(format!("intent {}", intents.join(", ")));
                }
                if !sentiments.is_empty() {
                    what.push(format!("sentiment {}", sentiments.join(", ")));
                }
                return Err(format!(
                    "{whose} name {}, which this bundle lacks: change the rules first",
                    what.join(" and ")
                ));
            }
        }
        Ok(())
    }

    /// The versions of the catalog and rules serving now.
    pub fn strategy_versions(&self) -> (String, String) {
        let s = self.strategy.load();
        (s.catalog.version().to_string(), s.rules.version().to_string())
    }

    /// Writes the snapshot if the state changed since the last one (blocking file I/O: call it
    /// from a blocking context). Nothing to do without a `state_file`.
    pub fn save(&self) -> Result<(), StrategyError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let snap = {
            let Ok(st) = self.state.lock() else {
                return Ok(());
            };
            Snapshot {
                schema: SNAPSHOT_SCHEMA,
                taken_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
                conversations: st.store.iter().cloned().collect(),
                ledger: st.ledger.clone(),
            }
        };
        snap.save(path)
            .inspect_err(|_| self.dirty.store(true, Ordering::Release))
    }

    fn clock(&self) -> Clock {
        Clock {
            now_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
            utc_offset_s: self.utc_offset_s,
        }
    }

    fn validate(
        &self,
        strategy: &Strategy,
        conversation_id: String,
        customer_id: String,
        channel: &str,
        customer: Option<pb::Customer>,
        cart: Vec<pb::CartLine>,
    ) -> Result<TurnInput, RequestError> {
        check_id("conversation_id", &conversation_id)?;
        check_id("customer_id", &customer_id)?;
        let channel = Channel::from_name(channel).ok_or_else(|| {
            RequestError::invalid(
                "channel",
                format!("`{channel}` is not one of web, app, mini_program, phone, social"),
            )
        })?;
        let c = customer.unwrap_or_default();
        if c.lifetime_value_cents < 0 {
            return Err(RequestError::invalid(
                "customer.lifetime_value_cents",
                "must not be negative",
            ));
        }
        if cart.len() > self.max_cart_lines {
            return Err(RequestError::invalid(
                "cart",
                format!("{} lines exceed the limit of {}", cart.len(), self.max_cart_lines),
            ));
        }
        let mut lines = Vec::with_capacity(cart.len());
        for (i, l) in cart.into_iter().enumerate() {
            if strategy.catalog.product(&l.sku).is_none() {
                return Err(RequestError::invalid(
                    format!("cart[{i}].sku"),
                    format!("unknown SKU `{}`", l.sku),
                ));
            }
            if l.qty == 0 || l.qty > 10_000 {
                return Err(RequestError::invalid(format!("cart[{i}].qty"), "must be 1 to 10000"));
            }
            lines.push(CartLine { sku: l.sku, qty: l.qty });
        }
        Ok(TurnInput {
            conversation_id,
            pseudonym: self.decisions.pseudonym(&customer_id),
            channel,
            customer: CustomerProfile {
                tier: c.tier,
                lifetime_value: Cents(c.lifetime_value_cents),
                marketing_consent: c.marketing_consent,
                opted_out: c.opted_out,
                attributes: c.attributes.into_iter().collect(),
            },
            cart: lines,
        })
    }

    async fn turn_inner(&self, req: pb::TurnRequest) -> Result<pb::TurnResponse, RequestError> {
        let started = Instant::now();
        let strategy = self.strategy.load_full();
        let input = self.validate(
            &strategy,
            req.conversation_id,
            req.customer_id,
            &req.channel,
            req.customer,
            req.cart,
        )?;
        if req.text.trim().is_empty() {
            return Err(RequestError::invalid(
                "text",
                "must not be empty (use Nudge for a turn without a message)",
            ));
        }
        let (m, mut answers) = self
            .nlu
            .understand_texts(&req.model, &[("text".to_string(), req.text.as_str())])
            .await?;
        let (a, truncated, count) = answers.remove(0);
        let mut u = interpret(&m, &a.output, 3, false, truncated, count);
        u.embedding = a.output.embedding;
        let mentions = strategy.linker.link(&req.text);
        let clock = self.clock();
        let negative = negative_score(&u);
        let facts = TurnFacts {
            text: req.text.clone(),
            intent: u.intent.as_ref().filter(|i| !i.out_of_scope).map(|i| i.label.clone()),
            confidence: u.intent.as_ref().map_or(0.0, |i| i.confidence),
            sentiment: u.sentiment.as_ref().map(|s| s.label.clone()),
            negative,
            // An ambiguous mention still tells the rules which category is meant.
            products: mentions.iter().flat_map(|m| m.skus.iter().cloned()).collect(),
            at_ms: clock.now_ms,
        };
        let (mut response, resolved) = self
            .decide(&strategy, &input, Some(&facts), Some(&u), negative, clock, m.version())
            .await?;
        u.embedding.clear();
        response.nlu = Some(u.into());
        response.products = mentions
            .into_iter()
            .map(|m| pb::ProductMention {
                surface: m.surface,
                skus: m.skus,
                ambiguous: m.ambiguous,
            })
            .collect();
        response.model_version = m.version().to_string();
        self.emit(self.turn_event(EventKind::Turn, &input, &response, resolved, started))
            .await;
        Ok(response)
    }

    async fn nudge_inner(&self, req: pb::NudgeRequest) -> Result<pb::TurnResponse, RequestError> {
        let started = Instant::now();
        let trigger = pb::nudge_request::Trigger::try_from(req.trigger)
            .ok()
            .filter(|t| *t != pb::nudge_request::Trigger::Unspecified)
            .ok_or_else(|| RequestError::invalid("trigger", "must be IDLE or RESOLVED"))?;
        let strategy = self.strategy.load_full();
        let input = self.validate(
            &strategy,
            req.conversation_id,
            req.customer_id,
            &req.channel,
            req.customer,
            req.cart,
        )?;
        let clock = self.clock();
        let resolved = trigger == pb::nudge_request::Trigger::Resolved;
        let facts = resolved.then(TurnFacts::default);
        let (response, resolved) = self
            .decide(&strategy, &input, facts.as_ref(), None, 0.0, clock, "")
            .await?;
        self.emit(self.turn_event(EventKind::Nudge, &input, &response, resolved, started))
            .await;
        Ok(response)
    }

    /// The shared part of Turn and Nudge: the customer's experiment arm, state, plan, choice,
    /// commit, record. Also says whether this turn resolved the conversation.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        base: &Arc<Strategy>,
        input: &TurnInput,
        facts: Option<&TurnFacts>,
        nlu: Option<&Understanding>,
        negative: f32,
        clock: Clock,
        model_version: &str,
    ) -> Result<(pb::TurnResponse, bool), RequestError> {
        let customer = input.pseudonym.clone();
        let serving = self.decisions.store.current();
        let running = self.experiment.load_full();
        let (arm, strategy, policy) = match &running {
            Some(r) => {
                let (i, s, p) = r.arm(&customer, base, serving);
                let name = r.spec.arms.get(i).map(|a| a.name.clone()).unwrap_or_default();
                ((r.spec.id.clone(), name), s, p)
            }
            None => ((String::new(), String::new()), base.clone(), serving),
        };
        let strategy = &*strategy;
        let decision_id = {
            use rand::Rng;
            format!("{:032x}", rand::rng().random::<u128>())
        };
        // Phase 1, under the lock: the turn into the state, the plan, the policy's choice.
        let (mut plan, mut conv, picked, resolved) = {
            let mut st = self.state.lock().map_err(|_| poisoned())?;
            let State { store, ledger } = &mut *st;
            let conv = store.open(&input.conversation_id, &customer, input.channel, clock.now_ms);
            let was_resolved = conv.stage == Stage::Resolved;
            match facts {
                Some(f) if !f.text.is_empty() => conv.observe(
                    f,
                    strategy.rules.intents(),
                    strategy.guardrails.unsure_below,
                    strategy.guardrails.max_negative,
                ),
                Some(_) => conv.mark_resolved(clock.now_ms),
                None => conv.idle_turn(clock.now_ms),
            }
            let plan = strategy.plan(conv, &input.customer, &input.cart, negative, clock, ledger);
            let mut picked = None;
            if !plan.candidates.is_empty() {
                let (context, candidates) = self.features(strategy, input, conv, nlu, &plan, policy.as_deref());
                let (choice, version) = match &policy {
                    Some(pv) => (
                        choose(&pv.policy, &context, &candidates, &mut rand::rng())?,
                        pv.manifest.version.clone(),
                    ),
                    None => (rules_choice(candidates.len()), "rules".to_string()),
                };
                picked = Some((context, candidates, choice, version));
            }
            let resolved = !was_resolved && conv.stage == Stage::Resolved;
            (plan, conv.clone(), picked, resolved)
        };
        self.dirty.store(true, Ordering::Release);

        // Phase 2, without the lock: the external risk check on the chosen offer (fail closed).
        let mut vetoed = None;
        if let (Some(risk), Some((_, _, choice, _))) = (&self.risk, &picked) {
            if let Some(k) = plan.candidates.get(choice.option) {
                if let Err(detail) = risk.check(&input.conversation_id, &customer, input.channel, k).await {
                    vetoed = Some(nudge_strategy::guardrails::Skip::Risk { detail });
                }
            }
        }

        // Phase 3, under the lock: commit (every guardrail again) and the record.
        let mut chosen = None;
        let mut rec = None;
        if let Some((context, candidates, choice, version)) = picked {
            let offer = plan.candidates.get(choice.option).map(|k| k.offer.clone());
            let committed = match (&offer, vetoed) {
                (None, _) => true,
                (Some(o), Some(skip)) => {
                    plan.skipped.push((o.clone(), skip.clone()));
                    plan.blocked = Some(skip);
                    false
                }
                (Some(o), None) => {
                    let mut st = self.state.lock().map_err(|_| poisoned())?;
                    let State { store, ledger } = &mut *st;
                    let c = store.open(&input.conversation_id, &customer, input.channel, clock.now_ms);
                    let r = strategy.commit(&plan, o, &decision_id, c, &input.customer, negative, clock, ledger);
                    conv = c.clone();
                    match r {
                        Ok(()) => true,
                        // Another turn of the same conversation got there first (a cap, say).
                        Err(skip) => {
                            plan.skipped.push((o.clone(), skip.clone()));
                            plan.blocked = Some(skip);
                            false
                        }
                    }
                }
            };
            // A vetoed or pre-empted offer was never shown: no decision is logged for it.
            if committed {
                chosen = Some(match offer {
                    Some(_) => (choice.option, choice.propensity, version.clone()),
                    // The policy chose "no offer": still a decision, logged with its propensity.
                    None => (usize::MAX, choice.propensity, version.clone()),
                });
                let decide_input = DecideInput {
                    conversation_id: input.conversation_id.clone(),
                    customer_id: String::new(),
                    channel: input.channel.name().to_string(),
                    context: BTreeMap::new(),
                    text: None,
                    nlu: None,
                    model: String::new(),
                    candidates,
                };
                rec = Some(record(
                    &decide_input,
                    context,
                    &choice,
                    Provenance {
                        decision_id: decision_id.clone(),
                        time_ms: u64::try_from(clock.now_ms).unwrap_or_default(),
                        customer: customer.clone(),
                        policy_version: &version,
                        model_version,
                    },
                ));
            }
        }
        if let Some(rec) = &rec {
            self.decisions
                .log
                .append(rec)
                .await
                .map_err(RequestError::decision_log)?;
            self.metrics.decisions.with_label_values(&[rec.how.as_str()]).inc();
        }
        for (_, why) in &plan.skipped {
            self.metrics.offers_skipped.with_label_values(&[why.name()]).inc();
        }
        let handoff = plan.handoff.map(|r| pb::Handoff {
            reason: r.name().to_string(),
            summary: conv.summary(),
        });
        if let Some(h) = &handoff {
            self.metrics.handoffs.with_label_values(&[h.reason.as_str()]).inc();
        }
        let response = pb::TurnResponse {
            nlu: None,
            products: Vec::new(),
            state: Some(state_of(&conv)),
            handoff,
            offer: Some(self.offer_answer(strategy, &plan, rec.as_ref().map(|r| r.decision_id.as_str()), chosen)),
            catalog_version: strategy.catalog.version().to_string(),
            rules_version: strategy.rules.version().to_string(),
            model_version: model_version.to_string(),
            experiment: arm.0,
            arm: arm.1,
        };
        Ok((response, resolved))
    }

    /// The policy's view: context features and one feature set per candidate.
    fn features(
        &self,
        strategy: &Strategy,
        input: &TurnInput,
        conv: &Conversation,
        nlu: Option<&Understanding>,
        plan: &Plan,
        policy: Option<&nudge_policy::PolicyVersion>,
    ) -> (BTreeMap<String, f64>, Vec<Candidate>) {
        let mut given = BTreeMap::new();
        given.insert(names::stage(conv.stage.name()), 1.0);
        if !input.customer.tier.is_empty() {
            given.insert(names::tier(&input.customer.tier), 1.0);
        }
        given.insert(names::TURN.to_string(), f64::from(conv.turns));
        given.insert(names::OFFERS_SHOWN.to_string(), conv.offers_made() as f64);
        let context = match policy {
            Some(pv) => featurize(&given, input.channel.name(), nlu, &pv.policy),
            None => {
                given.insert(names::channel(input.channel.name()), 1.0);
                given
            }
        };
        let candidates = plan
            .candidates
            .iter()
            .map(|k| {
                let kind = strategy.catalog.offer(&k.offer).map_or("", |o| o.kind.name());
                let share = if k.quote.list_price.0 > 0 {
                    k.quote.discount.0 as f64 / k.quote.list_price.0 as f64
                } else {
                    0.0
                };
                Candidate {
                    id: k.offer.clone(),
                    features: [
                        (names::offer::id(&k.offer), 1.0),
                        (names::offer::kind(kind), 1.0),
                        (names::offer::DISCOUNT_SHARE.to_string(), share),
                        (names::offer::PRIORITY.to_string(), f64::from(k.priority)),
                    ]
                    .into(),
                }
            })
            .collect();
        (context, candidates)
    }

    fn offer_answer(
        &self,
        strategy: &Strategy,
        plan: &Plan,
        decision_id: Option<&str>,
        chosen: Option<(usize, f64, String)>,
    ) -> pb::OfferDecision {
        let mut a = pb::OfferDecision {
            decision_id: decision_id.unwrap_or_default().to_string(),
            skipped: plan
                .skipped
                .iter()
                .map(|(o, why)| pb::SkippedOffer {
                    offer_id: o.clone(),
                    reason: why.to_string(),
                })
                .collect(),
            blocked: plan.blocked.as_ref().map(|b| b.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        if let Some((i, propensity, version)) = chosen {
            a.propensity = propensity;
            a.policy_version = version;
            if let Some(k) = plan.candidates.get(i) {
                let q = &k.quote;
                a.offer_id = k.offer.clone();
                a.rules = k.rules.clone();
                a.price = Some(pb::Price {
                    list_price_cents: q.list_price.0,
                    discount_cents: q.discount.0,
                    final_price_cents: q.final_price.0,
                    list_price: q.list_price.to_string(),
                    discount: q.discount.to_string(),
                    final_price: q.final_price.to_string(),
                });
                if let Some(o) = strategy.catalog.offer(&k.offer) {
                    a.kind = o.kind.name().to_string();
                    a.title_zh = o.title_zh.clone();
                    a.title_en = o.title_en.clone();
                }
            }
        }
        a
    }

    fn outcome_inner(
        &self,
        req: pb::ConversationOutcomeRequest,
    ) -> Result<(pb::ConversationOutcomeResponse, ConversationEvent), RequestError> {
        check_id("conversation_id", &req.conversation_id)?;
        check_id("decision_id", &req.decision_id)?;
        let kind = outcome_kind(req.kind)?;
        if req.revenue_cents < 0 {
            return Err(RequestError::invalid("revenue_cents", "must not be negative"));
        }
        if req.revenue_cents > 0 && kind != OutcomeKind::Convert {
            return Err(RequestError::invalid(
                "revenue_cents",
                "only a conversion (kind CONVERT) carries revenue",
            ));
        }
        let customer = self.decisions.pseudonym(&req.customer_id);
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let State { store, ledger } = &mut *st;
        let strategy = self.strategy.load();
        let conv = store
            .get_mut(&req.conversation_id)
            .filter(|c| c.customer == customer)
            .ok_or_else(|| {
                RequestError::NotFound(format!(
                    "conversation_id: `{}` is not an open conversation of this customer",
                    req.conversation_id
                ))
            })?;
        let Some(offer) = conv.offers.iter().find(|o| o.decision_id == req.decision_id) else {
            return Err(RequestError::NotFound(format!(
                "decision_id: `{}` made no offer in this conversation",
                req.decision_id
            )));
        };
        let offer_id = offer.offer.clone();
        strategy.outcome(conv, &req.decision_id, kind, ledger);
        self.dirty.store(true, Ordering::Release);
        // The arm is the customer's, as it is for turns (the KPIs take the turn's when they can).
        let (experiment, arm) = match self.experiment.load().as_ref() {
            Some(r) => {
                let i = r.spec.arm_of(&customer);
                (
                    r.spec.id.clone(),
                    r.spec.arms.get(i).map(|a| a.name.clone()).unwrap_or_default(),
                )
            }
            None => (String::new(), String::new()),
        };
        let event = ConversationEvent {
            schema: EVENT_SCHEMA,
            id: event_id(),
            time_ms: now_ms(),
            kind: EventKind::Outcome,
            conversation_id: req.conversation_id.clone(),
            channel: conv.channel.name().to_string(),
            customer,
            experiment,
            arm,
            turn: 0,
            resolved: false,
            intent: String::new(),
            response_ms: 0.0,
            handoff: String::new(),
            decision_id: req.decision_id.clone(),
            offer_id,
            policy_version: String::new(),
            outcome: Some(kind),
            revenue_cents: req.revenue_cents,
        };
        Ok((
            pb::ConversationOutcomeResponse {
                state: Some(state_of(conv)),
            },
            event,
        ))
    }
}

/// `nudge.v1.StrategyAdmin` (admin listener only).
pub struct StrategyAdminService {
    /// The service whose strategy it reloads.
    pub conversations: Arc<ConversationService>,
    /// Request metrics.
    pub metrics: Metrics,
}

#[tonic::async_trait]
impl pb::strategy_admin_server::StrategyAdmin for StrategyAdminService {
    async fn reload_strategy(
        &self,
        _request: Request<pb::ReloadStrategyRequest>,
    ) -> Result<Response<pb::ReloadStrategyResponse>, Status> {
        let start = Instant::now();
        let c = self.conversations.clone();
        let r = match tokio::task::spawn_blocking(move || {
            let _files = c.changing_files();
            c.reload()
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(RequestError::Internal(e.to_string())),
        }
        .map(|(old, new)| {
            tracing::info!(
                catalog = new.catalog.version(),
                rules = new.rules.version(),
                "strategy reloaded"
            );
            pb::ReloadStrategyResponse {
                catalog_version: new.catalog.version().to_string(),
                rules_version: new.rules.version().to_string(),
                previous_catalog_version: old.catalog.version().to_string(),
                previous_rules_version: old.rules.version().to_string(),
            }
        });
        // In a cluster every server follows what was reloaded here.
        let r = match r {
            Ok(resp) => self.conversations.share().await.map(|()| resp).map_err(|e| {
                RequestError::Unavailable(format!(
                    "reloaded on this server, but not shared with the cluster ({e}); reload again to share it"
                ))
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            tracing::warn!(error = %e, "strategy reload refused; the old version keeps serving");
        }
        finish(&self.metrics, "ReloadStrategy", start, r)
    }
}

fn event_id() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

fn poisoned() -> RequestError {
    RequestError::Internal("conversation store lock poisoned".into())
}

/// With no policy loaded the rules decide: the first candidate (highest priority) for sure.
fn rules_choice(n: usize) -> Choice {
    let mut probabilities = vec![0.0; n];
    probabilities[0] = 1.0;
    Choice {
        option: 0,
        probabilities,
        scores: vec![0.0; n],
        propensity: 1.0,
        std_error: 0.0,
        how: "rules",
    }
}

/// The probability of a `negative` sentiment label, 0 without a sentiment head.
fn negative_score(u: &Understanding) -> f32 {
    u.sentiment
        .as_ref()
        .and_then(|s| s.scores.iter().find(|l| l.label == "negative").map(|l| l.score))
        .unwrap_or(0.0)
}

fn state_of(c: &Conversation) -> pb::ConversationState {
    pb::ConversationState {
        turns: c.turns,
        stage: c.stage.name().to_string(),
        intents: c.intents.clone(),
        products: c.products.iter().cloned().collect(),
        offers_shown: c.offers_made() as u32,
        offers_accepted: c.offers_with(OfferStatus::Accepted) as u32,
        offers_declined: c.offers_with(OfferStatus::Declined) as u32,
        negative_streak: c.negative_streak,
    }
}

fn outcome_kind(kind: i32) -> Result<OutcomeKind, RequestError> {
    Ok(match pb::OutcomeKind::try_from(kind) {
        Ok(pb::OutcomeKind::Shown) => OutcomeKind::Shown,
        Ok(pb::OutcomeKind::Click) => OutcomeKind::Click,
        Ok(pb::OutcomeKind::AddToCart) => OutcomeKind::AddToCart,
        Ok(pb::OutcomeKind::Convert) => OutcomeKind::Convert,
        Ok(pb::OutcomeKind::Decline) => OutcomeKind::Decline,
        Ok(pb::OutcomeKind::OptOut) => OutcomeKind::OptOut,
        Ok(pb::OutcomeKind::Complaint) => OutcomeKind::Complaint,
        _ => return Err(RequestError::invalid("kind", "must be a known outcome kind")),
    })
}

#[tonic::async_trait]
impl pb::conversations_server::Conversations for ConversationService {
    async fn turn(&self, request: Request<pb::TurnRequest>) -> Result<Response<pb::TurnResponse>, Status> {
        let start = Instant::now();
        let r = self.turn_inner(request.into_inner()).await;
        finish(&self.metrics, "Turn", start, r)
    }

    async fn nudge(&self, request: Request<pb::NudgeRequest>) -> Result<Response<pb::TurnResponse>, Status> {
        let start = Instant::now();
        let r = self.nudge_inner(request.into_inner()).await;
        finish(&self.metrics, "Nudge", start, r)
    }

    async fn outcome(
        &self,
        request: Request<pb::ConversationOutcomeRequest>,
    ) -> Result<Response<pb::ConversationOutcomeResponse>, Status> {
        let start = Instant::now();
        let r = match self.outcome_inner(request.into_inner()) {
            Ok((response, event)) => {
                self.emit(event).await;
                Ok(response)
            }
            Err(e) => Err(e),
        };
        finish(&self.metrics, "ConversationOutcome", start, r)
    }
}
