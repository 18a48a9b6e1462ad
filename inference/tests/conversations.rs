//! `nudge.v1.Conversations` on loopback with a tiny model (no sentiment head, so the tiny
//! model's random sentiment cannot block offers): a product mention links to its SKU, the rules
//! and prices give the care bundle at 329.00, the decision is logged like Decide's, a decline
//! starts the cool-down, no consent blocks, a resolved nudge moves the stage, unsure turns hand
//! off with a masked summary, and bad input gets a status naming the field.
use crate::common::*;
use nudge_proto::v1 as pb;
use nudge_records::DecisionRecord;
use pb::conversations_client::ConversationsClient;
use std::path::Path;
use tonic::Code;

const CATALOG: &str = r#"
[[product]]
sku = "X1"
name_zh = "X1 手机"
name_en = "X1 phone"
category = "phone"
price = "3999.00"
[[product]]
sku = "PB-10K"
name_en = "power bank"
category = "accessory"
price = "129.00"
[[product]]
sku = "WAR-2Y"
name_en = "2-year warranty"
category = "service"
price = "299.00"
[[offer]]
id = "care_bundle"
kind = "bundle"
title_en = "Extended warranty + power bank"
title_zh = "延保+充电宝"
items = ["WAR-2Y", "PB-10K"]
price = "329.00"
"#;

const RULES: &str = r#"
[intents]
issue = ["refund"]
resolved = ["greeting"]

[[rule]]
name = "phone talk: care bundle for gold customers"
allow = ["care_bundle"]
priority = 5
[rule.when]
category = ["phone"]
tier = ["gold"]
"#;

async fn start(dir: &Path, unsure_below: f32) -> nudge_inference::RunningServer {
    start_with(dir, unsure_below, None).await
}

async fn start_with(
    dir: &Path,
    unsure_below: f32,
    state_file: Option<std::path::PathBuf>,
) -> nudge_inference::RunningServer {
    nudge_inference::start(config(dir, unsure_below, state_file))
        .await
        .expect("server starts")
}

/// A server config for `dir` (tiny bundle without sentiment, the catalog and rules above).
fn config(dir: &Path, unsure_below: f32, state_file: Option<std::path::PathBuf>) -> nudge_inference::ServeConfig {
    let bundle = dir.join("bundle");
    if !bundle.join("manifest.json").exists() {
        write_bundle(&bundle, "tiny", Variant::Bert, nudge_model::Pooling::Mean);
        // The same bundle without its sentiment head.
        let m = bundle.join("manifest.json");
        let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        manifest["heads"].as_object_mut().unwrap().remove("sentiment");
        std::fs::write(&m, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        std::fs::write(dir.join("catalog.toml"), CATALOG).unwrap();
        std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    }
    let mut s: nudge_inference::StrategyConfig = toml::from_str(&format!(
        "catalog = {:?}\nrules = {:?}\nutc_offset_hours = 8\n[guardrails]\ncooldown_turns_after_decline = 2\nunsure_below = {unsure_below}\n",
        dir.join("catalog.toml"),
        dir.join("rules.toml")
    ))
    .unwrap();
    s.guardrails.max_offers_per_conversation = 5;
    s.state_file = state_file;
    nudge_inference::ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        bundles: vec![bundle],
        models_root: dir.to_path_buf(),
        decisions: Some(nudge_inference::DecisionsConfig {
            policy_registry: dir.join("registry"),
            decision_log: dir.join("decisions"),
            customer_id_key: nudge_inference::Secret::new("a test key of 16+ bytes"),
            ..Default::default()
        }),
        strategy: Some(s),
        ..Default::default()
    }
}

