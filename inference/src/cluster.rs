//! The server's side of a cluster (`[cluster]`): its decisions forwarded from the local log to
//! the stream, and the policy it serves following the cluster's SERVING pointer.
//!
//! In cluster mode the pointer is the truth. `PolicyAdmin.LoadPolicy` on any server stores the
//! version in the cluster and moves the pointer, and every server (this one too) follows; a
//! rollback moves the pointer back. A server that was down, or starts fresh, reads the pointer
//! when it connects: nobody has to push to it. A version that fails validation here is refused
//! and counted, and the old one keeps serving, exactly as for a push.
use crate::decide::PolicyStore;
use crate::error::RequestError;
use crate::metrics::Metrics;
use futures::StreamExt;
use nudge_cluster::{Cluster, Forwarder, ForwarderStats, DECISIONS_STREAM, POLICY};
use nudge_policy::version::{from_file_set, to_file_set};
use nudge_policy::{PolicyFiles, PolicyVersion};
use nudge_records::DecisionRecord;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the decision forwarder and the policy follower; abort the handles to stop them.
pub(crate) fn start(
    cluster: Cluster,
    decision_log: PathBuf,
    store: Arc<PolicyStore>,
    metrics: Metrics,
) -> Vec<JoinHandle<()>> {
    let stats = Arc::new(ForwarderStats::default());
    let forwarder = Forwarder::spawn::<DecisionRecord>(cluster.clone(), decision_log, DECISIONS_STREAM, stats.clone());
    let m = metrics.clone();
    let counters = tokio::spawn(async move {
        let mut seen = [0u64; 3];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = [
                stats.forwarded.load(Ordering::Relaxed),
                stats.duplicates.load(Ordering::Relaxed),
                stats.failures.load(Ordering::Relaxed),
            ];
            for (i, event) in ["forwarded", "duplicate", "forward_failed"].into_iter().enumerate() {
                m.cluster_events
                    .with_label_values(&[event])
                    .inc_by(now[i].saturating_sub(seen[i]));
            }
            seen = now;
            m.cluster_backlog
                .with_label_values(&["decisions"])
                .set(stats.backlog.load(Ordering::Relaxed) as i64);
        }
    });
    let follower = tokio::spawn(follow(cluster, store, metrics));
    vec![forwarder, counters, follower]
}

/// Serves whatever the cluster's SERVING pointer names, reconnecting for as long as it runs.
async fn follow(cluster: Cluster, store: Arc<PolicyStore>, metrics: Metrics) {
    loop {
        let watched = async {
            cluster.ensure().await?;
            cluster.watch_serving(POLICY).await
        };
        match watched.await {
            Ok(mut pointer) => {
                while let Some(v) = pointer.next().await {
                    match v {
                        Ok(version) => {
                            // Not fetched (NATS hiccup): watch again, which delivers the
                            // current value again. Refused: wait for the next version.
                            if let Err(RequestError::Unavailable(_)) =
                                serve_version(&cluster, &store, &metrics, &version).await
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the serving pointer's watch ended");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the cluster's serving pointer yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serves `version` of the cluster: from this server's registry if it was loaded here before,
/// else fetched from the cluster's artifact store and validated. Returns the previous version.
pub(crate) async fn serve_version(
    cluster: &Cluster,
    store: &Arc<PolicyStore>,
    metrics: &Metrics,
    version: &str,
) -> Result<String, RequestError> {
    let current = store.current().map(|c| c.manifest.version.clone());
    if current.as_deref() == Some(version) {
        return Ok(version.to_string());
    }
    let result = if store.versions().iter().any(|v| v == version) {
        let (s, v) = (store.clone(), version.to_string());
        blocking(move || s.rollback(&v)).await
    } else {
        match cluster.get_artifact(POLICY, version).await {
            Ok(files) => {
                let (manifest, files) = from_file_set(files);
                load_here(store, manifest, files).await
            }
            Err(e) => {
                tracing::warn!(%version, error = %e, "fetching the cluster's policy version (retried)");
                return Err(RequestError::Unavailable(format!("version: {version}: {e}")));
            }
        }
    };
    count(metrics, version, result)
}

async fn load_here(store: &Arc<PolicyStore>, manifest: Vec<u8>, files: PolicyFiles) -> Result<String, RequestError> {
    let s = store.clone();
    blocking(move || s.load(&manifest, &files)).await
}

fn count(metrics: &Metrics, version: &str, result: Result<String, RequestError>) -> Result<String, RequestError> {
    match &result {
        Ok(prev) => {
            metrics.cluster_events.with_label_values(&["followed"]).inc();
            tracing::info!(%version, previous = %prev, "serving the cluster's policy version");
        }
        Err(e) => {
            metrics.cluster_events.with_label_values(&["refused"]).inc();
            tracing::error!(%version, error = %e, "the cluster's policy version is refused; the old one keeps serving");
        }
    }
    result
}

/// Validates a pushed version, stores it in the cluster and points SERVING at it; every server
/// (this one first) then serves it.
pub(crate) async fn publish(
    cluster: &Cluster,
    store: &Arc<PolicyStore>,
    metrics: &Metrics,
    manifest: Vec<u8>,
    files: PolicyFiles,
) -> Result<String, RequestError> {
    let (m, f) = (manifest.clone(), files.clone());
    let pv = blocking(move || {
        PolicyVersion::from_parts(&m, &f).map_err(|e| RequestError::invalid("manifest", e.to_string()))
    })
    .await?;
    let version = pv.manifest.version.clone();
    let unavailable = |e: nudge_cluster::ClusterError| RequestError::Unavailable(format!("cluster: {e}"));
    cluster
        .put_artifact(POLICY, &version, &to_file_set(manifest.clone(), files.clone()))
        .await
        .map_err(unavailable)?;
    cluster.set_serving(POLICY, &version).await.map_err(unavailable)?;
    // Served here from the bytes in hand; the other servers fetch them.
    count(metrics, &version, load_here(store, manifest, files).await)
}

/// Moves the cluster's SERVING pointer to a version it stores, and serves it here.
pub(crate) async fn point_at(
    cluster: &Cluster,
    store: &Arc<PolicyStore>,
    metrics: &Metrics,
    version: &str,
) -> Result<String, RequestError> {
    let stored = cluster
        .has_artifact(POLICY, version)
        .await
        .map_err(|e| RequestError::Unavailable(format!("cluster: {e}")))?;
    if !stored {
        return Err(RequestError::invalid(
            "version",
            format!("{version} is not in the cluster's artifact store"),
        ));
    }
    cluster
        .set_serving(POLICY, version)
        .await
        .map_err(|e| RequestError::Unavailable(format!("cluster: {e}")))?;
    serve_version(cluster, store, metrics, version).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))?
}
