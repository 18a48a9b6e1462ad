//! Experiments in a cluster. An experiment splits customers, and a customer's turns may reach
//! any server; one that ran on the server whose console started it would split only that
//! server's share of them, and its verdict would count them alone. So starting or stopping one
//! on any server is stored in the cluster as what runs — the definition and each arm's rules
//! text, or that none runs — named by its sha256, and the `experiment` SERVING pointer moved.
//! Every server follows: it serves the same arms (the arm is a hash of the salt and the
//! customer, so a customer is in one arm everywhere), and with the cluster's KPIs every
//! console's verdict counts every server's customers.
//!
//! A server refuses an experiment it cannot build (an arm's rules naming an intent its model
//! lacks); it is counted there, and that server serves no experiment until its model's labels or
//! its rules and catalog change, when it tries again. An arm's policy version it does not have
//! is fetched from the cluster's artifact store first.
use super::{blocking, count, unavailable};
use crate::conversations::ConversationService;
use crate::error::RequestError;
use crate::experiment::{ArmPolicy, ExperimentSpec};
use crate::metrics::Metrics;
use nudge_cluster::{content_version, Cluster, EXPERIMENT, POLICY};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const FILE: &str = "experiment.json";
const FORMAT: u32 = 1;

/// What runs, as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shared {
    format: u32,
    /// None: no experiment runs.
    running: Option<Running>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Running {
    spec: ExperimentSpec,
    /// The rules text of each arm that has its own, in arm order.
    rules: Vec<Option<String>>,
}

impl Shared {
    fn here(conv: &ConversationService) -> Shared {
        Shared {
            format: FORMAT,
            running: conv.served_experiment().map(|(spec, rules)| Running { spec, rules }),
        }
    }

    fn files(&self) -> Result<BTreeMap<String, Vec<u8>>, RequestError> {
        let bytes = serde_json::to_vec(self).map_err(|e| RequestError::Internal(e.to_string()))?;
        Ok(BTreeMap::from([(FILE.to_string(), bytes)]))
    }
}

/// Stores what runs here (or that nothing does) as a version and points every server at it.
/// Returns the version.
pub(crate) async fn publish(cluster: &Cluster, conv: &Arc<ConversationService>) -> Result<String, RequestError> {
    let here = Shared::here(conv);
    let files = here.files()?;
    let version = cluster.serve_content(EXPERIMENT, &files).await.map_err(unavailable)?;
    conv.set_cluster_experiment(here.running.map(|r| r.spec.id));
    tracing::info!(%version, "the experiment stored in the cluster and pointed at");
    Ok(version)
}

/// Serves what `version` says runs, unless it runs here already.
pub(crate) async fn serve_version(
    cluster: &Cluster,
    conv: &Arc<ConversationService>,
    metrics: &Metrics,
    version: &str,
) -> Result<(), RequestError> {
    let fetched = match cluster.get_artifact(EXPERIMENT, version).await {
        Ok(f) => f,
        Err(e) => return count(metrics, "experiment", version, Err(unavailable(e))),
    };
    let shared = match parse(version, &fetched) {
        Ok(s) => s,
        Err(e) => return count(metrics, "experiment", version, Err(e)),
    };
    conv.set_cluster_experiment(shared.running.as_ref().map(|r| r.spec.id.clone()));
    if Shared::here(conv) == shared {
        return Ok(());
    }
    // Arms' policy versions this server lacks come from the cluster's store first.
    if let Some(r) = &shared.running {
        for arm in &r.spec.arms {
            if let ArmPolicy::Version(v) = &arm.policy {
                if !conv.policy_store().versions().contains(v) {
                    let files = match cluster.get_artifact(POLICY, v).await {
                        Ok(f) => f,
                        Err(e) => return count(metrics, "experiment", version, Err(unavailable(e))),
                    };
                    let (manifest, files) = nudge_policy::version::from_file_set(files);
                    let c = conv.clone();
                    if let Err(e) = blocking(move || c.policy_store().keep(&manifest, &files)).await {
                        return count(metrics, "experiment", version, Err(e));
                    }
                }
            }
        }
    }
    let c = conv.clone();
    let result = blocking(move || {
        c.stop_experiment();
        match shared.running {
            Some(r) => c
                .start_experiment(r.spec, r.rules)
                .map_err(|e| RequestError::invalid(&e.field, e.reason)),
            None => Ok(()),
        }
    })
    .await;
    count(metrics, "experiment", version, result)
}

fn parse(version: &str, fetched: &BTreeMap<String, Vec<u8>>) -> Result<Shared, RequestError> {
    let invalid = |reason: String| RequestError::invalid("version", format!("{version}: {reason}"));
    let bytes = match (fetched.get(FILE), fetched.len()) {
        (Some(b), 1) => b,
        _ => return Err(invalid(format!("its files are not one {FILE}"))),
    };
    if content_version(fetched) != version {
        return Err(invalid("its file does not hash to it".into()));
    }
    let shared: Shared = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if shared.format != FORMAT {
        return Err(invalid(format!(
            "format {} (this server reads {FORMAT})",
            shared.format
        )));
    }
    if let Some(r) = &shared.running {
        r.spec.check().map_err(|e| invalid(e.to_string()))?;
        if r.rules.len() != r.spec.arms.len() {
            return Err(invalid("one rules text (or none) per arm".into()));
        }
    }
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::ArmSpec;

    fn running(rules: Vec<Option<String>>) -> Shared {
        let arm = |name: &str, policy| ArmSpec {
            name: name.into(),
            weight: 1,
            rules_version: None,
            policy,
            wording: Vec::new(),
        };
        Shared {
            format: FORMAT,
            running: Some(Running {
                spec: ExperimentSpec {
                    id: "exp-1-s0".into(),
                    name: "split".into(),
                    salt: "0123".into(),
                    arms: vec![arm("A", ArmPolicy::RulesOnly), arm("B", ArmPolicy::Serving)],
                    started_ms: 1,
                    started_by: "ana".into(),
                },
                rules,
            }),
        }
    }

    fn named(shared: &Shared) -> (String, BTreeMap<String, Vec<u8>>) {
        let files = shared.files().unwrap();
        (content_version(&files), files)
    }

    #[test]
    fn a_stored_state_is_read_back_whole_under_its_own_hash_or_refused() {
        for shared in [
            running(vec![None, Some("[[rule]]".into())]),
            Shared {
                format: FORMAT,
                running: None,
            },
        ] {
            let (version, files) = named(&shared);
            assert_eq!(parse(&version, &files).unwrap(), shared);
        }
        let (version, files) = named(&running(vec![None, None]));
        let refused = |version: &str, files: &BTreeMap<String, Vec<u8>>| parse(version, files).unwrap_err().to_string();
        assert!(refused("00000000000000ff", &files).contains("does not hash to it"));
        let mut more = files.clone();
        more.insert("other.json".into(), b"{}".to_vec());
        assert!(refused(&version, &more).contains("not one experiment.json"));
        let (version, files) = named(&running(vec![None]));
        assert!(refused(&version, &files).contains("one rules text (or none) per arm"));
        let mut later = running(vec![None, None]);
        later.format = FORMAT + 1;
        let (version, files) = named(&later);
        assert!(refused(&version, &files).contains("format 2"));
        let mut one_arm = running(vec![None]);
        if let Some(r) = &mut one_arm.running {
            r.spec.arms.truncate(1);
        }
        let (version, files) = named(&one_arm);
        assert!(refused(&version, &files).contains("2 to 8 arms"));
    }
}
