//! The server's side of a cluster (`[cluster]`): its decisions and conversation events forwarded
//! from the local logs to the streams, the other servers' events read into its KPIs (`events`),
//! and what it serves (the policy, each NLU model's bundle, the rules and catalog, the running
//! experiment) following the cluster's SERVING pointers.
//!
//! In cluster mode the pointers are the truth. A change made through the admin door of any
//! server (`PolicyAdmin.LoadPolicy`/`Rollback`, `ModelAdmin.ReloadModel`,
//! `StrategyAdmin.ReloadStrategy`, the console) is checked there,
//! stored in the cluster and the pointer moved; every server, that one too, follows. A server
//! that was down, or starts fresh, reads the pointers when it connects: nobody has to push to it.
//! A version that fails validation on a server is refused and counted there, and the old one keeps
//! serving, exactly as for a change made by hand.
pub(crate) mod bundles;
mod events;
pub(crate) mod experiment;
mod policy;
pub(crate) mod strategy;

pub(crate) use policy::{point_at, publish};

use crate::decide::PolicyStore;
use crate::error::RequestError;
use crate::metrics::Metrics;
use crate::model_admin::Reloader;
use futures::StreamExt;
use nudge_cluster::{Cluster, Forwarder, ForwarderStats, DECISIONS_STREAM, EVENTS_STREAM, POLICY};
use nudge_records::{ConversationEvent, DecisionRecord, Record};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the decision forwarder and the policy follower; abort the handles to stop them.
pub(crate) fn start_decisions(
    cluster: Cluster,
    decision_log: PathBuf,
    store: Arc<PolicyStore>,
    metrics: Metrics,
) -> Vec<JoinHandle<()>> {
    let [forwarder, counters] = forward::<DecisionRecord>(&cluster, decision_log, DECISIONS_STREAM, &metrics);
    let follower = tokio::spawn(follow(
        cluster.clone(),
        POLICY.to_string(),
        String::new,
        move |version| {
            let (cluster, store, metrics) = (cluster.clone(), store.clone(), metrics.clone());
            async move {
                policy::serve_version(&cluster, &store, &metrics, &version)
                    .await
                    .map(drop)
            }
        },
    ));
    vec![forwarder, counters, follower]
}

/// Starts forwarding this server's conversation events to the cluster and reading the other
/// servers' into `kpis` (see `events`); abort the handles to stop them.
pub(crate) fn start_events(
    cluster: Cluster,
    events_log: PathBuf,
    kpis: Arc<crate::kpi::Kpis>,
    metrics: Metrics,
) -> Vec<JoinHandle<()>> {
    let [forwarder, counters] = forward::<ConversationEvent>(&cluster, events_log, EVENTS_STREAM, &metrics);
    let reader = tokio::spawn(events::read_others(cluster, kpis, metrics));
    vec![forwarder, counters, reader]
}

/// Follows the `T` log in `dir` into `stream`, and counts what the forwarder does:
/// `nudge_cluster_events_total` `forwarded`, `duplicate`, `forward_failed` (prefixed `events_`
/// for conversation events) and `nudge_cluster_backlog{stream}`.
fn forward<T: Record + Send + Sync + 'static>(
    cluster: &Cluster,
    dir: PathBuf,
    stream: &'static str,
    metrics: &Metrics,
) -> [JoinHandle<()>; 2] {
    let stats = Arc::new(ForwarderStats::default());
    let forwarder = Forwarder::spawn::<T>(cluster.clone(), dir, stream, stats.clone());
    let (prefix, backlog) = if stream == EVENTS_STREAM {
        ("events_", "events")
    } else {
        ("", "decisions")
    };
    let m = metrics.clone();
    let counters = tokio::spawn(async move {
        let labels = ["forwarded", "duplicate", "forward_failed"].map(|l| format!("{prefix}{l}"));
        let mut seen = [0u64; 3];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = [
                stats.forwarded.load(Ordering::Relaxed),
                stats.duplicates.load(Ordering::Relaxed),
                stats.failures.load(Ordering::Relaxed),
            ];
            for (i, label) in labels.iter().enumerate() {
                m.cluster_events
                    .with_label_values(&[label.as_str()])
                    .inc_by(now[i].saturating_sub(seen[i]));
            }
            seen = now;
            m.cluster_backlog
                .with_label_values(&[backlog])
                .set(stats.backlog.load(Ordering::Relaxed) as i64);
        }
    });
    [forwarder, counters]
}

/// Starts one follower per served NLU model; abort the handles to stop them. Refuses model
/// names that cannot name a SERVING pointer.
pub(crate) fn start_bundles(
    cluster: Cluster,
    reloader: Arc<Reloader>,
    metrics: Metrics,
) -> Result<Vec<JoinHandle<()>>, nudge_cluster::ClusterError> {
    let names = reloader.models().names();
    let kinds = names
        .iter()
        .map(|n| nudge_cluster::bundle_kind(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .zip(kinds)
        .map(|(name, kind)| {
            let (cluster, reloader, metrics) = (cluster.clone(), reloader.clone(), metrics.clone());
            let root = reloader.models_root().to_path_buf();
            let basis = move || bundles::fetched_encoders(&root);
            tokio::spawn(follow(cluster.clone(), kind, basis, move |version| {
                let (cluster, reloader, metrics, name) =
                    (cluster.clone(), reloader.clone(), metrics.clone(), name.clone());
                async move { bundles::serve_version(&cluster, &reloader, &metrics, &name, &version).await }
            }))
        })
        .collect())
}

/// Starts the follower of the cluster's rules and catalog; abort the handle to stop it. The
/// first server of a cluster that has none publishes its own files.
pub(crate) fn start_strategy(
    cluster: Cluster,
    conversations: Arc<crate::conversations::ConversationService>,
    metrics: Metrics,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if has_none(&cluster, nudge_cluster::STRATEGY).await {
            if let Err(e) = strategy::publish(&cluster, &conversations).await {
                tracing::warn!(error = %e, "publishing this server's rules and catalog as the cluster's first");
            }
        }
        let c = conversations.clone();
        let basis = move || format!("{:?} {:?}", c.model_labels().ok(), c.experiment().map(|e| e.id));
        follow(
            cluster.clone(),
            nudge_cluster::STRATEGY.to_string(),
            basis,
            move |version| {
                let (cluster, conv, metrics) = (cluster.clone(), conversations.clone(), metrics.clone());
                async move { strategy::serve_version(&cluster, &conv, &metrics, &version).await }
            },
        )
        .await
    })
}

