//! Leadership among processes of one role, so that of several optimizers exactly one trains and
//! publishes while the others keep complete ledgers and stand by.
//!
//! The lease is one key (`lease.<role>`) in the leases bucket, written only by compare-and-set
//! on its revision. No process compares its clock with another's: the holder renews the key
//! every quarter lease; a standby notes when it first saw the current revision, on its own
//! monotonic clock, and takes over only after a whole lease (`lease_ms`) without a new one. The
//! holder counts itself leader for half a lease after the moment it *sent* its last successful
//! renewal, so its term ends before any standby can start one, even when it stalls.
//!
//! The lease is not the only fence. What a leader does is guarded again where it lands: a version
//! name is claimed once in the cluster ([`Cluster::claim_version`]) and the SERVING pointer moves
//! only from the revision the leader read ([`Cluster::move_serving`]), so a leader that lost
//! its lease mid-round can neither overwrite a version nor undo a newer change.
use crate::{nats, Cluster, ClusterError, LEASES_BUCKET};
use async_nats::jetstream::kv;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One process's view of a role's lease.
pub struct Lease {
    cluster: Cluster,
    key: String,
    holder: String,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When this process sent its last successful create/renewal (it holds the lease).
    renewed: Option<Instant>,
    /// The revision last seen held by another process, and when it was first seen.
    seen: Option<(u64, Instant)>,
}

impl Lease {
    /// The lease of `role` (`optimizer`) as held by this process (its cluster name).
    pub fn new(cluster: &Cluster, role: &str) -> Self {
        Self {
            cluster: cluster.clone(),
            key: format!("lease.{role}"),
            holder: cluster.name().to_string(),
            ttl: Duration::from_millis(cluster.cfg.lease_ms),
            state: Mutex::new(State::default()),
        }
    }

    /// How often [`Lease::step`] should run: a quarter lease.
    pub fn period(&self) -> Duration {
        self.ttl / 4
    }

    /// Whether this process is the leader now: its last renewal went out less than half a
    /// lease ago.
    pub fn held(&self) -> bool {
        let half = self.ttl / 2;
        self.state
            .lock()
            .is_ok_and(|s| s.renewed.is_some_and(|t| t.elapsed() < half))
    }

    /// One round: renews the lease if this process holds it, takes it over if it is free or its
    /// holder has been silent for a whole lease, else notes what it saw. Returns [`Lease::held`].
    pub async fn step(&self) -> Result<bool, ClusterError> {
        let store = self.cluster.kv(LEASES_BUCKET).await?;
        let entry = store
            .entry(self.key.as_str())
            .await
            .map_err(|e| nats("reading a lease")(&e))?;
        let now = Instant::now();
        let write = match entry {
            None => Some(None),
            Some(e) => {
                let holder = String::from_utf8_lossy(&e.value);
                let free = holder.is_empty() || e.operation != kv::Operation::Put;
                let mine = holder == self.holder;
                let mut st = self.state.lock().map_err(|_| poisoned())?;
                let silent = match st.seen {
                    Some((rev, since)) if rev == e.revision => since.elapsed() >= self.ttl,
                    _ => {
                        st.seen = Some((e.revision, now));
                        false
                    }
                };
                if !mine {
                    st.renewed = None;
                }
                (free || mine || silent).then_some(Some(e.revision))
            }
        };
        let Some(revision) = write else {
            return Ok(false);
        };
        let value = self.holder.clone().into_bytes().into();
        let written = match revision {
            None => store.create(self.key.as_str(), value).await.map(drop).map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    None
                } else {
                    Some(nats("creating a lease")(&e))
                }
            }),
            Some(r) => store.update(self.key.as_str(), value, r).await.map(drop).map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    None
                } else {
                    Some(nats("renewing a lease")(&e))
                }
            }),
        };
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        match written {
            Ok(()) => {
                if st.renewed.is_none() {
                    tracing::info!(lease = %self.key, holder = %self.holder, "lease taken");
                }
                st.renewed = Some(now);
                Ok(true)
            }
            // Another process wrote first: it holds the lease.
            Err(None) => {
                st.renewed = None;
                Ok(false)
            }
            // Unknown whether it landed: not held until a renewal is known to have.
            Err(Some(e)) => {
                st.renewed = None;
                Err(e)
            }
        }
    }

    /// Hands the lease over at once (a clean shutdown): a standby takes it at its next step
    /// instead of waiting a whole lease.
    pub async fn release(&self) -> Result<(), ClusterError> {
        if !self.held() {
            return Ok(());
        }
        if let Ok(mut st) = self.state.lock() {
            st.renewed = None;
        }
        let store = self.cluster.kv(LEASES_BUCKET).await?;
        if let Some(e) = store
            .entry(self.key.as_str())
            .await
            .map_err(|e| nats("reading a lease")(&e))?
        {
            if e.value.as_ref() == self.holder.as_bytes() {
                // Lost to a standby meanwhile is fine too: either way this process is out.
                let _ = store.update(self.key.as_str(), bytes::Bytes::new(), e.revision).await;
            }
        }
        Ok(())
    }
}

fn poisoned() -> ClusterError {
    ClusterError::Nats {
        what: "lease",
        reason: "state lock poisoned".into(),
    }
}
