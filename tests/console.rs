//! The operator console in a real browser: `nudge serve` with the example shop and `[console]`,
//! driven by headless Chromium (Debian's `chromium`, through playwright-core from npm; both
//! installed here if missing, as `.ci/run` does). An editor signs in, writes a rule with an error
//! and sees it at its line, fixes it and makes it live — the next `Turn` over gRPC follows it —
//! a viewer cannot change anything, and the editor compares versions and rolls the change back,
//! which the next `Turn` follows too. Then an A/B test: the editor starts an experiment of the
//! edited rules against the live ones, simulated customers converse and buy (more often with the
//! care bundle), the page shows the split as sound, the verdict with its always-valid interval
//! and the KPIs moved — table, chart and CSV — and the editor ships the winner, which the next
//! `Turn` follows. A viewer browses the catalog, the policy versions and the conversations —
//! one whose id and text hold a phone number and an e-mail shows them masked, and the page holds
//! neither — and the editor serves an older policy version. The change log on disk names who did
//! what. Screenshots go to
//! `target/console-screenshots/`. Needs `cargo run --release -- models fetch`.
use crate::common;
use crate::common::channel;
use crate::support;
use nudge_proto::v1 as pb;
use nudge_records::{ChangeRecord, ConversationEvent, EventKind};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    let ok = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("/usr/bin/chromium") {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "chromium"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed && ok("/usr/bin/chromium"),
            "this test needs Chromium: `apt-get install chromium` (Debian's package; .ci/run installs it)"
        );
    }
    PathBuf::from("/usr/bin/chromium")
}

/// `tests/console/node_modules` from the lock file, if it is not there yet.
fn playwright() -> PathBuf {
    let dir = Path::new("tests/console");
    if !dir.join("node_modules/playwright-core").is_dir() {
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm ci in tests/console failed (needs Node.js and npm; .ci/run installs them)"
        );
    }
    dir.join("e2e.mjs")
}

