//! The shop's rules and catalog in a cluster. A change made on any server — a reload through
//! `StrategyAdmin`, a save, rollback or ship in that server's console — is checked there and
//! made live there first; then its files (the rules file, the catalog file and the products CSV
//! it names) are stored in the cluster as one version, named by their sha256, and the
//! `strategy` SERVING pointer moved. Every server follows: it writes the files over its own
//! (`[strategy] rules`/`catalog`) and reloads through the same checks as a reload by hand; a
//! version it refuses (a rule naming an intent its model lacks, say) leaves its files and what
//! it serves as they were, and is counted; it is tried again when the model's labels or the
//! running experiment change here, since the bundle with that intent may simply not have
//! arrived yet.
//!
//! Content naming makes following idempotent: the server that published finds its own files
//! already are the version, and so does a server that restarts on them.
use super::{blocking, count, unavailable};
use crate::conversations::ConversationService;
use crate::error::RequestError;
use crate::metrics::Metrics;
use nudge_cluster::{content_version, Cluster, STRATEGY};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RULES: &str = "rules.toml";
const CATALOG: &str = "catalog.toml";

/// The files of the serving strategy as the cluster stores them, by name: `rules.toml`,
/// `catalog.toml` and the products CSV under its own file name.
fn files(conv: &ConversationService) -> Result<BTreeMap<String, Vec<u8>>, RequestError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| RequestError::FailedPrecondition(format!("{}: {e}", p.display())));
    let catalog = read(conv.catalog_path())?;
    let mut files = BTreeMap::from([
        (RULES.to_string(), read(conv.rules_path())?),
        (CATALOG.to_string(), catalog.clone()),
    ]);
    if let Some((name, path)) = products_csv(conv.catalog_path(), &catalog)? {
        files.insert(name, read(&path)?);
    }
    Ok(files)
}

/// The products CSV a catalog text names, as (file name, path beside the catalog). Only a file
/// beside the catalog can travel: a path elsewhere is refused, naming the field.
fn products_csv(catalog_path: &Path, catalog: &[u8]) -> Result<Option<(String, PathBuf)>, RequestError> {
    let invalid = |r: String| RequestError::invalid("catalog.products_csv", r);
    let text = std::str::from_utf8(catalog).map_err(|e| invalid(e.to_string()))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(name) = table.get("products_csv").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name != RULES
        && name != CATALOG;
    if !plain {
        return Err(invalid(format!(
            "`{name}`: in a cluster the products CSV is a file beside the catalog (a plain file name)"
        )));
    }
    let dir = catalog_path.parent().unwrap_or(Path::new("."));
    Ok(Some((name.to_string(), dir.join(name))))
}

/// Stores the files serving here as a version and points every server at it. Returns the
/// version.
pub(crate) async fn publish(cluster: &Cluster, conv: &Arc<ConversationService>) -> Result<String, RequestError> {
    let c = conv.clone();
    let files = blocking(move || files(&c)).await?;
    let version = cluster.serve_content(STRATEGY, &files).await.map_err(unavailable)?;
    tracing::info!(%version, "strategy files stored in the cluster and pointed at");
    Ok(version)
}

/// Serves `version` of the cluster's strategy files here, unless they are this server's files
/// already.
pub(crate) async fn serve_version(
    cluster: &Cluster,
    conv: &Arc<ConversationService>,
    metrics: &Metrics,
    version: &str,
) -> Result<(), RequestError> {
    let c = conv.clone();
    let local = blocking(move || files(&c)).await.map(|f| content_version(&f)).ok();
    if local.as_deref() == Some(version) {
        return Ok(());
    }
    let fetched = match cluster.get_artifact(STRATEGY, version).await {
        Ok(f) => f,
        Err(e) => return count(metrics, "strategy", version, Err(unavailable(e))),
    };
    let (c, v) = (conv.clone(), version.to_string());
    let result = blocking(move || write_and_reload(&c, &v, fetched)).await;
    count(metrics, "strategy", version, result)
}

/// Writes the fetched files over this server's and reloads, holding off console edits and
/// reloads by hand meanwhile; puts every file back if the reload refuses them.
fn write_and_reload(
    conv: &ConversationService,
    version: &str,
    fetched: BTreeMap<String, Vec<u8>>,
) -> Result<(), RequestError> {
    if content_version(&fetched) != version {
        return Err(RequestError::invalid(
            "version",
            format!("the files of {version} do not hash to it"),
        ));
    }
    let _files = conv.changing_files();
    let (Some(rules), Some(catalog)) = (fetched.get(RULES), fetched.get(CATALOG)) else {
        return Err(RequestError::invalid(
            "version",
            format!("{version} lacks {RULES} or {CATALOG}"),
        ));
    };
    let mut targets = vec![
        (conv.rules_path().to_path_buf(), rules.clone()),
        (conv.catalog_path().to_path_buf(), catalog.clone()),
    ];
    let csv = products_csv(conv.catalog_path(), catalog)?;
    match (&csv, fetched.len()) {
        (Some((name, path)), 3) if fetched.contains_key(name) => targets.push((path.clone(), fetched[name].clone())),
        (None, 2) => {}
        _ => {
            return Err(RequestError::invalid(
                "version",
                format!("{version}: its files are not a rules file, a catalog and the CSV it names"),
            ))
        }
    }
    // Written CSV first and rules last, so that a crash part-way leaves files a restart still checks.
    targets.reverse();
    let mut old = Vec::new();
    for (path, bytes) in &targets {
        old.push((path.clone(), std::fs::read(path).ok()));
        crate::atomic::write_atomic(path, bytes)
            .map_err(|e| RequestError::Internal(format!("{}: {e}", path.display())))?;
    }
    if let Err(e) = conv.reload() {
        for (path, bytes) in old {
            let restored = match bytes {
                Some(b) => crate::atomic::write_atomic(&path, &b),
                None => std::fs::remove_file(&path),
            };
            if let Err(err) = restored {
                tracing::error!(path = %path.display(), error = %err, "putting a strategy file back");
            }
        }
        return Err(RequestError::invalid("version", e.to_string()));
    }
    Ok(())
}