fn turn(conv: &str, text: &str, tier: &str, consent: bool) -> pb::TurnRequest {
    pb::TurnRequest {
        conversation_id: conv.into(),
        customer_id: format!("customer-of-{conv}"),
        channel: "web".into(),
        text: text.into(),
        customer: Some(pb::Customer {
            tier: tier.into(),
            lifetime_value_cents: 1_000_000,
            marketing_consent: consent,
            opted_out: false,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_gets_a_priced_offer_then_a_cool_down_and_bad_input_is_named() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0.0).await;
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);

    let r = c
        .turn(turn("c1", "does the X1 phone have a good battery?", "gold", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.products.len(), 1);
    assert_eq!(
        (r.products[0].surface.as_str(), r.products[0].skus.as_slice()),
        ("X1 phone", &["X1".to_string()][..])
    );
    let o = r.offer.clone().unwrap();
    assert_eq!(o.offer_id, "care_bundle");
    assert_eq!((o.kind.as_str(), o.title_zh.as_str()), ("bundle", "延保+充电宝"));
    let p = o.price.unwrap();
    assert_eq!(
        (p.list_price_cents, p.discount_cents, p.final_price_cents),
        (42_800, 9_900, 32_900)
    );
    assert_eq!(p.final_price, "329.00");
    assert_eq!(o.rules, vec!["phone talk: care bundle for gold customers"]);
    assert_eq!((o.policy_version.as_str(), o.propensity), ("rules", 1.0));
    assert_eq!(r.catalog_version.len(), 12);
    assert_eq!(r.model_version, "t1");
    let st = r.state.unwrap();
    assert_eq!(
        (st.turns, st.offers_shown, st.products.as_slice()),
        (1, 1, &["X1".to_string()][..])
    );

    // The decision is in the log, like Decide's, with the offer features the policy will read.
    let (records, malformed) = nudge_records::read_all::<DecisionRecord>(&dir.path().join("decisions")).unwrap();
    assert_eq!(malformed, 0);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].decision_id.as_str(), records[0].offer_id.as_str()),
        (o.decision_id.as_str(), "care_bundle")
    );
    assert_eq!(records[0].candidates[0].features["offer=care_bundle"], 1.0);
    assert_eq!(records[0].candidates[0].features["offer_kind=bundle"], 1.0);
    assert!(records[0].context.contains_key("channel=web") && records[0].context["tier=gold"] == 1.0);
    assert!(!records[0].customer.is_empty() && !records[0].customer.contains("customer-of"));

    // Declined: the next two turns are in cool-down, the third may offer again.
    let s = c
        .outcome(pb::ConversationOutcomeRequest {
            conversation_id: "c1".into(),
            customer_id: "customer-of-c1".into(),
            decision_id: o.decision_id.clone(),
            kind: pb::OutcomeKind::Decline as i32,
            revenue_cents: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state.unwrap().offers_declined, 1);
    for _ in 0..2 {
        let r = c
            .turn(turn("c1", "and the X1 phone camera?", "gold", true))
            .await
            .unwrap()
            .into_inner();
        let o = r.offer.unwrap();
        assert_eq!((o.offer_id.as_str(), o.blocked.as_str()), ("", "cool_down"));
        assert_eq!(o.skipped[0].offer_id, "care_bundle");
        assert!(o.decision_id.is_empty());
    }
    let r = c
        .turn(turn("c1", "X1 phone then", "gold", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.offer.unwrap().offer_id, "care_bundle");

    // No consent, or not gold: no offer, and the reply says why.
    let r = c
        .turn(turn("c2", "X1 phone?", "gold", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.offer.unwrap().blocked, "no_consent");
    let m = scrape(server.metrics_addr).await;
    assert_eq!(
        metric(&m, "nudge_offers_skipped_total{reason=\"cool_down\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "nudge_offers_skipped_total{reason=\"no_consent\"}"),
        Some(1.0),
        "{m}"
    );
    let r = c
        .turn(turn("c3", "X1 phone?", "silver", true))
        .await
        .unwrap()
        .into_inner();
    let o = r.offer.unwrap();
    assert_eq!((o.offer_id.as_str(), o.blocked.as_str()), ("", ""));

    // A proactive turn after the problem was solved.
    let r = c
        .nudge(pb::NudgeRequest {
            conversation_id: "c3".into(),
            customer_id: "customer-of-c3".into(),
            channel: "web".into(),
            trigger: pb::nudge_request::Trigger::Resolved as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state.unwrap().stage, "resolved");

    // Bad input names the field.
    for (req, field) in [
        (
            pb::TurnRequest {
                channel: "fax".into(),
                ..turn("c9", "hi", "gold", true)
            },
            "channel",
        ),
        (
            pb::TurnRequest {
                conversation_id: String::new(),
                ..turn("c9", "hi", "gold", true)
            },
            "conversation_id",
        ),
        (turn("c9", "   ", "gold", true), "text"),
        (
            pb::TurnRequest {
                cart: vec![pb::CartLine {
                    sku: "NOPE".into(),
                    qty: 1,
                }],
                ..turn("c9", "hi", "gold", true)
            },
            "cart[0].sku",
        ),
        (
            pb::TurnRequest {
                cart: vec![pb::CartLine {
                    sku: "X1".into(),
                    qty: 0,
                }],
                ..turn("c9", "hi", "gold", true)
            },
            "cart[0].qty",
        ),
    ] {
        let e = c.turn(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = c
        .outcome(pb::ConversationOutcomeRequest {
            conversation_id: "nope".into(),
            customer_id: "x".into(),
            decision_id: "d".into(),
            kind: pb::OutcomeKind::Decline as i32,
            revenue_cents: 0,
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::NotFound && e.message().starts_with("conversation_id"),
        "{e:?}"
    );
    // Revenue belongs to a conversion only, and is never negative.
    for (kind, cents) in [(pb::OutcomeKind::Decline, 100), (pb::OutcomeKind::Convert, -1)] {
        let e = c
            .outcome(pb::ConversationOutcomeRequest {
                conversation_id: "nope".into(),
                customer_id: "x".into(),
                decision_id: "d".into(),
                kind: kind as i32,
                revenue_cents: cents,
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().starts_with("revenue_cents"),
            "{e:?}"
        );
    }
    let e = c
        .nudge(pb::NudgeRequest {
            conversation_id: "c3".into(),
            customer_id: "customer-of-c3".into(),
            channel: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("trigger"), "{e:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsure_turns_hand_off_with_a_masked_summary() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    // Every turn of the tiny model is "unsure" under this bar.
    let server = start(dir.path(), 1.0).await;
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    let mut last = None;
    for text in ["call me at 13812345678", "my mail is jane@example.com", "hello??"] {
        last = Some(c.turn(turn("h1", text, "gold", true)).await.unwrap().into_inner());
    }
    let h = last.unwrap().handoff.expect("a hand-off after three unsure turns");
    assert_eq!(h.reason, "unsure");
    assert!(
        h.summary.contains("[phone ****5678]") && h.summary.contains("[email ***@example.com]"),
        "{}",
        h.summary
    );
    assert!(!h.summary.contains("13812345678") && !h.summary.contains("jane@"));
    let m = scrape(server.metrics_addr).await;
    assert_eq!(metric(&m, "nudge_handoffs_total{reason=\"unsure\"}"), Some(1.0), "{m}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_caps_and_opt_outs_survive_a_restart() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/conversations.json");
    let server = start_with(dir.path(), 0.0, Some(state.clone())).await;
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    let r = c
        .turn(turn("p1", "X1 phone, call 13812345678", "gold", true))
        .await
        .unwrap()
        .into_inner();
    let decision = r.offer.unwrap().decision_id;
    c.outcome(pb::ConversationOutcomeRequest {
        conversation_id: "p1".into(),
        customer_id: "customer-of-p1".into(),
        decision_id: decision,
        kind: pb::OutcomeKind::Decline as i32,
        revenue_cents: 0,
    })
    .await
    .unwrap();
    let r = c.turn(turn("p2", "X1 phone", "gold", true)).await.unwrap().into_inner();
    c.outcome(pb::ConversationOutcomeRequest {
        conversation_id: "p2".into(),
        customer_id: "customer-of-p2".into(),
        decision_id: r.offer.unwrap().decision_id,
        kind: pb::OutcomeKind::OptOut as i32,
        revenue_cents: 0,
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        !saved.contains("13812345678") && !saved.contains("customer-of-p1"),
        "personal data in the snapshot"
    );

    // A new server on the same state: the conversation goes on where it was.
    let server = start_with(dir.path(), 0.0, Some(state.clone())).await;
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    let r = c
        .turn(turn("p1", "X1 phone again", "gold", true))
        .await
        .unwrap()
        .into_inner();
    let st = r.state.unwrap();
    assert_eq!((st.turns, st.offers_shown, st.offers_declined), (2, 1, 1));
    assert_eq!(r.offer.unwrap().blocked, "cool_down");
    // The opt-out is remembered for the customer, in a new conversation too.
    let mut req = turn("p2-new", "X1 phone", "gold", true);
    req.customer_id = "customer-of-p2".into();
    let r = c.turn(req).await.unwrap().into_inner();
    assert_eq!(r.offer.unwrap().blocked, "opted_out");
    server.shutdown().await.unwrap();

    // A snapshot of another format is refused at start, naming the setting and the field.
    std::fs::write(
        &state,
        r#"{"schema": 99, "taken_ms": 0, "conversations": [], "ledger": {"customers": {}, "budget_used": {}}}"#,
    )
    .unwrap();
    let e = nudge_inference::start(config(dir.path(), 0.0, Some(state.clone())))
        .await
        .err()
        .expect("a foreign snapshot is refused")
        .to_string();
    assert!(
        e.contains("state_file") && e.contains("schema") && e.contains("99"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_files_hot_reload_and_a_bad_one_is_refused() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 0.0).await;
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    let mut admin = pb::strategy_admin_client::StrategyAdminClient::new(channel(server.admin_addr).await);
    let r = c
        .turn(turn("r1", "X1 phone?", "gold", true))
        .await
        .unwrap()
        .into_inner();
    let v1 = r.catalog_version.clone();
    assert_eq!(r.offer.unwrap().price.unwrap().final_price, "329.00");

    std::fs::write(
        dir.path().join("catalog.toml"),
        CATALOG.replace("price = \"329.00\"", "price = \"349.00\""),
    )
    .unwrap();
    let rel = admin
        .reload_strategy(pb::ReloadStrategyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rel.previous_catalog_version, v1);
    assert_ne!(rel.catalog_version, v1);
    let r = c
        .turn(turn("r2", "X1 phone?", "gold", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.catalog_version, rel.catalog_version);
    assert_eq!(r.offer.unwrap().price.unwrap().final_price, "349.00");

    // A rule naming an offer that does not exist: refused with file, line and field; the
    // previous version keeps serving.
    std::fs::write(
        dir.path().join("rules.toml"),
        RULES.replace("allow = [\"care_bundle\"]", "allow = [\"care_bundel\"]"),
    )
    .unwrap();
    let e = admin.reload_strategy(pb::ReloadStrategyRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("rules.toml:") && e.message().contains("unknown offer `care_bundel`"),
        "{}",
        e.message()
    );
    let r = c
        .turn(turn("r3", "X1 phone?", "gold", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.catalog_version.as_str(), r.offer.unwrap().offer_id.as_str()),
        (rel.catalog_version.as_str(), "care_bundle")
    );
    // StrategyAdmin is not on the data port.
    let mut on_data = pb::strategy_admin_client::StrategyAdminClient::new(channel(server.grpc_addr).await);
    assert_eq!(
        on_data
            .reload_strategy(pb::ReloadStrategyRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
    server.shutdown().await.unwrap();
}

/// A risk-control service whose answer the test sets: allow, deny, error or hang.
#[derive(Clone)]
struct Risk(std::sync::Arc<std::sync::Mutex<&'static str>>);

#[tonic::async_trait]
impl pb::risk_control_server::RiskControl for Risk {
    async fn check(
        &self,
        request: tonic::Request<pb::RiskCheckRequest>,
    ) -> Result<tonic::Response<pb::RiskCheckResponse>, tonic::Status> {
        let mode = *self.0.lock().unwrap();
        let r = request.into_inner();
        assert_eq!((r.offer_id.as_str(), r.final_price_cents), ("care_bundle", 32_900));
        match mode {
            "allow" => Ok(tonic::Response::new(pb::RiskCheckResponse {
                allow: true,
                reason: String::new(),
            })),
            "deny" => Ok(tonic::Response::new(pb::RiskCheckResponse {
                allow: false,
                reason: "coupon farming".into(),
            })),
            "error" => Err(tonic::Status::internal("risk database down")),
            _ => {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                Ok(tonic::Response::new(pb::RiskCheckResponse::default()))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_risk_check_fails_closed() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let mode = std::sync::Arc::new(std::sync::Mutex::new("allow"));
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let risk_addr = incoming.local_addr().unwrap();
    let risk = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::risk_control_server::RiskControlServer::new(Risk(mode.clone())))
            .serve_with_incoming(incoming),
    );
    let mut cfg = config(dir.path(), 0.0, None);
    cfg.strategy.as_mut().unwrap().risk = Some(nudge_inference::RiskConfig {
        endpoint: format!("http://{risk_addr}"),
        timeout_ms: 300,
    });
    let server = nudge_inference::start(cfg).await.unwrap();
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    for (i, (m, want_offer, want_blocked)) in [
        ("allow", "care_bundle", ""),
        ("deny", "", "risk: refused: coupon farming"),
        ("error", "", "risk: unavailable: risk database down"),
        ("hang", "", "risk: no answer within 300 ms"),
    ]
    .into_iter()
    .enumerate()
    {
        *mode.lock().unwrap() = m;
        let t = std::time::Instant::now();
        let r = c
            .turn(turn(&format!("k{i}"), "X1 phone?", "gold", true))
            .await
            .unwrap()
            .into_inner();
        let o = r.offer.unwrap();
        assert_eq!(
            (o.offer_id.as_str(), o.blocked.as_str()),
            (want_offer, want_blocked),
            "{m}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(3),
            "{m}: the turn waited {:?}",
            t.elapsed()
        );
        // A vetoed offer was not shown: nothing counts against the caps, no decision is logged.
        assert_eq!(r.state.unwrap().offers_shown, u32::from(m == "allow"), "{m}");
    }
    let (records, _) = nudge_records::read_all::<DecisionRecord>(&dir.path().join("decisions")).unwrap();
    assert_eq!(records.len(), 1);
    server.shutdown().await.unwrap();
    risk.abort();

    // A risk service that is not there at all: fail closed too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0.0, None);
    cfg.strategy.as_mut().unwrap().risk = Some(nudge_inference::RiskConfig {
        endpoint: format!("http://{closed}"),
        timeout_ms: 300,
    });
    let server = nudge_inference::start(cfg).await.unwrap();
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);
    let r = c
        .turn(turn("k9", "X1 phone?", "gold", true))
        .await
        .unwrap()
        .into_inner();
    let o = r.offer.unwrap();
    assert!(o.offer_id.is_empty() && o.blocked.starts_with("risk: "), "{o:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conversations_of_one_customer_never_break_the_daily_cap() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 0.0, None);
    let g = &mut cfg.strategy.as_mut().unwrap().guardrails;
    g.max_offers_per_customer_per_day = 3;
    g.max_offers_per_conversation = 5;
    g.cooldown_turns_after_decline = 0;
    let server = nudge_inference::start(cfg).await.unwrap();
    let ch = channel(server.grpc_addr).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut c = ConversationsClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut shown = 0;
            for _ in 0..10 {
                let mut req = turn(&format!("par-{t}"), "X1 phone?", "gold", true);
                req.customer_id = "one-customer".into();
                let r = c.turn(req).await.unwrap().into_inner();
                let o = r.offer.unwrap();
                if !o.offer_id.is_empty() {
                    shown += 1;
                } else {
                    assert!(o.blocked == "daily_cap" || o.blocked.is_empty(), "{o:?}");
                }
            }
            shown
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, 3,
        "offers shown to one customer today across 16 concurrent conversations"
    );
    let (records, _) = nudge_records::read_all::<DecisionRecord>(&dir.path().join("decisions")).unwrap();
    assert_eq!(records.iter().filter(|r| !r.offer_id.is_empty()).count(), 3);
    server.shutdown().await.unwrap();
}
