//! The whole learning loop over gRPC: a simulated shop (conversion probability per customer
//! segment × offer) asks the server for decisions and reports conversions to the optimizer, which
//! runs as its own process, trains, passes its off-policy gate and pushes versions the server
//! hot-loads. The optimizer is killed (SIGKILL) halfway and restarted: no acknowledged outcome
//! is lost and learning goes on. The learned policy must reach ≥ 90 % of the oracle's conversion
//! rate and beat uniform clearly; the cumulative-regret curves are written as CSV and PNG. A
//! second world has an interaction only a neural-linear policy can learn.
use crate::common::*;
use crate::support;
use nudge_proto::v1 as pb;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nudge");
/// Conversion probability of offer o1..o4 for segments a, b, c.
const TRUTH: [[f64; 4]; 3] = [
    [0.04, 0.20, 0.08, 0.02],
    [0.25, 0.03, 0.10, 0.06],
    [0.05, 0.06, 0.03, 0.22],
];
const SEGMENTS: [&str; 3] = ["a", "b", "c"];

/// `nudge optimizer serve --config FILE` as its own process, and its gRPC address.
fn start_optimizer(config: &Path) -> (KillOnDrop, String) {
    let (child, addrs) = support::start_nudge(&["optimizer", "serve"], config);
    (child, addrs["grpc"].clone())
}

/// The simulator's world: offers o1..o4 one-hot, segments one-hot.
const SEGMENT_SCHEMA: &str = r#"
[initial_schema]
context = ["seg=a", "seg=b", "seg=c"]
offer = ["offer=o1", "offer=o2", "offer=o3", "offer=o4"]
allow_none = false
"#;

