//! The operator console (`[console]`): a web page that `nudge serve` serves on a listener of its
//! own, for the people who set marketing policy and do not write code. They sign in, edit the
//! shop's rules and catalog with every error shown at the line it is on, see a change live in the
//! next `Turn`, compare versions and roll one back in a click; they watch KPIs, run experiments
//! with an always-valid verdict and ship the winner, serve an older policy or NLU model version,
//! and read why the optimizer did or did not ship each candidate. Every change is in the change
//! log with who made it and when.
//!
//! The page is one embedded HTML file with its script (no front-end build: the binary is the
//! whole console). Its JSON API takes the same checks as everything else here: a rules or catalog
//! text an editor saves is checked exactly as a reload would check it, written to the file only
//! then, and put back if the reload refuses it; a model or policy version is served through the
//! admin services' own path; so a bad edit never replaces what is serving.
//!
//! Sign-in sets an `HttpOnly`, `SameSite=Strict` session cookie (`Secure` too over HTTPS, which
//! the console speaks when it or the server has `tls`: see `tls`); every change is a JSON `POST`
//! (a form on another site can send neither), and a viewer's changes are refused.
mod browse;
mod experiments;
mod files;
mod kpis;
mod models;
mod optimizers;
mod tls;
mod users;

pub use users::{hash_password, Role, User, UsersError};

use crate::conversations::ConversationService;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use files::{FileKind, TextVersions};
use nudge_records::{ChangeRecord, Durability, EventLog, LogConfig, CHANGE_SCHEMA};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use users::{Session, Sessions, Users};

const PAGE: &str = include_str!("page.html");
const COOKIE: &str = "nudge_session";
/// Changes the audit page shows (the change log keeps them all).
const RECENT: usize = 500;

/// `[console]`: where the console listens and who may use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The console's listener (HTTP), e.g. `127.0.0.1:8080`.
    pub addr: SocketAddr,
    /// Operators: `[[user]]` tables with `name`, `role` (`viewer` or `editor`) and
    /// `password_hash` (argon2id; `nudge console hash-password` prints one).
    pub users_file: PathBuf,
    /// Where rule versions and the change log are kept.
    pub dir: PathBuf,
    /// Minutes a sign-in lasts without use.
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u64,
    /// The optimizers whose audit trail the console shows (`http://host:port`, their gRPC
    /// listeners): every one of a cluster, since only the one leading trains.
    #[serde(default)]
    pub optimizers: Vec<String>,
    /// HTTPS (PEM files). Absent, the server's `tls`, if it has one; plain HTTP without either,
    /// which is for loopback or a listener behind a TLS proxy.
    #[serde(default)]
    pub tls: Option<crate::config::TlsConfig>,
}

fn default_session_minutes() -> u64 {
    60
}

/// Why a console call failed: the HTTP status and a JSON body `{"error": {field, line, message}}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized,
    Forbidden(String),
    /// Something in the request is wrong; `line` points into a submitted text.
    Invalid {
        field: String,
        line: Option<usize>,
        message: String,
    },
    NotFound(String),
    Internal(String),
}

