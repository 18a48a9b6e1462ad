//! Offer decisions over gRPC on loopback: policy pushes, rollback, restart, the decision log,
//! bad input, and hot-loading under concurrent load with no failed call and no mixed versions.
use crate::common::*;
use ndarray::Array1;
use nudge_policy::version::{PolicyManifest, PolicyVersion, FORMAT};
use nudge_policy::{Exploration, FeatureSchema, Policy, RewardModel};
use nudge_proto::v1 as pb;
use std::collections::HashMap;
use std::path::Path;

fn schema() -> FeatureSchema {
    FeatureSchema {
        context: vec!["seg=a".into(), "seg=b".into(), "channel=web".into()],
        offer: vec!["offer=x".into(), "offer=y".into()],
        allow_none: true,
    }
}

/// Version `k`: the bias weight is `k`, so every score of a response tells which version made it
/// ("no offer" scores exactly `k` with an empty context).
fn version(k: usize) -> PolicyVersion {
    let s = schema();
    let mut model = RewardModel::prior(s.dim(), 0.01);
    let mut theta = vec![0.0; s.dim()];
    theta[0] = k as f64;
    theta[1] = 0.5; // offer=x main effect
    model.theta = Array1::from(theta);
    PolicyVersion {
        manifest: PolicyManifest {
            format: FORMAT,
            version: format!("v{k}"),
            parent: (k > 1).then(|| format!("v{}", k - 1)),
            created_unix_ms: k as u64,
            schema: s.clone(),
            exploration: Exploration::EpsilonGreedy { epsilon: 0.3 },
            reward_sha256: None,
            training_window: None,
            ope: None,
            files: Default::default(),
        },
        policy: Policy {
            schema: s,
            model,
            exploration: Exploration::EpsilonGreedy { epsilon: 0.3 },
            projection: None,
        },
    }
}

fn push_request(v: &PolicyVersion) -> pb::LoadPolicyRequest {
    let (manifest, files) = v.encode().unwrap();
    pb::LoadPolicyRequest {
        manifest,
        files: files.into_iter().collect(),
    }
}

fn decide_request(i: usize, with_text: bool) -> pb::DecideRequest {
    pb::DecideRequest {
        conversation_id: format!("conv-{i}"),
        customer_id: format!("customer-13800138000-{i}"),
        channel: "app".into(),
        context: HashMap::new(),
        text: if with_text {
            "where is my order".into()
        } else {
            String::new()
        },
        candidates: vec![
            pb::Offer {
                id: "x".into(),
                features: [("offer=x".to_string(), 1.0)].into(),
            },
            pb::Offer {
                id: "y".into(),
                features: [("offer=y".to_string(), 1.0)].into(),
            },
        ],
        ..Default::default()
    }
}

