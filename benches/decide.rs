//! Decision-path figures on loopback gRPC: Decide latency with 20 candidates (policy only, and
//! with the message understood in the same call), outcomes ingested per second by the optimizer
//! (each fsynced before its ack), and push-to-serving latency of a new policy version.
//!
//!     cargo bench --bench decide -- [--bundle DIR] [--calls N]
use ndarray::Array1;
use nudge_policy::version::{PolicyManifest, PolicyVersion, FORMAT};
use nudge_policy::{Exploration, FeatureSchema, Policy, RewardModel};
use nudge_proto::v1 as pb;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn schema() -> FeatureSchema {
    FeatureSchema {
        context: ["seg=a", "seg=b", "seg=c", "channel=app", "intent_confidence"]
            .map(String::from)
            .to_vec(),
        offer: (0..20).map(|i| format!("offer={i}")).collect(),
        allow_none: true,
    }
}

fn version(k: usize, exploration: Exploration) -> PolicyVersion {
    let s = schema();
    let mut model = RewardModel::prior(s.dim(), 0.05);
    model.theta = Array1::from_iter((0..s.dim()).map(|i| ((i * 37 + k) % 11) as f64 / 100.0));
    PolicyVersion {
        manifest: PolicyManifest {
            format: FORMAT,
            version: format!("v{k}"),
            parent: None,
            created_unix_ms: k as u64,
            schema: s.clone(),
            exploration: exploration.clone(),
            reward_sha256: None,
            training_window: None,
            ope: None,
            files: Default::default(),
        },
        policy: Policy {
            schema: s,
            model,
            exploration,
            projection: None,
        },
    }
}

fn push(v: &PolicyVersion) -> pb::LoadPolicyRequest {
    let (manifest, files) = v.encode().expect("encode");
    pb::LoadPolicyRequest {
        manifest,
        files: files.into_iter().collect(),
    }
}

fn request(i: usize, text: bool) -> pb::DecideRequest {
    pb::DecideRequest {
        conversation_id: format!("c{i}"),
        customer_id: format!("u{i}"),
        channel: "app".into(),
        context: [(["seg=a", "seg=b", "seg=c"][i % 3].to_string(), 1.0)].into(),
        text: if text {
            "Do you have a coupon for these shoes?".into()
        } else {
            String::new()
        },
        candidates: (0..20)
            .map(|o| pb::Offer {
                id: format!("o{o}"),
                features: [(format!("offer={o}"), 1.0)].into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bundle = PathBuf::from(arg("--bundle").unwrap_or_else(|| "models/bundles/default".into()));
    let calls: usize = arg("--calls").and_then(|c| c.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let server = nudge_inference::start(nudge_inference::ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        bundles: vec![bundle],
        decisions: Some(nudge_inference::DecisionsConfig {
            policy_registry: d.join("srv-registry"),
            decision_log: d.join("decisions"),
            customer_id_key: nudge_inference::Secret::new("bench key, sixteen bytes+"),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("server starts (run `nudge models fetch` for the default bundle)");
    let url = format!("http://{}", server.grpc_addr);
    let admin_url = format!("http://{}", server.admin_addr);
    let mut admin = pb::policy_admin_client::PolicyAdminClient::connect(admin_url.clone())
        .await
        .expect("connect");
    let mut decide = pb::decisions_client::DecisionsClient::connect(url.clone())
        .await
        .expect("connect");

    println!("| Decide, 20 candidates + no offer | policy | calls | p50 ms | p99 ms |\n|---|---|---|---|---|");
    let mut k = 0;
    for (name, exploration) in [
        ("epsilon_greedy", Exploration::EpsilonGreedy { epsilon: 0.05 }),
        (
            "thompson (256 draws)",
            Exploration::Thompson {
                scale: 1.0,
                samples: 256,
            },
        ),
    ] {
        k += 1;
        admin.load_policy(push(&version(k, exploration))).await.expect("push");
        for text in [false, true] {
            let mut lat = Vec::with_capacity(calls);
            for i in 0..calls {
                let t = Instant::now();
                decide.decide(request(i, text)).await.expect("decide");
                lat.push(t.elapsed());
            }
            println!(
                "| {} | {name} | {calls} | {:.2} | {:.2} |",
                if text {
                    "with text (NLU in the call)"
                } else {
                    "context only"
                },
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99)
            );
        }
    }

    // Push-to-serving: from sending LoadPolicy to the first Decide answered by the new version.
    let mut lat = Vec::new();
    for _ in 0..20 {
        k += 1;
        let v = version(k, Exploration::EpsilonGreedy { epsilon: 0.05 });
        let t = Instant::now();
        admin.load_policy(push(&v)).await.expect("push");
        loop {
            let a = decide.decide(request(k, false)).await.expect("decide").into_inner();
            if a.policy_version == format!("v{k}") {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    println!(
        "\npush to serving (LoadPolicy with validation + fsync, then the first answer from it), 20 pushes: p50 {:.2} ms, max {:.2} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 1.0)
    );

    // Outcomes per second into the optimizer, 32 concurrent reporters, each fsynced before its ack.
    std::fs::write(d.join("reward.toml"), "reward = \"conversion * margin\"\n").expect("reward");
    let opt = nudge_optimizer::service::start(nudge_optimizer::service::OptimizerConfig {
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        decision_logs: vec![d.join("decisions")],
        outcome_log: d.join("outcomes"),
        audit_log: d.join("audit"),
        registry: d.join("opt-registry"),
        servers: vec![admin_url.clone()],
        reward_file: d.join("reward.toml"),
        train_every_ms: 3_600_000,
        train_every_outcomes: u64::MAX,
        initial_schema: Some(schema()),
        ..Default::default()
    })
    .await
    .expect("optimizer starts");
    let ids: Vec<String> = nudge_records::read_all::<nudge_records::DecisionRecord>(&d.join("decisions"))
        .expect("decision log")
        .0
        .into_iter()
        .map(|r| r.decision_id)
        .collect();
    let client = pb::optimizer_client::OptimizerClient::connect(format!("http://{}", opt.grpc_addr))
        .await
        .expect("connect");
    let t = Instant::now();
    let per = ids.len() / 32;
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let mut c = client.clone();
            let ids = ids[w * per..(w + 1) * per].to_vec();
            tokio::spawn(async move {
                for (i, id) in ids.iter().enumerate() {
                    c.report_outcome(pb::ReportOutcomeRequest {
                        event_id: format!("{w}-{i}"),
                        decision_id: id.clone(),
                        kind: pb::OutcomeKind::Convert as i32,
                        revenue: 20.0,
                        margin: 4.0,
                        ..Default::default()
                    })
                    .await
                    .expect("report");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("reporter");
    }
    let n = per * 32;
    println!(
        "outcomes ingested: {n} in {:.2} s = {:.0}/s (32 concurrent reporters, fsync before each ack, group-committed)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    opt.shutdown().await;
    let _ = server.shutdown().await;
}
