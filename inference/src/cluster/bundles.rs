//! NLU bundles in a cluster. `ModelAdmin.ReloadModel` on any server checks the bundle there,
//! stores it in the cluster and moves the model's SERVING pointer (`bundle.<model>`); every
//! server follows by writing the version under `<models_root>/cluster/<model>/<version>/` and
//! loading it through the same checks as a reload by hand.
//!
//! What travels is the manifest (the artifact) and the files it lists as blobs named by their
//! sha256, so a version that changes only the heads or a threshold ships kilobytes. Files taken
//! from a fetched encoder (`encoder.source`) do not travel: every server has them from
//! `nudge models fetch`, and the manifest pins them by sha256, so a server whose fetch differs
//! refuses the version instead of serving other weights. A follower takes each file from the
//! first place that has it: the bundle it serves now (same path, same sha256), the fetched
//! encoder, then the cluster. A version refused for lack of the fetched encoder is tried again
//! once the server's fetched encoders change (`nudge models fetch` ran).
use super::{count, unavailable};
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::model_admin::{Checked, Reloader};
use nudge_cluster::{bundle_kind, Cluster, ClusterError};
use nudge_model::bundle::MANIFEST;
use nudge_model::Manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a followed version is written: `<models_root>/cluster/<model>/<version>`.
fn local_dir(root: &Path, model: &str, version: &str) -> Result<PathBuf, RequestError> {
    let safe = !version.is_empty()
        && version.len() <= 128
        && version != "."
        && version != ".."
        && !version.contains(['/', '\\', '\0']);
    if !safe {
        return Err(RequestError::invalid(
            "version",
            format!("`{version}` cannot name a directory (1–128 characters, no `/`, not `.` or `..`)"),
        ));
    }
    Ok(root.join("cluster").join(model).join(version))
}

fn refused(e: ClusterError) -> RequestError {
    match e {
        ClusterError::Nats { .. } => unavailable(e),
        e => RequestError::invalid("version", e.to_string()),
    }
}

/// Stores a checked bundle in the cluster (blobs it lacks, then the manifest) and points the
/// model's SERVING at it. The version name is claimed first; one claimed for another manifest is
/// refused: a changed bundle needs a new version, or servers would disagree on what it is.
pub(crate) async fn publish(cluster: &Cluster, reloader: &Reloader, checked: &Checked) -> Result<(), RequestError> {
    let kind = bundle_kind(&checked.name).map_err(|e| RequestError::invalid("model", e.to_string()))?;
    let manifest = checked.model.manifest();
    let version = &manifest.version;
    local_dir(reloader.models_root(), &checked.name, version)?;
    let path = checked.dir.join(MANIFEST);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| RequestError::invalid("bundle_dir", format!("{}: {e}", path.display())))?;
    let artifact = BTreeMap::from([(MANIFEST.to_string(), bytes)]);
    if !cluster
        .claim_for(&kind, version, &artifact)
        .await
        .map_err(unavailable)?
    {
        return Err(RequestError::invalid(
            "bundle_dir",
            format!(
                "version {version} of `{}` is in the cluster already with other files; give the changed bundle a new version",
                checked.name
            ),
        ));
    }
    let mut uploaded = 0;
    for (rel, sha) in &manifest.files {
        if manifest.fetched_from(rel).is_none()
            && cluster
                .put_blob(sha, &checked.dir.join(rel))
                .await
                .map_err(unavailable)?
        {
            uploaded += 1;
        }
    }
    cluster
        .put_artifact(&kind, version, &artifact)
        .await
        .map_err(unavailable)?;
    tracing::info!(model = %checked.name, %version, uploaded, "bundle stored in the cluster");
    cluster.set_serving(&kind, version).await.map_err(unavailable)
}

/// Serves `version` of `model` as the cluster's pointer names it: written locally if it is not
/// yet, checked, swapped in. Unavailable when the cluster could not deliver it (retried).
pub(crate) async fn serve_version(
    cluster: &Cluster,
    reloader: &Reloader,
    metrics: &Metrics,
    model: &str,
    version: &str,
) -> Result<(), RequestError> {
    let serving = || reloader.models().get(model).map(|b| b.model().version() == version);
    if serving()? {
        return Ok(());
    }
    let _one_at_a_time = reloader.lock().await;
    // A reload by hand may have just served it (it moves the pointer before it swaps).
    if serving()? {
        return Ok(());
    }
    let result = async {
        let dir = materialize(cluster, reloader, model, version).await?;
        let checked = reloader.check(model, &dir.to_string_lossy()).await?;
        if checked.model.version() != version {
            return Err(RequestError::invalid(
                "version",
                format!("the bundle stored as {version} says it is {}", checked.model.version()),
            ));
        }
        reloader.swap(checked).map(drop)
    };
    count(metrics, "bundle", version, result.await)
}