async fn start(dir: &Path) -> nudge_inference::RunningServer {
    let bundle = write_bundle(&dir.join("bundle"), "tiny", Variant::Bert, nudge_model::Pooling::Mean);
    let registry = dir.join("registry");
    let log = dir.join("decisions");
    start_server(vec![bundle], move |c| {
        c.decisions = Some(nudge_inference::DecisionsConfig {
            policy_registry: registry,
            decision_log: log,
            customer_id_key: nudge_inference::Secret::new("a test key of 16+ bytes"),
            ..Default::default()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_logged_and_policies_hot_swap() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin_channel = channel(server.admin_addr).await;
    let channel = channel(server.grpc_addr).await;
    let mut decide = pb::decisions_client::DecisionsClient::new(channel.clone());
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(admin_channel);

    let err = decide.decide(decide_request(0, true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    let r = admin.load_policy(push_request(&version(1))).await.unwrap().into_inner();
    assert_eq!((r.serving_version.as_str(), r.previous_version.as_str()), ("v1", ""));

    // Decisions: a propensity that is the chosen option's probability, scores from v1, NLU done here.
    let mut answers = Vec::new();
    for i in 0..40 {
        let a = decide.decide(decide_request(i, i % 2 == 0)).await.unwrap().into_inner();
        assert_eq!(a.policy_version, "v1");
        let chosen = a.scores.iter().find(|s| s.offer_id == a.offer_id).unwrap();
        assert_eq!(chosen.probability, a.propensity);
        assert_eq!(a.scores.len(), 3);
        let none = &a.scores[2];
        assert_eq!((none.offer_id.as_str(), none.score), ("", 1.0));
        assert!((a.scores[0].score - 1.5).abs() < 1e-12);
        // ε-greedy with ε = 0.3 over 3 options: x (best) 0.8, the others 0.1.
        assert!((a.scores[0].probability - 0.8).abs() < 1e-12);
        assert_eq!(a.nlu.is_some(), i % 2 == 0);
        answers.push(a);
    }
    assert!(answers.iter().any(|a| a.offer_id == "x"));

    // Every answer is in the log, with the same choice and propensity; ids and texts are not.
    let logged = nudge_records::read_all::<nudge_records::DecisionRecord>(&dir.path().join("decisions"))
        .unwrap()
        .0
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 40);
    for (a, l) in answers.iter().zip(&logged) {
        assert_eq!(l["decision_id"], a.decision_id.as_str());
        assert_eq!(l["offer_id"], a.offer_id.as_str());
        assert_eq!(l["propensity"].as_f64().unwrap(), a.propensity);
        assert_eq!(l["policy_version"], "v1");
        assert_eq!(l["context"]["channel=app"], 1.0);
        assert_eq!(l["customer"].as_str().unwrap().len(), 32);
    }
    assert!(
        logged[0]["context"].get("intent_confidence").is_some(),
        "NLU features logged"
    );
    for seg in nudge_records::segments(&dir.path().join("decisions"), "decisions").unwrap() {
        let text = std::fs::read_to_string(seg).unwrap();
        assert!(
            !text.contains("13800138000") && !text.contains("where is my order"),
            "no personal data in the log"
        );
    }

    // Bad input names the field.
    let mut bad = decide_request(1, false);
    bad.conversation_id.clear();
    let e = decide.decide(bad).await.unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("conversation_id"),
        "{e}"
    );
    let mut bad = decide_request(1, false);
    bad.candidates[1].id = "x".into();
    let e = decide.decide(bad).await.unwrap_err();
    assert!(e.message().contains("candidates[1].id"), "{e}");
    let mut bad = decide_request(1, false);
    bad.candidates[0].features.insert("offer=x".into(), f64::NAN);
    let e = decide.decide(bad).await.unwrap_err();
    assert!(e.message().contains("candidates[0].features[offer=x]"), "{e}");

    // A corrupt push is refused and v1 keeps serving; a good one swaps; rollback goes back.
    let mut corrupt = push_request(&version(2));
    corrupt.files.get_mut("policy.safetensors").unwrap()[90] ^= 0xff;
    let e = admin.load_policy(corrupt).await.unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("sha256"),
        "{e}"
    );
    assert_eq!(
        decide
            .decide(decide_request(1, false))
            .await
            .unwrap()
            .into_inner()
            .policy_version,
        "v1"
    );
    admin.load_policy(push_request(&version(2))).await.unwrap();
    assert_eq!(
        decide
            .decide(decide_request(1, false))
            .await
            .unwrap()
            .into_inner()
            .policy_version,
        "v2"
    );
    let mut other_v2 = version(2);
    other_v2.manifest.created_unix_ms = 99;
    let e = admin.load_policy(push_request(&other_v2)).await.unwrap_err();
    assert!(e.message().contains("immutable"), "{e}");
    let r = admin
        .rollback(pb::RollbackRequest { version: "v1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.serving_version.as_str(), r.previous_version.as_str()), ("v1", "v2"));
    let e = admin
        .rollback(pb::RollbackRequest { version: "v9".into() })
        .await
        .unwrap_err();
    assert!(e.message().contains("v9 is not in this registry"), "{e}");
    server.shutdown().await.unwrap();

    // A restart serves what was serving.
    let server = start(dir.path()).await;
    let mut decide = pb::decisions_client::DecisionsClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    assert_eq!(
        decide
            .decide(decide_request(1, false))
            .await
            .unwrap()
            .into_inner()
            .policy_version,
        "v1"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_loads_under_load_fail_no_call_and_mix_no_versions() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin_channel = channel(server.admin_addr).await;
    let channel = channel(server.grpc_addr).await;
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(admin_channel);
    admin.load_policy(push_request(&version(1))).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // 200 concurrent clients loop on Decide (half with text, so NLU runs too) and Understand.
    let mut clients = Vec::new();
    for c in 0..200 {
        let channel = channel.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut decide = pb::decisions_client::DecisionsClient::new(channel.clone());
            let mut nlu = pb::nlu_client::NluClient::new(channel);
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 2 {
                if c % 4 == 3 {
                    let r = nlu
                        .understand(pb::UnderstandRequest {
                            text: "refund please".into(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("understand: {e}"))?
                        .into_inner();
                    assert_eq!(r.model_version, "t1");
                } else {
                    let a = decide
                        .decide(decide_request(c * 1000 + i, c % 2 == 0))
                        .await
                        .map_err(|e| format!("decide: {e}"))?
                        .into_inner();
                    // Every score of the answer comes from the version it names.
                    let k: f64 = a.policy_version.trim_start_matches('v').parse().unwrap();
                    assert_eq!(a.scores[2].score, k, "{a:?}");
                    assert!((a.scores[0].score - (k + 0.5)).abs() < 1e-12, "{a:?}");
                    seen.push(a.policy_version);
                }
                i += 1;
            }
            Ok::<_, String>(seen)
        }));
    }
    // 20 pushes and a rollback while they run.
    for k in 2..=21 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let r = admin.load_policy(push_request(&version(k))).await.unwrap().into_inner();
        assert_eq!(r.serving_version, format!("v{k}"));
    }
    admin
        .rollback(pb::RollbackRequest { version: "v7".into() })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut calls = 0;
    for c in clients {
        let seen = c.await.unwrap().unwrap();
        calls += seen.len();
        versions.extend(seen);
    }
    assert!(calls >= 300, "{calls} decisions");
    assert!(versions.len() >= 3, "decisions saw several versions: {versions:?}");
    // The last answers came after the rollback.
    let mut decide = pb::decisions_client::DecisionsClient::new(channel);
    assert_eq!(
        decide
            .decide(decide_request(0, false))
            .await
            .unwrap()
            .into_inner()
            .policy_version,
        "v7"
    );
    // Each logged decision names the version that answered it.
    let logged = nudge_records::read_all::<nudge_records::DecisionRecord>(&dir.path().join("decisions"))
        .unwrap()
        .0
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect::<Vec<_>>();
    assert!(logged.len() > calls);
    for l in &logged {
        let k: f64 = l["policy_version"]
            .as_str()
            .unwrap()
            .trim_start_matches('v')
            .parse()
            .unwrap();
        assert_eq!(l["scores"][2].as_f64().unwrap(), k);
    }
    server.shutdown().await.unwrap();
}
