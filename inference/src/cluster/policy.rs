//! Policies in a cluster: a version loaded on any server is stored in the cluster and pointed at;
//! every server serves what the pointer names, from its own registry when it has the version,
//! else fetched and validated.
use super::{blocking, count, unavailable};
use crate::decide::PolicyStore;
use crate::error::RequestError;
use crate::metrics::Metrics;
use nudge_cluster::{Cluster, POLICY};
use nudge_policy::version::{from_file_set, to_file_set};
use nudge_policy::{PolicyFiles, PolicyVersion};
use std::sync::Arc;

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
            Err(e) => return count(metrics, "policy", version, Err(unavailable(e))),
        }
    };
    count(metrics, "policy", version, result)
}

async fn load_here(store: &Arc<PolicyStore>, manifest: Vec<u8>, files: PolicyFiles) -> Result<String, RequestError> {
    let s = store.clone();
    blocking(move || s.load(&manifest, &files)).await
}

/// Validates a pushed version, claims its name, stores it in the cluster and points SERVING at
/// it; every server (this one first) then serves it. A name the cluster holds for other files
/// (an optimizer's version, say) is refused.
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
    let set = to_file_set(manifest.clone(), files.clone());
    if !cluster.claim_for(POLICY, &version, &set).await.map_err(unavailable)? {
        return Err(RequestError::invalid(
            "manifest.version",
            format!("{version} is taken in the cluster by another version (an optimizer's or another load's); give this one a new name"),
        ));
    }
    cluster
        .put_artifact(POLICY, &version, &set)
        .await
        .map_err(unavailable)?;
    cluster.set_serving(POLICY, &version).await.map_err(unavailable)?;
    // Served here from the bytes in hand; the other servers fetch them.
    count(metrics, "policy", &version, load_here(store, manifest, files).await)
}

/// Moves the cluster's SERVING pointer to a version it stores, and serves it here.
pub(crate) async fn point_at(
    cluster: &Cluster,
    store: &Arc<PolicyStore>,
    metrics: &Metrics,
    version: &str,
) -> Result<String, RequestError> {
    let stored = cluster.has_artifact(POLICY, version).await.map_err(unavailable)?;
    if !stored {
        return Err(RequestError::invalid(
            "version",
            format!("{version} is not in the cluster's artifact store"),
        ));
    }
    cluster.set_serving(POLICY, version).await.map_err(unavailable)?;
    serve_version(cluster, store, metrics, version).await
}
