//! The example shop (`examples/shop/`) served with the real default model, over gRPC: the
//! battery example in English and Chinese (a gold customer asks how long a phone's battery lasts
//! → extended warranty + power bank for 329.00 instead of 428.00), a regular customer's cheaper
//! warranty, no marketing during an open problem, and a hand-off when the customer asks for a
//! person. Needs `cargo run --release -- models fetch` (CI runs it first).
use crate::common;
use crate::common::channel;
use nudge_proto::v1 as pb;
use pb::conversations_client::ConversationsClient;

fn turn(conv: &str, text: &str, tier: &str, ltv_cents: i64) -> pb::TurnRequest {
    pb::TurnRequest {
        conversation_id: conv.into(),
        customer_id: format!("cust-{conv}"),
        channel: "web".into(),
        text: text.into(),
        customer: Some(pb::Customer {
            tier: tier.into(),
            lifetime_value_cents: ltv_cents,
            marketing_consent: true,
            opted_out: false,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_shop_sells_the_care_bundle_and_stays_quiet_when_it_should() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let var = tempfile::tempdir().unwrap();
    let config = common::example_shop_config(var.path());
    let server = nudge_inference::start(config).await.expect("the example shop starts");
    let mut c = ConversationsClient::new(channel(server.grpc_addr).await);

    for (conv, text) in [
        ("en", "How long does the X1 phone battery last?"),
        ("zh", "X1手机的电池能用多久？"),
    ] {
        let r = c.turn(turn(conv, text, "gold", 1_200_000)).await.unwrap().into_inner();
        let nlu = r.nlu.clone().unwrap();
        assert_eq!(nlu.intent.as_ref().unwrap().label, "presales_question", "{text}");
        assert_eq!(nlu.sentiment.as_ref().unwrap().label, "neutral", "{text}");
        let mention = &r.products[0];
        assert!(
            mention.ambiguous && mention.skus.iter().all(|s| s.starts_with("X1-")),
            "{mention:?}"
        );
        let o = r.offer.unwrap();
        assert_eq!(o.offer_id, "care_bundle", "{text}: {o:?}");
        let p = o.price.unwrap();
        assert_eq!(
            (p.list_price.as_str(), p.discount.as_str(), p.final_price.as_str()),
            ("428.00", "99.00", "329.00")
        );
        assert_eq!(o.policy_version, "rules");
        assert!(o.rules[0].starts_with("battery or durability question"));
    }

    // A regular customer asking the same gets the cheaper warranty.
    let r = c
        .turn(turn(
            "reg",
            "How long does the X1 phone battery last?",
            "regular",
            10_000,
        ))
        .await
        .unwrap()
        .into_inner();
    let o = r.offer.unwrap();
    assert_eq!(o.offer_id, "warranty_1y");
    let p = o.price.unwrap();
    assert_eq!((p.list_price_cents, p.final_price_cents), (19_900, 14_900));

    // An open problem: no marketing, and every offer says why.
    let r = c
        .turn(turn(
            "issue",
            "I want a refund, the parcel never arrived",
            "gold",
            1_200_000,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state.as_ref().unwrap().stage, "issue");
    let o = r.offer.unwrap();
    assert!(o.offer_id.is_empty(), "{o:?}");

    // Asking for a person hands off with the reason and a summary.
    let r = c
        .turn(turn("human", "I want to talk to a real person now", "gold", 1_200_000))
        .await
        .unwrap()
        .into_inner();
    let h = r.handoff.expect("hand-off");
    assert_eq!(h.reason, "asked_for_human");
    assert!(h.summary.contains("human_agent"), "{}", h.summary);
    assert!(r.offer.unwrap().offer_id.is_empty());
    server.shutdown().await.unwrap();
}
