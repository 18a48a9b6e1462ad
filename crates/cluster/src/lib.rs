//! Nudge across machines, on NATS JetStream.
//!
//! One machine needs none of this: servers append decisions to their local event log and the
//! optimizer reads that directory. Past one machine there is no shared directory, and a server
//! that was down during a push would miss the version. So, with a `[cluster]` section:
//!
//! - **Decisions flow through a stream.** A server still appends each decision to its local log
//!   before answering (durable as configured, as on one machine). A [`Forwarder`] follows that
//!   log and publishes every record to the `NUDGE_DECISIONS` stream with the record's id as
//!   `Nats-Msg-Id`; it saves how far it got ([`nudge_records::Cursor`]) only after JetStream has
//!   acknowledged. The local log is the outbox: while NATS is unreachable decisions wait there and
//!   go out when it returns; after a crash the forwarder resends from its last saved cursor, and
//!   the stream's duplicate window and the optimizer's ledger (keyed by the same id) drop what
//!   went out twice.
//! - **Outcomes flow through a stream.** The optimizer that receives `ReportOutcome` publishes the
//!   outcome to `NUDGE_OUTCOMES` (its event id as `Nats-Msg-Id`) and acknowledges the caller only
//!   once JetStream has stored it.
//! - **Conversation events flow through a stream** (`NUDGE_EVENTS`), forwarded like decisions.
//!   Every server reads the others' from it with an ordered consumer ([`Cluster::follow`]), so
//!   each console's KPIs count the whole cluster; what it reads lives in memory, and a restart
//!   reads the stream again.
//! - **The optimizer consumes with durable consumers** ([`Ingest`]) and acknowledges a message
//!   only after its own durable write: a crash anywhere means a redelivery, never a loss. The
//!   consumer records which stream sequences it made durable, so a redelivery is dropped however
//!   late it comes: never a double either.
//! - **Versions fan out through JetStream itself.** A version's files go to the `nudge-artifacts`
//!   object store ([`Cluster::put_artifact`]) and the `nudge-serving` KV bucket names the version
//!   in service per kind of artifact ([`Cluster::set_serving`]): the cluster's SERVING pointer.
//!   Servers watch it from its current value ([`Cluster::watch_serving`]), so one that starts or
//!   comes back serves the current version without anybody pushing to it.
//! - **Large files travel once.** An NLU bundle's files go to the object store as blobs named by
//!   their sha256 ([`Cluster::put_blob`]), so a version that only changes the heads ships
//!   kilobytes and a fine-tuned encoder is uploaded once however many versions use it. Files of a
//!   fetched encoder (pinned by sha256 in the manifest) do not travel at all: every machine has
//!   them from `nudge models fetch`.
//! - **One optimizer leads.** Several may run, each with a complete ledger; the holder of the
//!   optimizer [`Lease`] trains and publishes. What it publishes is fenced where it lands: version
//!   names are claimed once ([`Cluster::claim_version`]) and the pointer moves only from the
//!   revision the publisher read ([`Cluster::move_serving`]).
//!
//! Stream, bucket and subject names are defined here once; every process uses these.
#![warn(missing_docs)]

mod forward;
mod ingest;
mod lease;

pub use forward::{Forwarder, ForwarderStats};
pub use ingest::{Delivery, Ingest};
pub use lease::Lease;