/// Writes the stored version under the models root (built in a staging directory and renamed,
/// so the directory is complete or absent) and returns where.
async fn materialize(
    cluster: &Cluster,
    reloader: &Reloader,
    model: &str,
    version: &str,
) -> Result<PathBuf, RequestError> {
    let root = reloader.models_root();
    let out = local_dir(root, model, version)?;
    if out.join(MANIFEST).exists() {
        return Ok(out);
    }
    let kind = bundle_kind(model).map_err(|e| RequestError::invalid("model", e.to_string()))?;
    let stored = cluster.get_artifact(&kind, version).await.map_err(refused)?;
    let bytes = stored
        .get(MANIFEST)
        .ok_or_else(|| RequestError::invalid("version", format!("{kind}/{version} has no {MANIFEST}")))?;
    let parent = out.parent().unwrap_or(root);
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| RequestError::Internal(format!("{}: {e}", parent.display())))?;
    let stage = tempfile::Builder::new()
        .prefix(".bundle-stage-")
        .tempdir_in(parent)
        .map_err(|e| RequestError::Internal(format!("{}: {e}", parent.display())))?;
    tokio::fs::write(stage.path().join(MANIFEST), bytes)
        .await
        .map_err(|e| RequestError::Internal(format!("{}: {e}", stage.path().display())))?;
    let manifest = Manifest::read(stage.path()).map_err(|e| RequestError::invalid("version", e.to_string()))?;
    if manifest.name != model || manifest.version != version {
        return Err(RequestError::invalid(
            "version",
            format!(
                "{kind}/{version} holds the bundle {} {}",
                manifest.name, manifest.version
            ),
        ));
    }
    // The bundle served now: files it shares with the new version are linked, not fetched.
    let (_, current_dir) = reloader.models().resolve(model)?;
    let current = Manifest::read(&current_dir).ok();
    for (rel, sha) in &manifest.files {
        let to = stage.path().join(rel);
        if let Some(d) = to.parent() {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| RequestError::Internal(format!("{}: {e}", d.display())))?;
        }
        let same_here = current
            .as_ref()
            .is_some_and(|c| c.files.get(rel).is_some_and(|s| s.eq_ignore_ascii_case(sha)));
        let local = if same_here {
            Some(current_dir.join(rel))
        } else if let Some(fetched) = manifest.fetched_from(rel) {
            let p = root.join(&fetched);
            if !p.exists() {
                return Err(RequestError::invalid(
                    "version",
                    format!(
                        "{rel} is pinned to the fetched encoder `{}` (sha256 {sha}), which this server lacks at {}: run `nudge models fetch`",
                        manifest.encoder.source.as_deref().unwrap_or_default(),
                        p.display()
                    ),
                ));
            }
            Some(p)
        } else {
            None
        };
        match local {
            // Checked against the manifest when the bundle is loaded, like any bundle.
            Some(from) => link_or_copy(&from, &to)?,
            None => cluster.get_blob(sha, &to).await.map_err(refused)?,
        }
    }
    let staged = stage.keep();
    std::fs::rename(&staged, &out).map_err(|e| RequestError::Internal(format!("{}: {e}", out.display())))?;
    Ok(out)
}

/// What, besides a version itself, this server may refuse it for: the fetched encoders under
/// `<root>/encoders` (their files, sizes and times). A version pinned to an encoder this server
/// lacks is refused with "run `nudge models fetch`"; once that has run, the follower sees this
/// change and tries the version again, without a restart.
pub(crate) fn fetched_encoders(root: &Path) -> String {
    let mut files = Vec::new();
    for source in std::fs::read_dir(root.join("encoders")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(source.path()).into_iter().flatten().flatten() {
            let meta = f.metadata().ok();
            files.push(format!(
                "{} {:?} {:?}",
                f.path().display(),
                meta.as_ref().map(std::fs::Metadata::len),
                meta.and_then(|m| m.modified().ok())
            ));
        }
    }
    files.sort();
    files.join("\n")
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), RequestError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| RequestError::Internal(format!("copying {} to {}: {e}", from.display(), to.display())))
}