impl ApiError {
    fn poisoned() -> Self {
        ApiError::Internal("a lock was poisoned".into())
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl From<nudge_strategy::StrategyError> for ApiError {
    fn from(e: nudge_strategy::StrategyError) -> Self {
        match e {
            nudge_strategy::StrategyError::Invalid {
                line, field, reason, ..
            } => ApiError::Invalid {
                field,
                line,
                message: reason,
            },
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, field, line, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "session".to_string(),
                None,
                "sign in first".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "role".into(), None, m),
            ApiError::Invalid { field, line, message } => (StatusCode::UNPROCESSABLE_ENTITY, field, line, message),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, String::new(), None, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "console");
                (StatusCode::INTERNAL_SERVER_ERROR, String::new(), None, m)
            }
        };
        (
            status,
            Json(serde_json::json!({"error": {"field": field, "line": line, "message": message}})),
        )
            .into_response()
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The users file.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The console edits the shop's rules: `[strategy]` must be configured.
    #[error("console: needs [strategy] (the rules it edits)")]
    NeedsStrategy,
    /// Its directory, its versions or its change log.
    #[error("console.dir: {0}")]
    Store(String),
    /// An optimizer address is not a URL the console can call.
    #[error("console.optimizers[{index}]: `{addr}` is not an http:// address ({reason})")]
    Optimizer {
        /// Its place in the list.
        index: usize,
        /// What was configured.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate or key for HTTPS.
    #[error("{field}: {reason}")]
    Tls {
        /// `console.tls.cert`, `tls.key`…
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The listener.
    #[error("console.addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

struct Console {
    users: Users,
    /// Served over HTTPS: session cookies are marked `Secure`.
    secure: bool,
    sessions: Sessions,
    conversations: Arc<ConversationService>,
    rules: TextVersions,
    catalog: TextVersions,
    products: TextVersions,
    changes: EventLog,
    recent: Mutex<VecDeque<ChangeRecord>>,
    experiments: experiments::Experiments,
    /// One experiment start or stop at a time.
    experimenting: Mutex<()>,
    /// Policy versions (None without `[decisions]`).
    policies: Option<crate::decide::PolicyAdminService>,
    /// `[console] optimizers`.
    optimizers: Vec<String>,
    /// NLU model versions (the admin listener's `ModelAdmin`).
    models: crate::model_admin::ModelAdminService,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Console {
    fn session(&self, headers: &HeaderMap) -> Result<Session, ApiError> {
        let token = cookie(headers).ok_or(ApiError::Unauthorized)?;
        self.sessions.get(&token)
    }

    /// Appends to the change log (durable before the call answers) and the recent list.
    async fn record(&self, user: &str, role: &str, action: &str, target: &str, version: String, note: String) {
        let rec = ChangeRecord {
            schema: CHANGE_SCHEMA,
            id: format!("{}-{}", now_ms(), hex::encode(rand::random::<[u8; 6]>())),
            time_ms: now_ms(),
            user: user.to_string(),
            role: role.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            version,
            note,
        };
        if let Err(e) = self.changes.append(&rec).await {
            tracing::error!(error = %e, action, user, "the change log could not record a change");
        }
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(rec);
        }
    }

    /// In a cluster, makes what was applied here every server's (see `ConversationService::share`).
    async fn share(&self) -> Result<(), ApiError> {
        self.conversations.share().await.map_err(|e| {
            ApiError::Internal(format!(
                "live on this server, but not shared with the cluster ({e}); save again to share it"
            ))
        })
    }

    /// In a cluster, makes the experiment change made here (`what`: started, stopped) every
    /// server's (see `crate::cluster::experiment`).
    async fn share_experiment(&self, what: &str) -> Result<(), ApiError> {
        self.conversations.share_experiment().await.map_err(|e| {
            ApiError::Internal(format!(
                "{what} on this server, but not shared with the cluster ({e}); stop it and start it again to share it"
            ))
        })
    }

    /// In a cluster, brings the experiment store in line with the cluster when the change came
    /// through it (another server's console): an experiment served here that the store lacks
    /// is recorded as running, with its arms' rules as served; a running one the cluster no
    /// longer names is recorded as stopped on another server, with its results as they are now
    /// (one the cluster names but this server could not build stays running, not served here).
    /// Call with `experimenting` held. Blocking.
    fn sync_experiments(&self) -> Result<(), ApiError> {
        let Some(Some(named)) = self
            .conversations
            .cluster_name()
            .map(|_| self.conversations.cluster_experiment())
        else {
            // One machine, or the cluster's pointer not read yet.
            return Ok(());
        };
        let served = self.conversations.served_experiment();
        let mut all = self.experiments.all()?;
        let mut changed = false;
        if let Some(r) = all.iter_mut().find(|e| e.stopped_ms.is_none()) {
            // Served here counts too: a start made here is served before the cluster names it.
            let running_here = served.as_ref().is_some_and(|(spec, _)| spec.id == r.spec.id);
            if named.as_ref() != Some(&r.spec.id) && !running_here {
                r.results = Some(experiments::results(&r.spec, self.conversations.kpis(), now_ms()));
                r.stopped_ms = Some(now_ms());
                r.stopped_by = "(another server)".into();
                self.conversations.kpis().forget(&r.spec.id);
                changed = true;
            }
        }
        if let Some((mut spec, rules)) = served {
            if !all.iter().any(|e| e.spec.id == spec.id) {
                // The arms' rules versions are the other console's numbers: name them by this
                // console's, keeping a text it never had as a version of its own.
                for (arm, text) in spec.arms.iter_mut().zip(&rules) {
                    if let Some(text) = text {
                        let note = format!("rules of arm {} of experiment {} (another server)", arm.name, spec.id);
                        arm.rules_version = Some(self.rules.find_or_add(text, "(another server)", &note, now_ms())?);
                    }
                }
                all.push(experiments::Stored {
                    spec,
                    stopped_ms: None,
                    stopped_by: String::new(),
                    shipped: None,
                    results: None,
                    rules,
                });
                changed = true;
            }
        }
        if changed {
            self.experiments.save(all)?;
        }
        Ok(())
    }

    fn versions(&self, kind: FileKind) -> &TextVersions {
        match kind {
            FileKind::Rules => &self.rules,
            FileKind::Catalog => &self.catalog,
            FileKind::Products => &self.products,
        }
    }

    /// Checks `text` as `kind`'s file, as a reload would. An error in another file (the rules
    /// naming an offer a catalog edit removes, an offer naming a SKU a CSV edit removes) is not
    /// at this text's line: it says which file no longer passes.
    fn check(&self, kind: FileKind, text: &str) -> Result<(), ApiError> {
        let checked = match kind {
            FileKind::Rules => self.conversations.check_rules(text),
            FileKind::Catalog => self.conversations.check_catalog(text),
            FileKind::Products => self.conversations.check_products(text),
        };
        let own = self.path(kind)?;
        checked.map_err(|e| match e {
            nudge_strategy::StrategyError::Invalid {
                path,
                line,
                field,
                reason,
                ..
            } if path != own => {
                let which = if path == self.conversations.rules_path() {
                    "rules"
                } else {
                    "catalog"
                };
                ApiError::invalid(
                    "text",
                    format!(
                        "the {which} would no longer pass: {}{}: {field}: {reason}",
                        path.display(),
                        line.map(|l| format!(":{l}")).unwrap_or_default()
                    ),
                )
            }
            e => e.into(),
        })
    }

    fn path(&self, kind: FileKind) -> Result<std::path::PathBuf, ApiError> {
        match kind {
            FileKind::Rules => Ok(self.conversations.rules_path().to_path_buf()),
            FileKind::Catalog => Ok(self.conversations.catalog_path().to_path_buf()),
            FileKind::Products => self
                .conversations
                .products_path()?
                .ok_or_else(|| ApiError::NotFound("the catalog names no products CSV (its `products_csv`)".into())),
        }
    }

    /// Makes `text` the serving rules or catalog: checked, stored as a version, written,
    /// reloaded (and the old text put back if the reload refuses it), all while no other change
    /// of the files (another editor, a reload by hand, a version from the cluster) runs. Blocking.
    fn apply(&self, kind: FileKind, text: &str, author: &str, note: &str) -> Result<u32, ApiError> {
        let _one = self.conversations.changing_files();
        self.check(kind, text)?;
        let path = self.path(kind)?;
        let old = std::fs::read_to_string(&path).map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        let versions = self.versions(kind);
        let n = versions.add(text, author, note, now_ms())?;
        files::write_atomic(&path, text.as_bytes())?;
        if let Err(e) = self.conversations.reload() {
            files::write_atomic(&path, old.as_bytes())?;
            return Err(ApiError::invalid("text", e.to_string()));
        }
        versions.set_current(n)?;
        Ok(n)
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Runs file and CPU work (argon2, rule checks, version files) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

type Shared = State<Arc<Console>>;

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(State(c): Shared, Json(req): Json<Login>) -> Result<Response, ApiError> {
    if req.user.is_empty() || req.user.len() > 64 {
        return Err(ApiError::invalid("user", "1–64 bytes"));
    }
    if req.password.len() > 1024 {
        return Err(ApiError::invalid("password", "at most 1024 bytes"));
    }
    let c2 = c.clone();
    let (name, password) = (req.user.clone(), req.password);
    let user = blocking(move || Ok(c2.users.verify(&name, &password))).await?;
    let Some(user) = user else {
        // Whatever was typed as the name (a phone number, say) is logged masked.
        let typed = nudge_strategy::pii::mask(&req.user);
        c.record(&typed, "", "login_failed", "session", String::new(), String::new())
            .await;
        return Err(ApiError::invalid("password", "the user or the password is wrong"));
    };
    let token = c.sessions.open(&user)?;
    c.record(
        &user.name,
        user.role.name(),
        "login",
        "session",
        String::new(),
        String::new(),
    )
    .await;
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        c.sessions.idle().as_secs(),
        if c.secure { "; Secure" } else { "" }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({"user": user.name, "role": user.role})),
    )
        .into_response())
}

async fn logout(State(c): Shared, headers: HeaderMap) -> Response {
    if let Some(t) = cookie(&headers) {
        c.sessions.close(&t);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
                if c.secure { "; Secure" } else { "" }
            ),
        )],
        Json(serde_json::json!({})),
    )
        .into_response()
}