/// Optimizer settings for a run against `server`; `extra` adds TOML tables (the schema, the model).
fn write_config(dir: &Path, server: &str, extra: &str) -> PathBuf {
    std::fs::write(
        dir.join("reward.toml"),
        "reward = \"conversion - 0.1 * complaint\"\nwindow_seconds = 0.25\n",
    )
    .unwrap();
    let cfg = format!(
        r#"grpc_addr = "127.0.0.1:0"
decision_logs = ["{d}/decisions"]
outcome_log = "{d}/outcomes"
audit_log = "{d}/audit"
registry = "{d}/opt-registry"
servers = ["{server}"]
reward_file = "{d}/reward.toml"
train_every_outcomes = 1000000
train_every_ms = 300
prior_var = 1.0

[durability]
mode = "always"

{learn}
{extra}"#,
        d = dir.display(),
        learn = support::LEARN,
    );
    let p = dir.join("optimizer.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// A server with a tiny NLU bundle and decisions on, its registry and log under `dir`.
async fn start_decision_server(dir: &Path) -> nudge_inference::RunningServer {
    let bundle = write_bundle(&dir.join("bundle"), "tiny", Variant::Bert, nudge_model::Pooling::Mean);
    let (reg, log) = (dir.join("srv-registry"), dir.join("decisions"));
    start_server(vec![bundle], move |c| {
        c.decisions = Some(nudge_inference::DecisionsConfig {
            policy_registry: reg,
            decision_log: log,
            customer_id_key: nudge_inference::Secret::new("simulator key, 16+ bytes"),
            ..Default::default()
        })
    })
    .await
}

fn request(i: usize, seg: usize) -> pb::DecideRequest {
    pb::DecideRequest {
        conversation_id: format!("c{i}"),
        customer_id: format!("cust{i}"),
        channel: "web".into(),
        context: [(format!("seg={}", SEGMENTS[seg]), 1.0)].into(),
        candidates: (1..=4)
            .map(|o| pb::Offer {
                id: format!("o{o}"),
                features: [(format!("offer=o{o}"), 1.0)].into(),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_policy_approaches_the_oracle_and_survives_an_optimizer_crash() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start_decision_server(dir.path()).await;
    let config = write_config(dir.path(), &format!("http://{}", server.admin_addr), SEGMENT_SCHEMA);
    let cfg2 = config.clone();
    let (mut optimizer, mut opt_addr) = tokio::task::spawn_blocking(move || start_optimizer(&cfg2))
        .await
        .unwrap();

    let mut decide = pb::decisions_client::DecisionsClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let mut outcomes = pb::optimizer_client::OptimizerClient::connect(opt_addr.clone())
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let oracle: f64 = TRUTH.iter().map(|r| r.iter().copied().fold(0.0, f64::max)).sum::<f64>() / 3.0;
    let uniform: f64 = TRUTH.iter().flatten().sum::<f64>() / 12.0;
    // Per decision: expected conversion of the chosen offer (what the policy is worth).
    let mut expected = Vec::new();
    let mut acked = 0u64;
    let mut versions = std::collections::BTreeSet::new();
    let (rounds, per_round) = (16, 250);
    for round in 0..rounds {
        if round == rounds / 2 {
            // Crash the optimizer (whatever it is doing) and start it again on the same files.
            optimizer.kill().unwrap();
            optimizer.wait().unwrap();
            let cfg2 = config.clone();
            let (c, a) = tokio::task::spawn_blocking(move || start_optimizer(&cfg2))
                .await
                .unwrap();
            (optimizer, opt_addr) = (c, a);
            outcomes = pb::optimizer_client::OptimizerClient::connect(opt_addr.clone())
                .await
                .unwrap();
            let st = outcomes.status(pb::StatusRequest {}).await.unwrap().into_inner();
            assert_eq!(
                st.outcomes_recorded, acked,
                "every acknowledged outcome survived the crash"
            );
        }
        for i in 0..per_round {
            let n = round * per_round + i;
            let seg = rng.random_range(0..3);
            let d = decide.decide(request(n, seg)).await.unwrap().into_inner();
            versions.insert(d.policy_version.clone());
            let o: usize = d.offer_id.trim_start_matches('o').parse::<usize>().unwrap() - 1;
            let p = TRUTH[seg][o];
            expected.push(p);
            let kind = if rng.random::<f64>() < p {
                pb::OutcomeKind::Convert
            } else {
                pb::OutcomeKind::Shown
            };
            let r = outcomes
                .report_outcome(pb::ReportOutcomeRequest {
                    event_id: format!("e{n}"),
                    decision_id: d.decision_id.clone(),
                    kind: kind as i32,
                    revenue: 10.0,
                    margin: 2.0,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!r.duplicate && !r.late);
            acked += 1;
            if n == 7 {
                // The same event again is acknowledged and ignored; an unknown decision, an
                // unspecified kind and a late event are answered as such.
                let again = pb::ReportOutcomeRequest {
                    event_id: "e7".into(),
                    decision_id: d.decision_id.clone(),
                    kind: pb::OutcomeKind::Complaint as i32,
                    ..Default::default()
                };
                assert!(outcomes.report_outcome(again).await.unwrap().into_inner().duplicate);
                let unknown = pb::ReportOutcomeRequest {
                    event_id: "e-x".into(),
                    decision_id: "nope".into(),
                    kind: pb::OutcomeKind::Click as i32,
                    ..Default::default()
                };
                let e = outcomes.report_outcome(unknown).await.unwrap_err();
                assert!(
                    e.code() == tonic::Code::NotFound && e.message().contains("decision_id"),
                    "{e}"
                );
                let bad = pb::ReportOutcomeRequest {
                    event_id: "e-y".into(),
                    decision_id: d.decision_id.clone(),
                    ..Default::default()
                };
                let e = outcomes.report_outcome(bad).await.unwrap_err();
                assert!(
                    e.code() == tonic::Code::InvalidArgument && e.message().starts_with("kind"),
                    "{e}"
                );
                let late = pb::ReportOutcomeRequest {
                    event_id: "e-late".into(),
                    decision_id: d.decision_id.clone(),
                    kind: pb::OutcomeKind::Complaint as i32,
                    time_unix_ms: 4_000_000_000_000,
                    ..Default::default()
                };
                assert!(outcomes.report_outcome(late).await.unwrap().into_inner().late);
                acked += 1;
            }
        }
        // Let reward windows close and the trainer (every 300 ms) run.
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    let tail = per_round * 4;
    let learned: f64 = expected[expected.len() - tail..].iter().sum::<f64>() / tail as f64;
    let first: f64 = expected[..per_round].iter().sum::<f64>() / per_round as f64;

    // Regret per decision against the oracle, for the learned run and for uniform choice.
    let mut rows = String::from("decision,learned_regret,uniform_regret\n");
    let (mut r_l, mut r_u) = (0.0, 0.0);
    let mut curve = Vec::new();
    for (i, p) in expected.iter().enumerate() {
        r_l += oracle - p;
        r_u += oracle - uniform;
        rows.push_str(&format!("{},{r_l:.4},{r_u:.4}\n", i + 1));
        curve.push((i as f64 + 1.0, r_l, r_u));
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(out.join("learning_loop_regret.csv"), rows).unwrap();
    write_regret_png(&out.join("learning_loop_regret.png"), &curve);
    let st = outcomes.status(pb::StatusRequest {}).await.unwrap().into_inner();
    eprintln!(
        "oracle {oracle:.4}, uniform {uniform:.4}, first round {first:.4}, learned (last {tail}) {learned:.4}; \
         regret {r_l:.1} vs uniform {r_u:.1}; versions served {versions:?}; optimizer {st:?}"
    );
    assert!(
        learned >= 0.9 * oracle,
        "learned {learned:.4} < 90% of oracle {oracle:.4}"
    );
    assert!(
        learned > uniform + 0.6 * (oracle - uniform),
        "learned {learned:.4} vs uniform {uniform:.4}"
    );
    assert!(versions.len() >= 4, "{versions:?}");
    assert!(st.trainings >= 2);
    // The audit log is typed records, every line of it: judged candidates with finite
    // estimates, and the pushes.
    let (audit, malformed) = nudge_records::read_all::<nudge_records::AuditRecord>(&dir.path().join("audit")).unwrap();
    assert_eq!(malformed, 0);
    assert!(audit.iter().any(|a| matches!(&a.event,
        nudge_records::AuditEvent::Judged { verdict, .. } if verdict.candidate.dr.value.is_finite())));
    assert!(audit
        .iter()
        .any(|a| matches!(&a.event, nudge_records::AuditEvent::Pushed { .. })));

    // An operator rolls the server back; the optimizer is killed and restarted. It must follow
    // the rollback (from the server's answer to ListPolicies), never push the version the
    // operator removed, and judge later candidates against the rolled-back version.
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(channel(server.admin_addr).await);
    let listed = admin
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    let removed = listed.serving_version.clone();
    let back_to = listed
        .loaded_versions
        .iter()
        .filter(|v| **v != removed)
        .max_by_key(|v| v.trim_start_matches('v').parse::<u64>().unwrap_or(0))
        .unwrap_or_else(|| panic!("a version to roll back to: {listed:?}"))
        .clone();
    let r = admin
        .rollback(pb::RollbackRequest {
            version: back_to.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.serving_version.as_str(), r.previous_version.as_str()),
        (back_to.as_str(), removed.as_str())
    );
    optimizer.kill().unwrap();
    optimizer.wait().unwrap();
    let cfg2 = config.clone();
    let (c, a) = tokio::task::spawn_blocking(move || start_optimizer(&cfg2))
        .await
        .unwrap();
    optimizer = c;
    outcomes = pb::optimizer_client::OptimizerClient::connect(a).await.unwrap();
    // Several training rounds (every 300 ms) while decisions go on.
    let registry = nudge_policy::Registry::open(dir.path().join("opt-registry")).unwrap();
    for n in 0..20 {
        let d = decide.decide(request(100_000 + n, n % 3)).await.unwrap().into_inner();
        let st = outcomes.status(pb::StatusRequest {}).await.unwrap().into_inner();
        let serving = admin
            .list_policies(pb::ListPoliciesRequest {})
            .await
            .unwrap()
            .into_inner()
            .serving_version;
        for v in [&st.serving_version, &serving, &d.policy_version] {
            assert_ne!(*v, removed, "the optimizer serves or pushed the removed version again");
            // The rolled-back version or one trained on top of it, in as many rounds as ran
            // meanwhile: its ancestry reaches `back_to` without passing the removed version.
            let mut cur = v.clone();
            while cur != back_to {
                assert_ne!(cur, removed, "{v} descends from the removed version");
                match registry.load(&cur).unwrap().manifest.parent {
                    Some(p) => cur = p,
                    None => panic!("{v} is neither {back_to} nor trained from it (removed: {removed})"),
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    optimizer.kill().unwrap();
    let _ = optimizer.wait();
    server.shutdown().await.unwrap();

    // Replay the same logs with another reward: estimates printed, nothing pushed.
    let d = dir.path();
    std::fs::write(
        d.join("revenue.toml"),
        "reward = \"conversion * revenue\"\nwindow_seconds = 0.25\n",
    )
    .unwrap();
    let versions_before = std::fs::read_dir(d.join("opt-registry")).unwrap().count();
    let out = Command::new(BIN)
        .args(["optimizer", "replay", "--reward"])
        .arg(d.join("revenue.toml"))
        .arg("--logs")
        .arg(d.join("decisions"))
        .arg("--logs")
        .arg(d.join("outcomes"))
        .arg("--registry")
        .arg(d.join("opt-registry"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("4020 decisions") && text.contains("| candidate |") && text.contains("would"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(d.join("opt-registry")).unwrap().count(),
        versions_before
    );
    // A reward file with a syntax error is refused, by replay and by the service at start.
    std::fs::write(d.join("bad.toml"), "reward = \"conversion * (margin\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["optimizer", "replay", "--reward"])
        .arg(d.join("bad.toml"))
        .arg("--logs")
        .arg(d.join("decisions"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("column") && err.contains("expected `)`"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(&config)
        .unwrap()
        .replace("reward.toml", "bad.toml");
    std::fs::write(d.join("bad-optimizer.toml"), cfg).unwrap();
    let out = Command::new(BIN)
        .args(["optimizer", "serve", "--config"])
        .arg(d.join("bad-optimizer.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("reward expression"), "{err}");
}

/// Conversion of offers o1, o2 given binary context features x1, x2: o1 is the better offer
/// exactly when x1 XOR x2, which no policy linear in `[1, x1, x2] ⊗ [1, o1, o2]` can express
/// (its best is 0.175, the oracle's 0.3).
fn xor_truth(x1: usize, x2: usize, offer: usize) -> f64 {
    if ((x1 ^ x2) == 1) == (offer == 0) {
        0.3
    } else {
        0.05
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neural_linear_policy_learns_an_interaction_over_grpc() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start_decision_server(dir.path()).await;
    let extra = r#"
[learn.model]
kind = "neural_linear"
hidden = [16]
epochs = 40

[initial_schema]
context = ["x1", "x2"]
offer = ["offer=o1", "offer=o2"]
allow_none = false
"#;
    let config = write_config(dir.path(), &format!("http://{}", server.admin_addr), extra);
    let (mut optimizer, opt_addr) = tokio::task::spawn_blocking(move || start_optimizer(&config))
        .await
        .unwrap();
    let mut decide = pb::decisions_client::DecisionsClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let mut outcomes = pb::optimizer_client::OptimizerClient::connect(opt_addr).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut expected = Vec::new();
    let mut last = None;
    let (rounds, per_round) = (14, 250);
    for n in 0..rounds * per_round {
        let (x1, x2) = (rng.random_range(0..2usize), rng.random_range(0..2usize));
        let req = pb::DecideRequest {
            conversation_id: format!("c{n}"),
            customer_id: format!("cust{n}"),
            channel: "app".into(),
            context: [("x1".to_string(), x1 as f64), ("x2".to_string(), x2 as f64)].into(),
            candidates: (1..=2)
                .map(|o| pb::Offer {
                    id: format!("o{o}"),
                    features: [(format!("offer=o{o}"), 1.0)].into(),
                })
                .collect(),
            ..Default::default()
        };
        let d = decide.decide(req).await.unwrap().into_inner();
        let o = usize::from(d.offer_id == "o2");
        let p = xor_truth(x1, x2, o);
        expected.push(p);
        let kind = if rng.random::<f64>() < p {
            pb::OutcomeKind::Convert
        } else {
            pb::OutcomeKind::Shown
        };
        outcomes
            .report_outcome(pb::ReportOutcomeRequest {
                event_id: format!("e{n}"),
                decision_id: d.decision_id.clone(),
                kind: kind as i32,
                ..Default::default()
            })
            .await
            .unwrap();
        last = Some((x1, x2, d));
        if n % per_round == per_round - 1 {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        }
    }
    let tail = 4 * per_round;
    let learned: f64 = expected[expected.len() - tail..].iter().sum::<f64>() / tail as f64;
    eprintln!("neural-linear: last {tail} decisions {learned:.4}; oracle 0.3, best linear 0.175, uniform 0.175");
    assert!(learned >= 0.9 * 0.3, "learned {learned:.4} < 90% of the oracle's 0.3");

    // The server answered with a neural-linear version, and its scores are that version's:
    // the trunk read back from the server's registry gives the same numbers.
    let (x1, x2, d) = last.unwrap();
    let pv = nudge_policy::PolicyVersion::load(&dir.path().join("srv-registry").join(&d.policy_version)).unwrap();
    assert!(pv.policy.model.trunk.is_some(), "{} has no trunk", d.policy_version);
    let trunk = pv.manifest.ope.as_ref().unwrap()["trunk"].clone();
    assert_eq!(trunk["hidden"], serde_json::json!([16]), "{trunk}");
    let xs = pv
        .policy
        .schema
        .options(&[x1 as f64, x2 as f64], &[vec![1.0, 0.0], vec![0.0, 1.0]]);
    for (s, x) in d.scores.iter().zip(&xs) {
        let m = pv.policy.model.mean(&pv.policy.model.features(x));
        assert!((s.score - m).abs() < 1e-9, "{} vs {m}", s.score);
    }
    optimizer.kill().unwrap();
    let _ = optimizer.wait();
    server.shutdown().await.unwrap();
}

/// Cumulative regret of the learned policy and of uniform choice, as a line chart.
fn write_regret_png(path: &Path, curve: &[(f64, f64, f64)]) {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let xmax = curve.last().map_or(1.0, |c| c.0);
    let ymax = curve.iter().map(|c| c.1.max(c.2)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax * 1.05)
        .unwrap();
    chart
        .draw_series(LineSeries::new(curve.iter().map(|c| (c.0, c.2)), RED.stroke_width(2)))
        .unwrap();
    chart
        .draw_series(LineSeries::new(curve.iter().map(|c| (c.0, c.1)), BLUE.stroke_width(2)))
        .unwrap();
    root.present().unwrap();
}