/// Starts the follower of the cluster's experiment; abort the handle to stop it. Started after
/// the console, which serves again what its store says runs: a server whose cluster has no
/// experiment yet publishes that.
pub(crate) fn start_experiments(
    cluster: Cluster,
    conversations: Arc<crate::conversations::ConversationService>,
    metrics: Metrics,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if has_none(&cluster, nudge_cluster::EXPERIMENT).await && conversations.served_experiment().is_some() {
            if let Err(e) = experiment::publish(&cluster, &conversations).await {
                tracing::warn!(error = %e, "publishing this server's experiment as the cluster's first");
            }
        }
        let c = conversations.clone();
        let basis = move || format!("{:?} {:?}", c.model_labels().ok(), c.strategy_versions());
        follow(
            cluster.clone(),
            nudge_cluster::EXPERIMENT.to_string(),
            basis,
            move |version| {
                let (cluster, conv, metrics) = (cluster.clone(), conversations.clone(), metrics.clone());
                async move { experiment::serve_version(&cluster, &conv, &metrics, &version).await }
            },
        )
        .await
    })
}

/// Whether the cluster answers and has no version of `kind` yet (a first server then publishes
/// its own).
async fn has_none(cluster: &Cluster, kind: &str) -> bool {
    let serving = async {
        cluster.ensure().await?;
        cluster.serving(kind).await
    };
    matches!(serving.await, Ok(None))
}

/// How often a follower holding a refused version looks whether what it was refused against
/// here has changed.
const RECHECK: Duration = Duration::from_secs(2);

/// Serves whatever the SERVING pointer of `kind` names, reconnecting for as long as it runs.
/// `serve` failing with `Unavailable` (the version could not be fetched: a NATS hiccup) watches
/// again, which delivers the current value again; any other failure is a refusal.
///
/// A refusal may be this server's, not the version's: rules naming an intent of a model whose
/// bundle is still on its way, an experiment whose wording names an offer of a catalog not yet
/// arrived — each kind follows its own pointer, so the order they land in is anyone's. So
/// `basis` says what, besides the version itself, this server checked it against (its model's
/// labels, say): while the pointer stays, a refused version is served again once that has
/// changed, and only then (a bundle pinned to a fetched encoder the server lacks is tried
/// again once `nudge models fetch` has run). A constant basis (`String::new`) never retries: a
/// version refused for itself (a checksum, a shape) waits for the next one.
async fn follow<F, Fut>(cluster: Cluster, kind: String, basis: impl Fn() -> String, mut serve: F)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    // The version last refused, and the basis it was refused on.
    let mut refused: Option<(String, String)> = None;
    loop {
        let watched = async {
            cluster.ensure().await?;
            cluster.watch_serving(&kind).await
        };
        match watched.await {
            Ok(mut pointer) => {
                let mut recheck = tokio::time::interval(RECHECK);
                loop {
                    let version = tokio::select! {
                        v = pointer.next() => match v {
                            Some(Ok(version)) => version,
                            Some(Err(e)) => {
                                tracing::warn!(%kind, error = %e, "the serving pointer's watch ended");
                                break;
                            }
                            None => break,
                        },
                        _ = recheck.tick() => match &refused {
                            Some((version, on)) if basis() != *on => {
                                tracing::info!(%kind, %version, "serving a refused version again: what it was checked against here changed");
                                version.clone()
                            }
                            _ => continue,
                        },
                    };
                    let on = basis();
                    match serve(version.clone()).await {
                        Ok(()) => refused = None,
                        Err(RequestError::Unavailable(_)) => break,
                        Err(_) => refused = Some((version, on)),
                    }
                }
            }
            Err(e) => tracing::warn!(%kind, error = %e, "cannot watch the cluster's serving pointer yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Counts a version followed or refused (`<what>_followed`, `<what>_refused`); a version that
/// could not be fetched is neither: it is fetched again.
fn count<T>(metrics: &Metrics, what: &str, version: &str, result: Result<T, RequestError>) -> Result<T, RequestError> {
    match &result {
        Ok(_) => {
            metrics
                .cluster_events
                .with_label_values(&[&format!("{what}_followed")])
                .inc();
            tracing::info!(%what, %version, "serving the cluster's version");
        }
        Err(RequestError::Unavailable(e)) => {
            tracing::warn!(%what, %version, error = %e, "fetching the cluster's version (retried)");
        }
        Err(e) => {
            metrics
                .cluster_events
                .with_label_values(&[&format!("{what}_refused")])
                .inc();
            tracing::error!(%what, %version, error = %e, "the cluster's version is refused; the old one keeps serving");
        }
    }
    result
}

fn unavailable(e: nudge_cluster::ClusterError) -> RequestError {
    RequestError::Unavailable(format!("cluster: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RequestError::Internal(e.to_string()))?
}