use async_nats::jetstream::{self, object_store, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The stream of decision records (`nudge.decisions.<server>`).
pub const DECISIONS_STREAM: &str = "NUDGE_DECISIONS";
/// The stream of outcome records (`nudge.outcomes.<optimizer>`).
pub const OUTCOMES_STREAM: &str = "NUDGE_OUTCOMES";
/// The stream of conversation events (`nudge.events.<server>`), which every server reads so
/// that each console's KPIs count the whole cluster's conversations.
pub const EVENTS_STREAM: &str = "NUDGE_EVENTS";
/// Object store of versioned artifacts: `<kind>/<version>/<file>`.
pub const ARTIFACTS_BUCKET: &str = "nudge-artifacts";
/// KV bucket of SERVING pointers, one key per kind of artifact.
pub const SERVING_BUCKET: &str = "nudge-serving";
/// KV bucket of leadership leases (`lease.<role>`) and version claims (`claim.<kind>.<version>`).
pub const LEASES_BUCKET: &str = "nudge-leases";
/// The kind of artifact a policy version is (its SERVING key).
pub const POLICY: &str = "policy";
/// The kind of artifact the shop's rules and catalog files are, together (their SERVING key).
pub const STRATEGY: &str = "strategy";
/// The kind of artifact the running experiment is, or that none runs (its SERVING key).
pub const EXPERIMENT: &str = "experiment";

/// The kind of artifact (and SERVING key) of the NLU bundle served under `model`'s name.
pub fn bundle_kind(model: &str) -> Result<String, ClusterError> {
    if !is_token(model) {
        return Err(ClusterError::Config {
            field: "bundles",
            reason: format!("model name `{model}` must be 1–64 letters, digits, `-` or `_` to be shared by a cluster"),
        });
    }
    Ok(format!("bundle.{model}"))
}

/// The name of a content-named version (rules and catalog, the running experiment): the first
/// 16 hex digits of a sha256 over its files' names and contents, each length-prefixed. The same
/// files are the same version on every server, so following one is idempotent — a server finds
/// its own files already are the version — and a name never stands for other files: a reader
/// checks the files it fetched against the name.
pub fn content_version(files: &BTreeMap<String, Vec<u8>>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, bytes) in files {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(&h.finalize()[..8])
}

/// `[cluster]`: where NATS is and who this process is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server address(es), comma-separated, e.g. `nats://10.0.0.2:4222`.
    pub url: String,
    /// This process's name: unique per process, letters, digits, `-` and `_`. It names the
    /// subject a server publishes on and the optimizer's durable consumers.
    pub name: String,
    /// How long JetStream remembers message ids to drop duplicates, in seconds.
    pub duplicate_window_s: u64,
    /// Copies of each stream (1 for one NATS server, 3 for a NATS cluster of three).
    pub replicas: usize,
    /// How long one JetStream request (publish ack, KV read) may take, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long the decision and outcome streams keep a record, in hours (the optimizer must
    /// have consumed it by then; its own ledger keeps what training needs).
    pub retention_hours: u64,
    /// How long an optimizer that stopped renewing its leadership keeps it before a standby
    /// optimizer takes over, in milliseconds ([`Lease`]).
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: String::new(),
            duplicate_window_s: 600,
            replicas: 1,
            request_timeout_ms: 5_000,
            retention_hours: 24 * 7,
            lease_ms: 10_000,
        }
    }
}

/// Why a cluster operation failed. Every variant but `Config` and `Artifact` is transient:
/// callers retry (forwarders and followers do so themselves with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `[cluster]` says something that cannot work.
    #[error("cluster.{field}: {reason}")]
    Config {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// NATS or JetStream refused or did not answer.
    #[error("NATS {what}: {reason}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// What the client said.
        reason: String,
    },
    /// An artifact in the object store is incomplete or malformed.
    #[error("artifact {name}: {reason}")]
    Artifact {
        /// `<kind>/<version>`.
        name: String,
        /// Why.
        reason: String,
    },
    /// A local file (the forwarder's log or cursor) failed.
    #[error(transparent)]
    Log(#[from] nudge_records::LogError),
}

fn nats(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> ClusterError {
    move |e| ClusterError::Nats {
        what,
        reason: e.to_string(),
    }
}

/// True for names that are safe as one subject token and one consumer name.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The object name of the blob whose content hashes to `sha256` (64 hex digits).
fn blob_name(sha256: &str) -> Result<String, ClusterError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClusterError::Artifact {
            name: format!("blobs/{sha256}"),
            reason: "a blob is named by 64 hex digits of sha256".into(),
        });
    }
    Ok(format!("blobs/{}", sha256.to_ascii_lowercase()))
}

/// One record as [`Cluster::follow`] reads it.
#[derive(Debug)]
pub struct Followed<T> {
    /// The subject it was published on (`nudge.events.<server>`: who published it).
    pub subject: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The record, or why the message is not one.
    pub record: Result<T, String>,
}

/// Lists an artifact's files (the object store has no directories).
#[derive(Debug, Serialize, Deserialize)]
struct ArtifactIndex {
    format: u32,
    files: Vec<String>,
}

/// A connection to the cluster's NATS server and the JetStream names Nudge uses.
#[derive(Clone)]
pub struct Cluster {
    js: jetstream::Context,
    cfg: ClusterConfig,
}