/// Runs one step of `e2e.mjs`; returns what it printed.
fn browser_step(script: &Path, step: &str, url: &str, shots: &Path) -> String {
    let out = Command::new("node")
        .arg(script)
        .args([step, url])
        .arg(shots)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser step `{step}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How arm B of the experiment words the care bundle.
const WORDED: &str = "Two worry-free years and a power bank, 329";

async fn offer_for_regular_customer(grpc: std::net::SocketAddr, conv: &str) -> String {
    let mut c = pb::conversations_client::ConversationsClient::new(channel(grpc).await);
    let r = c
        .turn(support::battery_question(conv, &format!("cust-{conv}")))
        .await
        .unwrap()
        .into_inner();
    r.offer.map(|o| o.offer_id).unwrap_or_default()
}

/// A copy of the default bundle at `<root>/bundles/<version>` (its encoder and heads linked, its
/// manifest rewritten with `version`); `broken` gives it heads that fail their checksum.
fn shop_bundle(root: &Path, version: &str, broken: bool) -> PathBuf {
    let dir = support::default_bundle_as(&root.join("bundles").join(version), version, |_| {});
    if broken {
        std::fs::remove_file(dir.join("heads.safetensors")).unwrap();
        std::fs::write(dir.join("heads.safetensors"), b"not the heads").unwrap();
    }
    dir
}

/// The version of the default model that answers `Understand`.
async fn model_version(grpc: std::net::SocketAddr) -> String {
    let mut c = pb::nlu_client::NluClient::new(channel(grpc).await);
    let r = c
        .understand(pb::UnderstandRequest {
            text: "where is my parcel".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.model_version
}

/// The care bundle as offered to new regular customers asking about the battery (the shipped
/// experiment allows it; the serving policy chooses among what the rules allow, so a few
/// customers may be asked).
async fn care_bundle(grpc: std::net::SocketAddr, conv: &str) -> pb::OfferDecision {
    let mut c = pb::conversations_client::ConversationsClient::new(channel(grpc).await);
    for i in 0..40 {
        let conv = format!("{conv}-{i}");
        let r = c
            .turn(support::battery_question(&conv, &format!("cust-{conv}")))
            .await
            .unwrap()
            .into_inner();
        if let Some(offer) = r.offer.filter(|o| o.offer_id == "care_bundle") {
            return offer;
        }
    }
    panic!("no customer was offered the care bundle")
}

/// Its price, in cents.
async fn bundle_price(grpc: std::net::SocketAddr, conv: &str) -> i64 {
    care_bundle(grpc, conv).await.price.expect("a price").final_price_cents
}

/// Every third of the customers `shop_traffic` brings is one who bought before: they asked about
/// the battery in a conversation of their own and bought the offer (before the experiment).
fn bought_before(i: u64) -> bool {
    i.is_multiple_of(3)
}

/// Customer `cust-ab-{i}` asks about the battery in conversation `{prefix}{i}`: the answer,
/// the conversation and the customer's id.
async fn ask_battery(
    c: &mut pb::conversations_client::ConversationsClient<tonic::transport::Channel>,
    prefix: &str,
    i: u64,
) -> (pb::TurnResponse, String, String) {
    let (conv, customer_id) = (format!("{prefix}{i}"), format!("cust-ab-{i}"));
    let r = c
        .turn(support::battery_question(&conv, &customer_id))
        .await
        .unwrap()
        .into_inner();
    (r, conv, customer_id)
}

/// The customer buys `offer` at its price.
async fn buy(
    c: &mut pb::conversations_client::ConversationsClient<tonic::transport::Channel>,
    conversation_id: String,
    customer_id: String,
    offer: &pb::OfferDecision,
) {
    c.outcome(pb::ConversationOutcomeRequest {
        conversation_id,
        customer_id,
        decision_id: offer.decision_id.clone(),
        kind: pb::OutcomeKind::Convert as i32,
        revenue_cents: offer.price.as_ref().map_or(0, |p| p.final_price_cents),
    })
    .await
    .unwrap();
}

/// The customers of `shop_traffic` who `bought_before`, buying what they are offered before it
/// starts. Returns how many bought.
async fn earlier_purchases(grpc: std::net::SocketAddr, n: u64) -> u64 {
    let mut c = pb::conversations_client::ConversationsClient::new(channel(grpc).await);
    let mut bought = 0;
    for i in (0..n).filter(|&i| bought_before(i)) {
        let (r, conv, customer_id) = ask_battery(&mut c, "before-ab-", i).await;
        assert_eq!(r.experiment, "", "no experiment runs yet");
        let Some(offer) = r.offer else { continue };
        buy(&mut c, conv, customer_id, &offer).await;
        bought += 1;
    }
    bought
}

/// `n` new regular customers ask about the battery; each buys with the chance its offer gives
/// (care bundle 40 %, warranty 10 %; 40 points more for those who `bought_before`), from a draw
/// fixed per customer. Returns, per arm, the offers made and purchases.
async fn shop_traffic(grpc: std::net::SocketAddr, n: u64) -> HashMap<(String, String), (u64, u64)> {
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            tokio::spawn(async move {
                let mut c = pb::conversations_client::ConversationsClient::new(channel(grpc).await);
                let mut seen: HashMap<(String, String), (u64, u64)> = HashMap::new();
                for i in (t..n).step_by(4) {
                    let (r, conv, customer_id) = ask_battery(&mut c, "ab-", i).await;
                    assert_eq!(r.experiment, "exp-1");
                    let offer = r.offer.unwrap_or_default();
                    // Each arm words its offer as it was told to.
                    match offer.offer_id.as_str() {
                        "care_bundle" => assert_eq!(offer.title_en, WORDED, "arm {}", r.arm),
                        "warranty_1y" => assert_eq!(offer.title_en, "1-year extended warranty for 149"),
                        _ => {}
                    }
                    let chance = match offer.offer_id.as_str() {
                        "care_bundle" => 0.4,
                        "warranty_1y" => 0.1,
                        _ => 0.0,
                    } + if bought_before(i) { 0.4 } else { 0.0 };
                    let bought = rand::rngs::StdRng::seed_from_u64(i).random::<f64>() < chance;
                    if bought {
                        buy(&mut c, conv, customer_id, &offer).await;
                    }
                    let e = seen.entry((r.arm, offer.offer_id)).or_default();
                    e.0 += 1;
                    e.1 += u64::from(bought);
                }
                seen
            })
        })
        .collect();
    let mut all = HashMap::new();
    for t in tasks {
        for (k, (a, b)) in t.await.unwrap() {
            let e: &mut (u64, u64) = all.entry(k).or_default();
            e.0 += a;
            e.1 += b;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_a_rule_sees_it_live_and_rolls_it_back_in_a_browser() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let script = playwright();
    chromium();
    let var = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The console writes the rules file: a copy of the example shop's.
    let rules = var.path().join("rules.toml");
    std::fs::copy("examples/shop/rules.toml", &rules).unwrap();
    let users = var.path().join("users.toml");
    support::users_file(
        &users,
        &[
            ("ana", "editor", "ana's long password"),
            ("vic", "viewer", "vic's long password"),
        ],
    );
    // And the catalog, with the products CSV it names.
    let catalog = var.path().join("catalog.toml");
    std::fs::copy("examples/shop/catalog.toml", &catalog).unwrap();
    std::fs::copy("examples/shop/products.csv", var.path().join("products.csv")).unwrap();
    // Two versions of the default model under a models root of the test's own (and one whose
    // heads do not match its checksums); it serves `shop-a`.
    let models_root = var.path().join("models");
    let bundle_a = shop_bundle(&models_root, "shop-a", false);
    shop_bundle(&models_root, "shop-b", false);
    shop_bundle(&models_root, "shop-broken", true);
    let mut config = common::example_shop_config(var.path());
    config.bundles = vec![bundle_a];
    config.models_root = models_root;
    config.strategy.as_mut().unwrap().rules = rules.clone();
    config.strategy.as_mut().unwrap().catalog = catalog.clone();
    // The optimizer whose audit trail the console shows (started near the end), and one that
    // never answers: the page must say so and show the other's entries.
    let optimizer_addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    config.console = Some(nudge_inference::console::ConsoleConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        users_file: users,
        dir: var.path().join("console"),
        session_minutes: 10,
        optimizers: vec![format!("http://{optimizer_addr}"), dead],
        tls: None,
    });
    let server = nudge_inference::start(config.clone())
        .await
        .expect("the shop with a console starts");
    let url = format!("http://{}/", server.console_addr.unwrap());

    assert_eq!(
        offer_for_regular_customer(server.grpc_addr, "before").await,
        "warranty_1y"
    );
    browser_step(&script, "edit", &url, &shots);
    assert_eq!(
        offer_for_regular_customer(server.grpc_addr, "after-edit").await,
        "care_bundle",
        "the next Turn follows the rule made live in the console"
    );
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains(r#"tier = ["regular", "gold", "platinum"]"#));
    browser_step(&script, "viewer", &url, &shots);
    browser_step(&script, "rollback", &url, &shots);
    assert_eq!(
        offer_for_regular_customer(server.grpc_addr, "after-rollback").await,
        "warranty_1y",
        "the rollback is live too"
    );
    assert_eq!(
        std::fs::read_to_string(&rules).unwrap(),
        std::fs::read_to_string("examples/shop/rules.toml").unwrap()
    );

    // The change log on disk: who did what, in order.
    let (log, malformed) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    assert_eq!(malformed, 0);
    let seen: Vec<(&str, &str, &str, &str)> = log
        .iter()
        .map(|c| (c.user.as_str(), c.role.as_str(), c.action.as_str(), c.version.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("ana", "", "login_failed", ""),
            ("ana", "editor", "login", ""),
            ("ana", "editor", "rules.save", "2"),
            ("vic", "viewer", "login", ""),
            ("ana", "editor", "login", ""),
            ("ana", "editor", "rules.rollback", "3"),
        ]
    );
    assert_eq!(log[2].note, "care bundle for regular customers too");

    // The A/B test: version 2's rules (B) against the live ones (A), half the customers each;
    // a third of its customers bought before it started, and buy more often in it.
    let before = earlier_purchases(server.grpc_addr, 600).await;
    assert!(
        before > 150,
        "{before} of 200 customers were offered something and bought it"
    );
    browser_step(&script, "experiment-start", &url, &shots);
    let seen = shop_traffic(server.grpc_addr, 600).await;
    // Each arm served its own rules: A the live warranty, B the care bundle of version 2.
    let arms: Vec<(&str, &str)> = seen.keys().map(|(a, o)| (a.as_str(), o.as_str())).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        arms.contains(&("A", "warranty_1y")) && arms.contains(&("B", "care_bundle")),
        "{seen:?}"
    );
    eprintln!("A/B traffic: {seen:?}");
    // A restart loses neither the experiment nor its customers: it is served again, and the
    // verdict below is computed from KPIs read back from the event log.
    server.shutdown().await.unwrap();
    let server = nudge_inference::start(config).await.expect("the shop restarts");
    let url = format!("http://{}/", server.console_addr.unwrap());
    let mut c = pb::conversations_client::ConversationsClient::new(channel(server.grpc_addr).await);
    let r = c
        .turn(pb::TurnRequest {
            conversation_id: "after-restart".into(),
            customer_id: "cust-after-restart".into(),
            channel: "app".into(),
            text: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.experiment, "exp-1",
        "the running experiment is served again after a restart"
    );
    let verdict = browser_step(&script, "experiment-verdict", &url, &shots);
    eprintln!("the verdict: {}", verdict.trim());
    assert_eq!(
        offer_for_regular_customer(server.grpc_addr, "after-ship").await,
        "care_bundle",
        "the shipped arm's rules are live"
    );
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains(r#"tier = ["regular", "gold", "platinum"]"#));
    // And its wording is the catalog's now: the file says so, and so does the next offer.
    assert!(std::fs::read_to_string(&catalog)
        .unwrap()
        .contains(&format!("title_en = \"{WORDED}\"")));
    assert_eq!(
        care_bundle(server.grpc_addr, "after-ship-wording").await.title_en,
        WORDED
    );
    let (log, _) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    let actions: Vec<(&str, &str)> = log[6..]
        .iter()
        .map(|c| (c.action.as_str(), c.version.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("login", ""),
            ("experiment.start", "exp-1"),
            ("login", ""),
            ("experiment.ship", "exp-1"),
            ("rules.save", "4"),
            ("catalog.save", "2"),
        ]
    );
    // Every turn and purchase is in the event log, with its arm.
    let (events, malformed) = nudge_records::read_all::<ConversationEvent>(&var.path().join("events")).unwrap();
    assert_eq!(malformed, 0);
    let in_test = |e: &&ConversationEvent| e.conversation_id.starts_with("ab-");
    let turns = events
        .iter()
        .filter(in_test)
        .filter(|e| e.kind == EventKind::Turn)
        .count();
    let bought = events
        .iter()
        .filter(in_test)
        .filter(|e| e.kind == EventKind::Outcome)
        .count() as u64;
    assert_eq!(turns, 600);
    assert_eq!(bought, seen.values().map(|v| v.1).sum::<u64>());
    assert!(events
        .iter()
        .filter(in_test)
        .all(|e| e.experiment == "exp-1" && (e.arm == "A" || e.arm == "B")));

    // Browsing: two policy versions (pol-2 serving) and a conversation with personal data.
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(channel(server.admin_addr).await);
    for v in ["pol-1", "pol-2"] {
        admin.load_policy(support::operator_version(v)).await.unwrap();
    }
    let mut c = pb::conversations_client::ConversationsClient::new(channel(server.grpc_addr).await);
    c.turn(pb::TurnRequest {
        conversation_id: "call-13812345678".into(),
        customer_id: "cust-pii".into(),
        channel: "phone".into(),
        text: "My number is 13812345678 and my mail li.lei@example.com, where is my order?".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    browser_step(&script, "browse", &url, &shots);
    browser_step(&script, "policy-rollback", &url, &shots);
    let listed = admin
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.serving_version, "pol-1");
    let (log, _) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.user.as_str(),
            last.action.as_str(),
            last.version.as_str(),
            last.note.as_str()
        ),
        ("ana", "policy.rollback", "pol-1", "was pol-2")
    );

    // The catalog: a new bundle price made live in the page, then rolled back.
    browser_step(&script, "catalog", &url, &shots);
    assert_eq!(bundle_price(server.grpc_addr, "after-catalog-edit").await, 29_900);
    browser_step(&script, "catalog-rollback", &url, &shots);
    assert_eq!(bundle_price(server.grpc_addr, "after-catalog-rollback").await, 32_900);
    assert_eq!(
        std::fs::read_to_string(&catalog).unwrap(),
        std::fs::read_to_string("examples/shop/catalog.toml").unwrap()
    );
    let (log, _) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    let catalog_changes: Vec<(&str, &str, &str)> = log
        .iter()
        .filter(|c| c.target == "catalog")
        .map(|c| (c.action.as_str(), c.version.as_str(), c.note.as_str()))
        .collect();
    assert_eq!(
        catalog_changes,
        [
            ("catalog.save", "2", "shipped from exp-1"),
            ("catalog.save", "3", "care bundle at 299 for the holidays"),
            ("catalog.rollback", "4", "the text of version 1"),
        ]
    );

    // NLU model versions: a broken bundle is refused in the page, another version served, then
    // the first one again.
    browser_step(&script, "models", &url, &shots);
    assert_eq!(model_version(server.grpc_addr).await, "shop-b");
    browser_step(&script, "models-rollback", &url, &shots);
    assert_eq!(model_version(server.grpc_addr).await, "shop-a");
    let (log, _) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    let served: Vec<(&str, &str)> = log
        .iter()
        .filter(|c| c.action == "model.serve")
        .map(|c| (c.version.as_str(), c.target.as_str()))
        .collect();
    assert_eq!(served, [("shop-b", "model default"), ("shop-a", "model default")]);

    // The optimizer's audit trail: it starts on this server's decision log (its first version,
    // v1, is pushed), learns from outcomes, judges a candidate and pushes it.
    let optimizer = start_optimizer(var.path(), optimizer_addr, server.admin_addr).await;
    let pushed = learn_once(&server, &optimizer).await;
    assert_eq!(pushed.as_deref(), Some("v2"), "{}", optimizer.last_verdict());
    let out = browser_step(&script, "optimizer-audit", &url, &shots);
    eprintln!("{out}");
    // What the page showed is what `Optimizer.Audit` answers, newest first.
    let mut audit = pb::optimizer_client::OptimizerClient::new(channel(optimizer_addr).await);
    let entries = audit
        .audit(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["pushed-v2", "judged-v2", "pushed-v1"]);
    let Some(pb::audit_entry::Event::Judged(j)) = &entries[1].event else {
        panic!("{entries:?}")
    };
    let dr = |e: &Option<pb::OpeEstimates>| e.as_ref().unwrap().dr.unwrap();
    assert!(j.pass && j.serving_version == "v1", "{j:?}");
    assert!(dr(&j.candidate).value > dr(&j.serving).value, "{j:?}");
    assert!(j.train_examples + j.holdout_examples >= 300, "{j:?}");
    for line in [
        "judged-v2",
        &format!("{:.4}", dr(&j.candidate).value),
        "passed",
        "not answering",
    ] {
        assert!(out.contains(line), "the page showed {out}, without {line}");
    }
    let e = audit
        .audit(pb::AuditRequest {
            limit: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().starts_with("limit"),
        "{e}"
    );
    // A restarted optimizer serves the same trail, read back from its audit log.
    optimizer.shutdown().await;
    let optimizer = start_optimizer(var.path(), optimizer_addr, server.admin_addr).await;
    let again = audit
        .audit(pb::AuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(again, entries);
    optimizer.shutdown().await;
    server.shutdown().await.unwrap();
}

/// An optimizer on the shop server's decision log, pushing to its admin listener; it trains
/// only when told (`train_now`).
async fn start_optimizer(
    var: &Path,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> nudge_optimizer::service::RunningOptimizer {
    let d = var.join("optimizer");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("reward.toml"), "reward = \"conversion\"\nwindow_seconds = 0.2\n").unwrap();
    let text = format!(
        r#"grpc_addr = "{grpc}"
decision_logs = ["{v}/decisions"]
outcome_log = "{d}/outcomes"
audit_log = "{d}/audit"
registry = "{d}/registry"
servers = ["http://{admin}"]
reward_file = "{d}/reward.toml"
train_every_outcomes = 1000000000
train_every_ms = 3600000

{learn}
[initial_schema]
{schema}
"#,
        v = var.display(),
        d = d.display(),
        learn = support::LEARN,
        schema = support::SCHEMA,
    );
    let cfg: nudge_optimizer::service::OptimizerConfig = toml::from_str(&text).unwrap();
    nudge_optimizer::service::start(cfg).await.unwrap()
}

/// 600 decisions of the serving policy; each segment buys one offer often (70 %) and the
/// others rarely (5 %); the outcomes are reported and the optimizer runs one round.
///
/// The optimizer judges on the newest 30 % of the decision log, which holds the shop's ~800
/// earlier turns too: these 600 are what it can learn the segments from, and enough of them
/// land in its training share however many turns came before.
async fn learn_once(
    server: &nudge_inference::RunningServer,
    optimizer: &nudge_optimizer::service::RunningOptimizer,
) -> Option<String> {
    let mut decide = pb::decisions_client::DecisionsClient::new(channel(server.grpc_addr).await);
    let mut report = pb::optimizer_client::OptimizerClient::new(channel(optimizer.grpc_addr).await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for n in 0..600u64 {
        let d = decide.decide(support::decide_request(n)).await.unwrap().into_inner();
        assert_eq!(d.policy_version, "v1");
        let best = format!("o{}", n % 3 + 1);
        let p = if d.offer_id == best { 0.7 } else { 0.05 };
        let kind = if rng.random::<f64>() < p {
            pb::OutcomeKind::Convert
        } else {
            pb::OutcomeKind::Shown
        };
        report
            .report_outcome(pb::ReportOutcomeRequest {
                event_id: format!("e{n}"),
                decision_id: d.decision_id,
                kind: kind as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The reward windows close, then one round: join, train, judge, push.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    optimizer.train_now().await.unwrap()
}

/// A self-signed certificate for `localhost`, written as PEM files under `dir`.
fn certificate(dir: &Path, name: &str) -> (nudge_inference::TlsConfig, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (nudge_inference::TlsConfig { cert, key }, made)
}

/// One HTTP/1.1 exchange over TLS with a client that trusts only `trust`: the whole response.
async fn https(
    addr: std::net::SocketAddr,
    trust: &rcgen::CertifiedKey<rcgen::KeyPair>,
    request: &str,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.cert.der().clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out).await {
        // A peer that closes without TLS's close_notify: what came before is the response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        r => {
            r?;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The console over HTTPS: with `[console.tls]` it presents that certificate, without it the
/// server's `tls`; sign-in works over it and its cookie is `Secure`; a plain-HTTP client gets no
/// page, a client that trusts another certificate no connection, and a client that connects and
/// says nothing holds up nobody.
#[tokio::test]
async fn the_console_serves_https_with_its_own_or_the_servers_certificate() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let var = tempfile::tempdir().unwrap();
    let users = var.path().join("users.toml");
    support::users_file(&users, &[("ana", "editor", "ana's long password")]);
    let (console_tls, console_cert) = certificate(var.path(), "console");
    let (server_tls, server_cert) = certificate(var.path(), "server");
    let body = r#"{"user":"ana","password":"ana's long password"}"#;
    let login = format!(
        "POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for (own, presented, other) in [
        (Some(console_tls), &console_cert, &server_cert),
        (None, &server_cert, &console_cert),
    ] {
        let mut config = common::example_shop_config(var.path());
        config.tls = Some(server_tls.clone());
        config.console = Some(nudge_inference::console::ConsoleConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            users_file: users.clone(),
            dir: var.path().join("console"),
            session_minutes: 10,
            optimizers: Vec::new(),
            tls: own.clone(),
        });
        let server = nudge_inference::start(config)
            .await
            .expect("the shop with an HTTPS console starts");
        let addr = server.console_addr.unwrap();

        // A client that connects and stays silent, for the whole exchange below.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = https(addr, presented, &login)
            .await
            .expect("HTTPS with the presented certificate");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let cookie = answer
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap_or_else(|| panic!("no cookie: {answer}"));
        assert!(
            cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let token = cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap();
        let me = https(
            addr,
            presented,
            &format!("GET /api/me HTTP/1.1\r\nHost: localhost\r\nCookie: {token}\r\nConnection: close\r\n\r\n"),
        )
        .await
        .unwrap();
        assert!(me.starts_with("HTTP/1.1 200") && me.contains(r#""user":"ana""#), "{me}");

        // Plain HTTP is not served.
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            plain
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut got)).await;
            assert!(
                !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
                "plain HTTP must not be answered: {got:?}"
            );
        }
        // Nor is a client that trusts the other certificate.
        assert!(https(addr, other, &login).await.is_err());
        server.shutdown().await.unwrap();
    }

    // A certificate that is not one is refused at start-up, naming the field and the file.
    std::fs::write(var.path().join("bad.crt"), "not a certificate").unwrap();
    let mut config = common::example_shop_config(var.path());
    config.console = Some(nudge_inference::console::ConsoleConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        users_file: users,
        dir: var.path().join("console"),
        session_minutes: 10,
        optimizers: Vec::new(),
        tls: Some(nudge_inference::TlsConfig {
            cert: var.path().join("bad.crt"),
            key: server_tls.key.clone(),
        }),
    });
    let err = match nudge_inference::start(config).await {
        Ok(_) => panic!("a console with a bad certificate must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("console.tls.cert") && err.contains("bad.crt"), "{err}");
}

/// The products CSV the catalog names is edited like the rules and the catalog: a bad row is
/// refused at its line naming the field, a row the catalog's offers need cannot go, a saved
/// text is live (the serving catalog's version changes) and a rollback gives the original file
/// back byte for byte; both changes are in the change log.
#[tokio::test]
async fn the_products_csv_is_checked_saved_and_rolled_back_in_the_console() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let var = tempfile::tempdir().unwrap();
    for f in ["rules.toml", "catalog.toml", "products.csv"] {
        std::fs::copy(format!("examples/shop/{f}"), var.path().join(f)).unwrap();
    }
    let users = var.path().join("users.toml");
    support::users_file(&users, &[("ana", "editor", "ana's long password")]);
    let mut config = common::example_shop_config(var.path());
    config.strategy.as_mut().unwrap().rules = var.path().join("rules.toml");
    config.strategy.as_mut().unwrap().catalog = var.path().join("catalog.toml");
    config.console = Some(nudge_inference::console::ConsoleConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        users_file: users,
        dir: var.path().join("console"),
        session_minutes: 10,
        optimizers: Vec::new(),
        tls: None,
    });
    let server = nudge_inference::start(config)
        .await
        .expect("the shop with a console starts");
    let console = format!("http://{}", server.console_addr.unwrap());
    let call = |method: &'static str, path: &'static str, body: String| {
        let console = console.clone();
        async move { support::console_call(&console, ("ana", "ana's long password"), method, path, &body).await }
    };
    let text = |t: &str| serde_json::json!({"text": t, "note": "from the test"}).to_string();
    let original = std::fs::read_to_string(var.path().join("products.csv")).unwrap();

    let (status, page) = call("GET", "/api/files/products", String::new()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["text"], original.as_str());
    assert_eq!(page["versions"].as_array().unwrap().len(), 1);
    let serving_before = page["serving"]["catalog"].clone();

    // The first product's price is not a price: refused at its line (2, under the header),
    // naming the field.
    let bad = original.replacen(",5999.00,", ",59x9.00,", 1);
    let (status, err) = call("POST", "/api/files/products/check", text(&bad)).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["line"], 2, "{err}");
    assert_eq!(err["error"]["field"], "price", "{err}");
    // The warranty's SKU cannot go: the catalog's offer names it.
    let without: String = original
        .lines()
        .filter(|l| !l.starts_with("WAR-1Y,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (status, err) = call("POST", "/api/files/products/check", text(&without)).await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the catalog would no longer pass"),
        "{err}"
    );

    // A new price for the iPhone 15 goes live.
    let cheaper = original.replacen(",5999.00,", ",5899.00,", 1);
    let (status, saved) = call("POST", "/api/files/products", text(&cheaper)).await;
    assert_eq!((status, saved["version"].as_u64()), (200, Some(2)), "{saved}");
    assert_eq!(
        std::fs::read_to_string(var.path().join("products.csv")).unwrap(),
        cheaper
    );
    let (_, page) = call("GET", "/api/files/products", String::new()).await;
    assert_ne!(
        page["serving"]["catalog"], serving_before,
        "the reload serves the new CSV"
    );

    // Rolled back: the original file, and the original catalog version, serve again.
    let (status, back) = call("POST", "/api/files/products/rollback", r#"{"version":1}"#.into()).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(
        std::fs::read_to_string(var.path().join("products.csv")).unwrap(),
        original
    );
    let (_, page) = call("GET", "/api/files/products", String::new()).await;
    assert_eq!(page["serving"]["catalog"], serving_before);
    assert_eq!(page["versions"].as_array().unwrap().len(), 3);

    let (log, _) = nudge_records::read_all::<ChangeRecord>(&var.path().join("console/changes")).unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .filter(|c| c.target == "products")
        .map(|c| (c.action.as_str(), c.version.as_str()))
        .collect();
    assert_eq!(actions, [("products.save", "2"), ("products.rollback", "3")]);
    server.shutdown().await.unwrap();
}