async fn me(State(c): Shared, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    Ok(Json(serde_json::json!({"user": s.user, "role": s.role})))
}

type FilePath = axum::extract::Path<FileKind>;

async fn get_file(
    State(c): Shared,
    headers: HeaderMap,
    axum::extract::Path(kind): FilePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let c2 = c.clone();
    blocking(move || {
        let versions = c2.versions(kind);
        let path = c2.path(kind)?;
        let on_disk =
            std::fs::read_to_string(&path).map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        versions.sync(&on_disk, now_ms())?;
        let current = versions
            .current()?
            .ok_or_else(|| ApiError::Internal(format!("no current {} version", kind.name())))?;
        let v = versions.get(current)?;
        let (catalog, rules) = c2.conversations.strategy_versions();
        Ok(Json(serde_json::json!({
            "kind": kind,
            "current": current,
            "text": v.text,
            "file": path.display().to_string(),
            "serving": {"catalog": catalog, "rules": rules},
            "versions": versions.list()?,
        })))
    })
    .await
}

#[derive(Deserialize)]
struct FileText {
    text: String,
    #[serde(default)]
    note: String,
}

async fn check_file(
    State(c): Shared,
    headers: HeaderMap,
    axum::extract::Path(kind): FilePath,
    Json(req): Json<FileText>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let c2 = c.clone();
    blocking(move || c2.check(kind, &req.text)).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn save_file(
    State(c): Shared,
    headers: HeaderMap,
    axum::extract::Path(kind): FilePath,
    Json(req): Json<FileText>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    if req.note.len() > 500 {
        return Err(ApiError::invalid("note", "at most 500 bytes"));
    }
    let (c2, user, note) = (c.clone(), s.user.clone(), req.note.clone());
    let n = blocking(move || c2.apply(kind, &req.text, &user, &note)).await?;
    let action = format!("{}.save", kind.name());
    c.record(&s.user, s.role.name(), &action, kind.name(), n.to_string(), req.note)
        .await;
    c.share().await?;
    tracing::info!(user = %s.user, file = kind.name(), version = n, "changed in the console");
    Ok(Json(serde_json::json!({"version": n})))
}

#[derive(Deserialize)]
struct Rollback {
    version: u32,
}

async fn rollback_file(
    State(c): Shared,
    headers: HeaderMap,
    axum::extract::Path(kind): FilePath,
    Json(req): Json<Rollback>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    let (c2, user) = (c.clone(), s.user.clone());
    let to = req.version;
    let n = blocking(move || {
        let old = c2.versions(kind).get(to)?;
        c2.apply(kind, &old.text, &user, &format!("rollback to version {to}"))
    })
    .await?;
    let action = format!("{}.rollback", kind.name());
    c.record(
        &s.user,
        s.role.name(),
        &action,
        kind.name(),
        n.to_string(),
        format!("the text of version {to}"),
    )
    .await;
    c.share().await?;
    tracing::info!(user = %s.user, file = kind.name(), version = n, from = to, "rolled back in the console");
    Ok(Json(serde_json::json!({"version": n})))
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u32,
    to: u32,
}

async fn diff_file(
    State(c): Shared,
    headers: HeaderMap,
    axum::extract::Path(kind): FilePath,
    Query(q): Query<DiffQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let c2 = c.clone();
    blocking(move || {
        let versions = c2.versions(kind);
        let (a, b) = (versions.get(q.from)?, versions.get(q.to)?);
        Ok(Json(serde_json::json!({"diff": files::diff(&a, &b)})))
    })
    .await
}

async fn audit(State(c): Shared, headers: HeaderMap) -> Result<Json<Vec<ChangeRecord>>, ApiError> {
    c.session(&headers)?;
    let r = c.recent.lock().map_err(|_| ApiError::poisoned())?;
    Ok(Json(r.iter().rev().cloned().collect()))
}

async fn experiments_page(State(c): Shared, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let c2 = c.clone();
    blocking(move || {
        {
            let _one = c2.experimenting.lock().map_err(|_| ApiError::poisoned())?;
            c2.sync_experiments()?;
        }
        let all = c2.experiments.all()?;
        let running = all.iter().find(|e| e.stopped_ms.is_none()).map(|e| {
            serde_json::json!({
                "spec": e.spec,
                "results": experiments::results(&e.spec, c2.conversations.kpis(), now_ms()),
                "serving": c2.conversations.experiment().is_some_and(|s| s.id == e.spec.id),
            })
        });
        let past: Vec<_> = all.iter().rev().filter(|e| e.stopped_ms.is_some()).cloned().collect();
        let (policies, serving_policy) = c2.policies.as_ref().map(|p| p.versions()).unwrap_or_default();
        Ok(Json(serde_json::json!({
            "running": running,
            "past": past,
            "rules_versions": c2.rules.list()?,
            "offers": c2.conversations.strategy().catalog.offers().iter().map(|o| o.id.clone()).collect::<Vec<_>>(),
            "policies": policies,
            "serving_policy": serving_policy,
        })))
    })
    .await
}

#[derive(Deserialize)]
struct StartExperiment {
    name: String,
    arms: Vec<experiments::ArmForm>,
}

async fn start_experiment(
    State(c): Shared,
    headers: HeaderMap,
    Json(req): Json<StartExperiment>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    let (c2, user) = (c.clone(), s.user.clone());
    let spec = blocking(move || {
        let _one = c2.experimenting.lock().map_err(|_| ApiError::poisoned())?;
        c2.sync_experiments()?;
        let mut all = c2.experiments.all()?;
        if let Some(r) = all.iter().find(|e| e.stopped_ms.is_none()) {
            return Err(ApiError::invalid(
                "name",
                format!("experiment `{}` ({}) is running; stop it first", r.spec.id, r.spec.name),
            ));
        }
        let mut texts = Vec::new();
        for (i, a) in req.arms.iter().enumerate() {
            texts.push(match a.rules_version {
                Some(v) => Some(
                    c2.rules
                        .get(v)
                        .map_err(|_| {
                            ApiError::invalid(&format!("arms[{i}].rules_version"), format!("no rules version {v}"))
                        })?
                        .text,
                ),
                None => None,
            });
        }
        // In a cluster every console numbers its own: the server's name keeps ids apart.
        let id = match c2.conversations.cluster_name() {
            Some(server) => format!("exp-{}-{server}", all.len() + 1),
            None => format!("exp-{}", all.len() + 1),
        };
        let spec = crate::experiment::ExperimentSpec {
            id,
            name: req.name.trim().to_string(),
            salt: hex::encode(rand::random::<[u8; 8]>()),
            arms: req
                .arms
                .iter()
                .map(|a| crate::experiment::ArmSpec {
                    name: a.name.trim().to_string(),
                    weight: a.weight,
                    rules_version: a.rules_version,
                    policy: a.policy(),
                    wording: a
                        .wording
                        .iter()
                        .map(|w| crate::experiment::Wording {
                            offer: w.offer.trim().to_string(),
                            title_zh: w.title_zh.trim().to_string(),
                            title_en: w.title_en.trim().to_string(),
                        })
                        .collect(),
                })
                .collect(),
            started_ms: now_ms(),
            started_by: user,
        };
        c2.conversations
            .start_experiment(spec.clone(), texts.clone())
            .map_err(|e| ApiError::invalid(&e.field, e.reason))?;
        all.push(experiments::Stored {
            spec: spec.clone(),
            stopped_ms: None,
            stopped_by: String::new(),
            shipped: None,
            results: None,
            rules: texts,
        });
        if let Err(e) = c2.experiments.save(all) {
            c2.conversations.stop_experiment();
            return Err(e);
        }
        Ok(spec)
    })
    .await?;
    c.record(
        &s.user,
        s.role.name(),
        "experiment.start",
        "experiment",
        spec.id.clone(),
        spec.name.clone(),
    )
    .await;
    c.share_experiment("started").await?;
    Ok(Json(serde_json::json!({"id": spec.id})))
}

#[derive(Deserialize)]
struct StopExperiment {
    /// The arm to ship, if any.
    #[serde(default)]
    ship: Option<String>,
}

async fn stop_experiment(
    State(c): Shared,
    headers: HeaderMap,
    Json(req): Json<StopExperiment>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    // A shipped arm's policy version is served first (through PolicyAdmin: in a cluster every
    // server follows); the rules and the stop follow, and a refusal there leaves it running.
    if let Some(name) = &req.ship {
        let c2 = c.clone();
        let running = blocking(move || {
            let _one = c2.experimenting.lock().map_err(|_| ApiError::poisoned())?;
            c2.sync_experiments()?;
            c2.experiments.running()
        })
        .await?;
        let arm = running.and_then(|e| e.spec.arms.into_iter().find(|a| &a.name == name));
        if let Some(crate::experiment::ArmPolicy::Version(v)) = arm.map(|a| a.policy) {
            let admin = c
                .policies
                .as_ref()
                .ok_or_else(|| ApiError::invalid("ship", "this server has no [decisions]: no policies"))?;
            admin
                .serve(&v)
                .await
                .map_err(|e| ApiError::invalid("ship", e.to_string()))?;
        }
    }
    let (c2, user) = (c.clone(), s.user.clone());
    let ship = req.ship.clone();
    let (id, shipped_rules, shipped_catalog) = blocking(move || {
        let _one = c2.experimenting.lock().map_err(|_| ApiError::poisoned())?;
        c2.sync_experiments()?;
        let mut all = c2.experiments.all()?;
        let e = all
            .iter_mut()
            .find(|e| e.stopped_ms.is_none())
            .ok_or_else(|| ApiError::NotFound("no experiment is running".into()))?;
        let results = experiments::results(&e.spec, c2.conversations.kpis(), now_ms());
        // What shipping writes, checked before anything changes.
        let arm = match &ship {
            Some(name) => Some(
                e.spec
                    .arms
                    .iter()
                    .find(|a| &a.name == name)
                    .cloned()
                    .ok_or_else(|| ApiError::invalid("ship", format!("no arm named `{name}`")))?,
            ),
            None => None,
        };
        if let Some(a) = &arm {
            if a.policy == crate::experiment::ArmPolicy::RulesOnly {
                return Err(ApiError::invalid(
                    "ship",
                    format!(
                        "arm `{}` served no learned policy; there is no such version to serve",
                        a.name
                    ),
                ));
            }
        }
        let (mut shipped_rules, mut shipped_catalog) = (None, None);
        if let Some(a) = &arm {
            // The worded catalog is made first: an offer gone from the file refuses the ship
            // before anything is written.
            let worded = if a.wording.is_empty() {
                None
            } else {
                let path = c2.conversations.catalog_path();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
                Some(experiments::worded_catalog(&text, &a.wording)?)
            };
            let at = e.spec.arms.iter().position(|x| x.name == a.name).unwrap_or_default();
            if let (Some(v), Some(text)) = (a.rules_version, e.arm_rules(at, &c2.rules)?) {
                let note = format!("shipped arm {} of experiment {} (rules version {v})", a.name, e.spec.id);
                shipped_rules = Some(c2.apply(FileKind::Rules, &text, &user, &note)?);
            }
            if let Some(worded) = worded {
                let note = format!("shipped the wording of arm {} of experiment {}", a.name, e.spec.id);
                shipped_catalog = Some(c2.apply(FileKind::Catalog, &worded, &user, &note)?);
            }
        }
        c2.conversations.stop_experiment();
        e.stopped_ms = Some(now_ms());
        e.stopped_by = user;
        e.shipped = ship;
        e.results = Some(results);
        let id = e.spec.id.clone();
        c2.experiments.save(all)?;
        c2.conversations.kpis().forget(&id);
        Ok((id, shipped_rules, shipped_catalog))
    })
    .await?;
    let (action, note) = match &req.ship {
        Some(arm) => ("experiment.ship", format!("arm {arm}")),
        None => ("experiment.stop", String::new()),
    };
    c.record(&s.user, s.role.name(), action, "experiment", id.clone(), note)
        .await;
    c.share_experiment("stopped").await?;
    for (kind, n) in [(FileKind::Rules, shipped_rules), (FileKind::Catalog, shipped_catalog)] {
        if let Some(n) = n {
            let action = format!("{}.save", kind.name());
            c.record(
                &s.user,
                s.role.name(),
                &action,
                kind.name(),
                n.to_string(),
                format!("shipped from {id}"),
            )
            .await;
        }
    }
    if shipped_rules.is_some() || shipped_catalog.is_some() {
        c.share().await?;
    }
    Ok(Json(
        serde_json::json!({"id": id, "rules_version": shipped_rules, "catalog_version": shipped_catalog}),
    ))
}

/// A running console.
pub(crate) struct RunningConsole {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Opens the console's store and starts its listener: HTTPS with `cfg.tls`, else with the
/// server's `server_tls`, else plain HTTP.
pub(crate) async fn start(
    cfg: &ConsoleConfig,
    server_tls: Option<&crate::config::TlsConfig>,
    conversations: Arc<ConversationService>,
    policies: Option<crate::decide::PolicyAdminService>,
    models: crate::model_admin::ModelAdminService,
) -> Result<RunningConsole, ConsoleError> {
    let tls = match (&cfg.tls, server_tls) {
        (Some(t), _) => Some(tls::acceptor(t, "console.tls")?),
        (None, Some(t)) => Some(tls::acceptor(t, "tls")?),
        (None, None) => None,
    };
    for (index, addr) in cfg.optimizers.iter().enumerate() {
        let reason = match tonic::transport::Endpoint::from_shared(addr.clone()) {
            Ok(_) if addr.starts_with("http://") => continue,
            Ok(_) => "the console calls optimizers over plain HTTP/2".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(ConsoleError::Optimizer {
            index,
            addr: addr.clone(),
            reason,
        });
    }
    let users = Users::load(&cfg.users_file)?;
    let store = |e: ApiError| ConsoleError::Store(format!("{e:?}"));
    let open = |kind: FileKind, path: &std::path::Path| {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConsoleError::Store(format!("{}: {e}", path.display())))?;
        TextVersions::open(&cfg.dir, kind, &text, now_ms()).map_err(store)
    };
    let rules = open(FileKind::Rules, conversations.rules_path())?;
    let catalog = open(FileKind::Catalog, conversations.catalog_path())?;
    let products = match conversations
        .products_path()
        .map_err(|e| ConsoleError::Store(e.to_string()))?
    {
        Some(path) => open(FileKind::Products, &path)?,
        None => TextVersions::at(&cfg.dir, FileKind::Products).map_err(store)?,
    };
    let log_dir = cfg.dir.join("changes");
    let (recent, _) = nudge_records::read_all::<ChangeRecord>(&log_dir).unwrap_or_default();
    let recent: VecDeque<ChangeRecord> = recent.into_iter().rev().take(RECENT).rev().collect();
    let changes = EventLog::open(LogConfig::new(
        &log_dir,
        <ChangeRecord as nudge_records::Record>::PREFIX,
        Durability::Always,
    ))
    .map_err(|e| ConsoleError::Store(e.to_string()))?;
    let experiments = experiments::Experiments::open(&cfg.dir).map_err(store)?;
    // Stopped experiments' customers are let go (their results were kept when they stopped); a
    // running one is served again (its customers, from the event log, are counted).
    for e in experiments
        .all()
        .map_err(store)?
        .iter()
        .filter(|e| e.stopped_ms.is_some())
    {
        conversations.kpis().forget(&e.spec.id);
    }
    if let Some(e) = experiments.running().map_err(store)? {
        let texts = (0..e.spec.arms.len())
            .map(|i| e.arm_rules(i, &rules))
            .collect::<Result<Vec<_>, _>>()
            .map_err(store)?;
        match conversations.start_experiment(e.spec.clone(), texts) {
            Ok(()) => tracing::info!(id = %e.spec.id, "the running experiment is served again"),
            Err(err) => {
                tracing::error!(id = %e.spec.id, error = %err, "the running experiment cannot be served again; stop it in the console")
            }
        }
    }
    let console = Arc::new(Console {
        users,
        secure: tls.is_some(),
        sessions: Sessions::new(Duration::from_secs(cfg.session_minutes.max(1) * 60)),
        conversations,
        rules,
        catalog,
        products,
        changes,
        recent: Mutex::new(recent),
        experiments,
        experimenting: Mutex::new(()),
        policies,
        optimizers: cfg.optimizers.clone(),
        models,
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/files/{kind}", get(get_file).post(save_file))
        .route("/api/files/{kind}/check", post(check_file))
        .route("/api/files/{kind}/rollback", post(rollback_file))
        .route("/api/files/{kind}/diff", get(diff_file))
        .route("/api/audit", get(audit))
        .route("/api/experiments", get(experiments_page).post(start_experiment))
        .route("/api/experiments/stop", post(stop_experiment))
        .route("/api/kpis", get(kpis::kpis))
        .route("/api/kpis.csv", get(kpis::kpis_csv))
        .route("/api/catalog", get(browse::catalog))
        .route("/api/conversations", get(browse::conversations))
        .route("/api/conversations/{id}", get(browse::conversation))
        .route("/api/policies", get(browse::policies))
        .route("/api/policies/rollback", post(browse::rollback_policy))
        .route("/api/optimizer/audit", get(optimizers::audit))
        .route("/api/models", get(models::models))
        .route("/api/models/serve", post(models::serve))
        .with_state(console);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| ConsoleError::Bind { addr: cfg.addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConsoleError::Bind { addr: cfg.addr, source })?;
    let task = match tls {
        Some(acceptor) => {
            let listener =
                tls::TlsListener::new(listener, acceptor).map_err(|source| ConsoleError::Bind { addr, source })?;
            tracing::info!(%addr, "console: serving HTTPS");
            serve(listener, app)
        }
        None => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "console: plain HTTP off loopback; passwords and session cookies cross the network in clear unless a TLS proxy is in front (set [console.tls] to serve HTTPS)"
                );
            }
            serve(listener, app)
        }
    };
    Ok(RunningConsole { addr, task })
}

/// Serves the console's routes on `listener` (plain TCP or TLS) until the task is aborted.
fn serve<L>(listener: L, app: Router) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the console stopped");
        }
    })
}