impl Cluster {
    /// Connects in the background: this returns at once even when NATS is down (start-up must
    /// not wait for it; the local log buffers meanwhile), and the client reconnects by itself.
    pub async fn connect(cfg: ClusterConfig) -> Result<Self, ClusterError> {
        if !is_token(&cfg.name) {
            return Err(ClusterError::Config {
                field: "name",
                reason: format!(
                    "`{}` must be 1–64 letters, digits, `-` or `_`, unique per process",
                    cfg.name
                ),
            });
        }
        for (field, v) in [
            ("replicas", cfg.replicas as u64),
            ("duplicate_window_s", cfg.duplicate_window_s),
            ("request_timeout_ms", cfg.request_timeout_ms),
            ("retention_hours", cfg.retention_hours),
            ("lease_ms", cfg.lease_ms),
        ] {
            if v == 0 {
                return Err(ClusterError::Config {
                    field,
                    reason: "must be positive".into(),
                });
            }
        }
        if cfg.duplicate_window_s > cfg.retention_hours.saturating_mul(3600) {
            return Err(ClusterError::Config {
                field: "duplicate_window_s",
                reason: "must not exceed retention_hours".into(),
            });
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("nudge-{}", cfg.name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| ClusterError::Config {
                field: "url",
                reason: e.to_string(),
            })?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_millis(cfg.request_timeout_ms));
        Ok(Self { js, cfg })
    }

    /// This process's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The subject this process publishes records of `stream` on.
    pub fn subject(&self, stream: &str) -> String {
        let base = match stream {
            OUTCOMES_STREAM => "nudge.outcomes",
            EVENTS_STREAM => "nudge.events",
            _ => "nudge.decisions",
        };
        format!("{base}.{}", self.cfg.name)
    }

    /// Creates what Nudge uses in JetStream if it is missing (idempotent; every process calls
    /// it before its first use and after NATS comes back).
    pub async fn ensure(&self) -> Result<(), ClusterError> {
        let window = Duration::from_secs(self.cfg.duplicate_window_s);
        for (name, subjects) in [
            (DECISIONS_STREAM, "nudge.decisions.>"),
            (OUTCOMES_STREAM, "nudge.outcomes.>"),
            (EVENTS_STREAM, "nudge.events.>"),
        ] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subjects.into()],
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    duplicate_window: window,
                    max_age: Duration::from_secs(self.cfg.retention_hours.saturating_mul(3600)),
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("creating a stream")(&e))?;
        }
        // KV buckets as JetStream defines them (`KV_<bucket>`, `$KV.<bucket>.>`), created by
        // hand: the client's own `create_key_value` asks for account details that NATS 2.9
        // answers in a form the client cannot read.
        for (bucket, history) in [(SERVING_BUCKET, 64), (LEASES_BUCKET, 1)] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: format!("KV_{bucket}"),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: history,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("creating a KV bucket")(&e))?;
        }
        if self.js.get_object_store(ARTIFACTS_BUCKET).await.is_err() {
            self.js
                .create_object_store(object_store::Config {
                    bucket: ARTIFACTS_BUCKET.into(),
                    storage: stream::StorageType::File,
                    num_replicas: self.cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("creating the artifact store")(&e))?;
        }
        Ok(())
    }

    /// Publishes one record with its id as `Nats-Msg-Id` and waits for JetStream to store it.
    /// Returns true when JetStream had it already (a duplicate inside the window).
    pub async fn publish<T: nudge_records::Record>(&self, stream: &str, record: &T) -> Result<bool, ClusterError> {
        let ack = self.send(stream, record).await?;
        let ack = ack.await.map_err(|e| nats("publish ack")(&e))?;
        Ok(ack.duplicate)
    }

    /// Sends one record and returns the future of its acknowledgement, so that callers can
    /// have many in flight.
    async fn send<T: nudge_records::Record>(
        &self,
        stream: &str,
        record: &T,
    ) -> Result<jetstream::context::PublishAckFuture, ClusterError> {
        let payload = serde_json::to_vec(record).map_err(nudge_records::LogError::from)?;
        self.js
            .send_publish(
                self.subject(stream),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(record.id()),
            )
            .await
            .map_err(|e| nats("publish")(&e))
    }

    /// Stores a version's files as `<kind>/<version>/<file>` and its index; does not serve it.
    /// (Creates the store on a new cluster: a version may be published before anything else.)
    pub async fn put_artifact(
        &self,
        kind: &str,
        version: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), ClusterError> {
        self.ensure().await?;
        let store = self.store().await?;
        for (name, bytes) in files {
            store
                .put(format!("{kind}/{version}/{name}").as_str(), &mut bytes.as_slice())
                .await
                .map_err(|e| nats("storing an artifact file")(&e))?;
        }
        let index = serde_json::to_vec(&ArtifactIndex {
            format: 1,
            files: files.keys().cloned().collect(),
        })
        .map_err(nudge_records::LogError::from)?;
        // The index goes last: a reader that finds it finds every file it lists.
        store
            .put(format!("{kind}/{version}").as_str(), &mut index.as_slice())
            .await
            .map_err(|e| nats("storing an artifact index")(&e))?;
        Ok(())
    }

    /// A version's files, as `put_artifact` stored them.
    pub async fn get_artifact(&self, kind: &str, version: &str) -> Result<BTreeMap<String, Vec<u8>>, ClusterError> {
        let store = self.store().await?;
        let name = format!("{kind}/{version}");
        let read = |what: String| {
            let store = store.clone();
            async move {
                let mut o = store.get(what.as_str()).await.map_err(|e| ClusterError::Artifact {
                    name: what.clone(),
                    reason: e.to_string(),
                })?;
                let mut buf = Vec::new();
                o.read_to_end(&mut buf).await.map_err(|e| ClusterError::Artifact {
                    name: what.clone(),
                    reason: e.to_string(),
                })?;
                Ok::<_, ClusterError>(buf)
            }
        };
        let index: ArtifactIndex =
            serde_json::from_slice(&read(name.clone()).await?).map_err(|e| ClusterError::Artifact {
                name: name.clone(),
                reason: format!("index: {e}"),
            })?;
        if index.format != 1 {
            return Err(ClusterError::Artifact {
                name,
                reason: format!("index format {} (this reader reads 1)", index.format),
            });
        }
        let mut files = BTreeMap::new();
        for f in index.files {
            let bytes = read(format!("{name}/{f}")).await?;
            files.insert(f, bytes);
        }
        Ok(files)
    }

    /// Whether the store holds `<kind>/<version>` (its index, written last), without reading it.
    pub async fn has_artifact(&self, kind: &str, version: &str) -> Result<bool, ClusterError> {
        match self.store().await?.info(format!("{kind}/{version}")).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(nats("reading an artifact's index")(&e)),
        }
    }

    /// Stores the file at `path` as the blob `sha256` unless the store has it already; returns
    /// whether it uploaded. The caller vouches for the hash (a bundle's files are checked against
    /// their manifest when loaded); readers check it again ([`Cluster::get_blob`]).
    pub async fn put_blob(&self, sha256: &str, path: &std::path::Path) -> Result<bool, ClusterError> {
        self.ensure().await?;
        let store = self.store().await?;
        let name = blob_name(sha256)?;
        match store.info(name.as_str()).await {
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {}
            Err(e) => return Err(nats("reading a blob's info")(&e)),
        }
        let mut file = tokio::fs::File::open(path).await.map_err(|e| ClusterError::Artifact {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        store
            .put(name.as_str(), &mut file)
            .await
            .map_err(|e| nats("storing a blob")(&e))?;
        Ok(true)
    }

    /// Writes the blob `sha256` to `path`, streaming, and checks its hash; a blob that does not
    /// hash to its name is an error and leaves no file.
    pub async fn get_blob(&self, sha256: &str, path: &std::path::Path) -> Result<(), ClusterError> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let name = blob_name(sha256)?;
        let bad = |reason: String| ClusterError::Artifact {
            name: name.clone(),
            reason,
        };
        let mut object = self
            .store()
            .await?
            .get(name.as_str())
            .await
            .map_err(|e| nats("reading a blob")(&e))?;
        let mut out = tokio::fs::File::create(path)
            .await
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let copied = async {
            loop {
                let n = object.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await?;
            }
            out.sync_all().await
        };
        let checked = match copied.await {
            Err(e) => Err(nats("reading a blob")(&e)),
            Ok(()) => {
                let actual = hex::encode(hasher.finalize());
                if actual.eq_ignore_ascii_case(sha256) {
                    Ok(())
                } else {
                    Err(bad(format!("its content hashes to {actual}")))
                }
            }
        };
        if checked.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        checked
    }

    async fn store(&self) -> Result<object_store::ObjectStore, ClusterError> {
        self.js
            .get_object_store(ARTIFACTS_BUCKET)
            .await
            .map_err(|e| nats("opening the artifact store")(&e))
    }

    async fn kv(&self, bucket: &str) -> Result<jetstream::kv::Store, ClusterError> {
        self.js
            .get_key_value(bucket)
            .await
            .map_err(|e| nats("opening a KV bucket")(&e))
    }

    /// The version of `kind` the cluster serves, if one was ever set.
    pub async fn serving(&self, kind: &str) -> Result<Option<String>, ClusterError> {
        Ok(self.serving_entry(kind).await?.map(|(v, _)| v))
    }

    /// The version of `kind` the cluster serves and the pointer's revision, for
    /// [`Cluster::move_serving`].
    pub async fn serving_entry(&self, kind: &str) -> Result<Option<(String, u64)>, ClusterError> {
        let e = self
            .kv(SERVING_BUCKET)
            .await?
            .entry(kind)
            .await
            .map_err(|e| nats("reading the serving pointer")(&e))?;
        Ok(e.filter(|e| e.operation == jetstream::kv::Operation::Put)
            .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision)))
    }

    /// Points the cluster's SERVING for `kind` at `version` (stored with `put_artifact` first),
    /// whatever it pointed at: an operator's change.
    pub async fn set_serving(&self, kind: &str, version: &str) -> Result<(), ClusterError> {
        self.ensure().await?;
        self.kv(SERVING_BUCKET)
            .await?
            .put(kind, version.to_string().into())
            .await
            .map_err(|e| nats("moving the serving pointer")(&e))?;
        Ok(())
    }

    /// Stores `files` as the content-named version of `kind` ([`content_version`]) unless the
    /// cluster holds it already, and points SERVING at it. Returns the version.
    ///
    /// No name is claimed: the name is the files' hash, so whoever stores it — two servers
    /// publishing the same files at once — stores the same files, and readers check the hash.
    pub async fn serve_content(&self, kind: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<String, ClusterError> {
        let version = content_version(files);
        if !self.has_artifact(kind, &version).await? {
            self.put_artifact(kind, &version, files).await?;
        }
        self.set_serving(kind, &version).await?;
        Ok(version)
    }

    /// Points SERVING for `kind` at `version` only if the pointer is still at `from` (the
    /// revision [`Cluster::serving_entry`] gave; `None`: only if it was never set). Returns false
    /// when it moved meanwhile: the change was made against a state that is gone.
    pub async fn move_serving(&self, kind: &str, version: &str, from: Option<u64>) -> Result<bool, ClusterError> {
        self.ensure().await?;
        let kv = self.kv(SERVING_BUCKET).await?;
        let value = version.to_string().into();
        let moved = match from {
            None => match kv.create(kind, value).await {
                Ok(_) => true,
                Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => false,
                Err(e) => return Err(nats("setting the serving pointer")(&e)),
            },
            Some(r) => match kv.update(kind, value, r).await {
                Ok(_) => true,
                Err(e) if e.kind() == jetstream::kv::UpdateErrorKind::WrongLastRevision => false,
                Err(e) => return Err(nats("moving the serving pointer")(&e)),
            },
        };
        Ok(moved)
    }

    /// Claims the name `version` of `kind` for this process, once in the cluster's life: true
    /// for the first claimant (and for it again, should it retry), false for everyone else, so two
    /// processes never store different files under one version.
    pub async fn claim_version(&self, kind: &str, version: &str) -> Result<bool, ClusterError> {
        self.ensure().await?;
        let kv = self.kv(LEASES_BUCKET).await?;
        // Hex: version names may hold characters a KV key may not (a trailing `.`).
        let key = format!("claim.{kind}.{}", hex::encode(version));
        let me = self.cfg.name.clone().into_bytes();
        match kv.create(key.as_str(), me.clone().into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                let holder = kv.get(key.as_str()).await.map_err(|e| nats("reading a claim")(&e))?;
                Ok(holder.is_some_and(|h| h.as_ref() == me.as_slice()))
            }
            Err(e) => Err(nats("claiming a version")(&e)),
        }
    }

    /// Claims `version` of `kind` for a version whose files are `files` (as `put_artifact` takes
    /// them): true if this process may store them under that name — it claimed the name, or the
    /// cluster already holds exactly these files under it (the same version loaded twice).
    pub async fn claim_for(
        &self,
        kind: &str,
        version: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<bool, ClusterError> {
        if self.claim_version(kind, version).await? {
            return Ok(true);
        }
        if !self.has_artifact(kind, version).await? {
            return Ok(false);
        }
        Ok(&self.get_artifact(kind, version).await? == files)
    }

    /// The SERVING pointer of `kind`: its current value first (if set), then every change.
    /// The stream ends when the connection drops; followers watch again.
    pub async fn watch_serving(
        &self,
        kind: &str,
    ) -> Result<impl futures::Stream<Item = Result<String, ClusterError>> + Unpin, ClusterError> {
        let w = self
            .kv(SERVING_BUCKET)
            .await?
            .watch_with_history(kind)
            .await
            .map_err(|e| nats("watching the serving pointer")(&e))?;
        Ok(Box::pin(w.filter_map(|e| async move {
            match e {
                Ok(e) if e.operation == jetstream::kv::Operation::Put => {
                    Some(Ok(String::from_utf8_lossy(&e.value).into_owned()))
                }
                Ok(_) => None,
                Err(e) => Some(Err(nats("watching the serving pointer")(&e))),
            }
        })))
    }

    /// A durable consumer of `stream` named `<name>-<stream>`, delivering every record from the
    /// stream's start that this name has not made durable; which sequences it has is kept in
    /// `state_dir` (the consumer's own log directory: the two belong together).
    pub async fn ingest<T: nudge_records::Record>(
        &self,
        stream: &str,
        state_dir: &std::path::Path,
    ) -> Result<Ingest<T>, ClusterError> {
        Ingest::open(
            &self.js,
            stream,
            &format!("{}-{}", self.cfg.name, stream.to_lowercase()),
            state_dir,
        )
        .await
    }

    /// Every record of `stream` from its sequence `from` on (1: the oldest it holds), in stream
    /// order, with the subject it was published on and its sequence: an ordered consumer, which
    /// needs no acknowledgements and recreates itself on a gap, for readers that keep what they
    /// read in memory only and start over from the stream after a restart. A message that is
    /// not a valid `T` comes as `Err` with the reason and its sequence, for the reader to count.
    pub async fn follow<T: nudge_records::Record>(
        &self,
        stream: &str,
        from: u64,
    ) -> Result<impl futures::Stream<Item = Result<Followed<T>, ClusterError>> + use<T>, ClusterError> {
        let consumer = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| nats("opening a stream")(&e))?
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats("creating an ordered consumer")(&e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| nats("reading an ordered consumer")(&e))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| nats("reading an ordered consumer")(&e))?;
            let sequence = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            let record = serde_json::from_slice::<T>(&m.payload)
                .map_err(|e| e.to_string())
                .and_then(|r| r.check().map(|()| r).map_err(|e| e.to_string()));
            Ok(Followed {
                subject: m.subject.to_string(),
                sequence,
                record,
            })
        }))
    }

    /// When `stream` was created, as JetStream tells it: a stream deleted and created again has
    /// a new one, and its sequences start again at 1 — a reader that resumes by sequence must
    /// start over.
    pub async fn stream_created(&self, stream: &str) -> Result<String, ClusterError> {
        Ok(self.stream_info(stream).await?.created.to_string())
    }

    /// Messages and bytes `stream` holds (for tests and status pages).
    pub async fn stream_messages(&self, stream: &str) -> Result<u64, ClusterError> {
        Ok(self.stream_info(stream).await?.state.messages)
    }

    async fn stream_info(&self, stream: &str) -> Result<stream::Info, ClusterError> {
        let read = |e: &dyn std::fmt::Display| nats("reading stream info")(e);
        let mut s = self.js.get_stream(stream).await.map_err(|e| read(&e))?;
        s.info().await.cloned().map_err(|e| read(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_version_names_exactly_its_files() {
        let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
                .collect()
        };
        let v = content_version(&files(&[("rules.toml", "a"), ("catalog.toml", "b")]));
        assert_eq!(v.len(), 16);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            v,
            content_version(&files(&[("catalog.toml", "b"), ("rules.toml", "a")]))
        );
        // A byte moved between a name and its contents, or between two files, is another version.
        for other in [
            files(&[("rules.toml", "a"), ("catalog.toml", "c")]),
            files(&[("rules.tom", "la"), ("catalog.toml", "b")]),
            files(&[("catalog.toml", "ba"), ("rules.toml", "")]),
            files(&[("rules.toml", "a")]),
        ] {
            assert_ne!(content_version(&other), v, "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_name_that_cannot_be_a_subject_token_is_refused() {
        for name in ["", "a.b", "a b", "*", &"x".repeat(65)] {
            let cfg = ClusterConfig {
                name: name.to_string(),
                ..Default::default()
            };
            let err = Cluster::connect(cfg)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("cluster.name:"), "{name}: {err}");
        }
    }
}
