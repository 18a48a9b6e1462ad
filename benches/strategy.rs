//! Strategy-engine figures without the encoder, on a synthetic 10,000-SKU catalog: load and
//! linker build time, SKU-linking throughput on zh/en messages (one thread), and the latency of
//! one turn's strategy (state update → rules → guardrails → prices for every eligible offer →
//! commit) — what a Conversations/Turn adds to the encoder pass.
//!
//! With `--turns N` (needs `nudge models fetch`) it also serves the example shop with the default
//! model and times N Conversations/Turn calls against N Nlu/Understand calls of the same texts on
//! loopback, one at a time: the ratio is what the strategy costs on top of the encoder.
//!
//!     cargo bench --bench strategy -- [--skus N] [--messages N] [--turns N]
use nudge_strategy::conversation::{Conversation, TurnFacts};
use nudge_strategy::engine::{Clock, CustomerProfile, Ledger, Strategy};
use nudge_strategy::guardrails::Guardrails;
use nudge_strategy::link::SkuLinker;
use nudge_strategy::pricing::CartLine;
use nudge_strategy::rules::{Rules, Vocabulary};
use nudge_strategy::{Catalog, Cents, Channel};
use std::fmt::Write as _;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const BRANDS: [(&str, &str); 10] = [
    ("Apple", "苹果"),
    ("Xiaomi", "小米"),
    ("Huawei", "华为"),
    ("Oppo", "欧珀"),
    ("Vivo", "维沃"),
    ("Honor", "荣耀"),
    ("Lenovo", "联想"),
    ("Sony", "索尼"),
    ("Dell", "戴尔"),
    ("Haier", "海尔"),
];
const KINDS: [(&str, &str); 10] = [
    ("phone", "手机"),
    ("laptop", "笔记本"),
    ("tablet", "平板"),
    ("watch", "手表"),
    ("earbuds", "耳机"),
    ("speaker", "音箱"),
    ("camera", "相机"),
    ("monitor", "显示器"),
    ("router", "路由器"),
    ("fridge", "冰箱"),
];

fn main() {
    let skus = arg("--skus", 10_000);
    let messages = arg("--messages", 20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    // brand × kind × model number × variant.
    let mut csv = String::from("sku,name_zh,name_en,aliases,category,price,margin,stock\n");
    let mut names = Vec::new();
    for i in 0..skus {
        let (b_en, b_zh) = BRANDS[i % 10];
        let (k_en, k_zh) = KINDS[(i / 10) % 10];
        let model = (i / 100) % 50 + 1;
        let variant = i / 5000;
        let en = format!("{b_en} {k_en} {model}{}", ["", " Pro"][variant.min(1)]);
        let zh = format!("{b_zh}{k_zh}{model}{}", ["", "Pro"][variant.min(1)]);
        let _ = writeln!(
            csv,
            "SKU{i},{zh},{en},{}{model}{}|{b_zh}{model},{k_en},{}.00,10,5",
            k_en.chars().next().unwrap_or('x'),
            ["", "pro"][variant.min(1)],
            100 + i % 5000
        );
        names.push((en, zh));
    }
    std::fs::write(dir.path().join("products.csv"), &csv).expect("write csv");
    std::fs::write(
        dir.path().join("catalog.toml"),
        "products_csv = \"products.csv\"\n[[offer]]\nid = \"c20\"\nkind = \"coupon\"\namount = 20\nmin_spend = 100\n\
         [[offer]]\nid = \"p10\"\nkind = \"percent_off\"\npercent = 10\n[[offer]]\nid = \"m300\"\nkind = \"spend_save\"\nthreshold = 300\nsave = 30\nrepeat = true\n",
    )
    .expect("write catalog");
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"phones\"\nallow = [\"c20\", \"p10\"]\npriority = 2\n[rule.when]\ncategory = [\"phone\"]\n\
         [[rule]]\nname = \"all\"\nallow = [\"m300\"]\n",
    )
    .expect("write rules");

    let t = Instant::now();
    let catalog = Catalog::load(&dir.path().join("catalog.toml")).expect("catalog");
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let linker = SkuLinker::new(&catalog).expect("linker");
    let build_s = t.elapsed().as_secs_f64();

    let texts: Vec<String> = (0..messages)
        .map(|i| {
            let (en, zh) = &names[(i * 7919) % names.len()];
            match i % 4 {
                0 => format!("How long does the {en} battery last?"),
                1 => format!("{zh}有现货吗？"),
                2 => format!("is the {} in stock", en.to_uppercase()),
                _ => "where is my order, it has been a week".to_string(),
            }
        })
        .collect();
    let t = Instant::now();
    let mut found = 0usize;
    for text in &texts {
        found += linker.link(text).len();
    }
    let link_s = t.elapsed().as_secs_f64();

    let intents: Vec<String> = vec!["presales_question".into()];
    let sentiments: Vec<String> = vec!["negative".into(), "neutral".into(), "positive".into()];
    let rules = Rules::load(
        &dir.path().join("rules.toml"),
        &Vocabulary {
            intents: &intents,
            sentiments: &sentiments,
            catalog: &catalog,
        },
    )
    .expect("rules");
    let strategy = Strategy {
        catalog,
        rules,
        guardrails: Guardrails {
            max_offers_per_conversation: u32::MAX,
            max_offers_per_customer_per_day: u32::MAX,
            ..Guardrails::default()
        },
        linker: linker.into(),
    };
    let customer = CustomerProfile {
        tier: "gold".into(),
        lifetime_value: Cents(1_000_000),
        marketing_consent: true,
        opted_out: false,
        attributes: Default::default(),
    };
    let cart = vec![
        CartLine {
            sku: "SKU0".into(),
            qty: 1,
        },
        CartLine {
            sku: "SKU11".into(),
            qty: 2,
        },
    ];
    let mut ledger = Ledger::default();
    let mut lat = Vec::with_capacity(messages);
    let clock = Clock {
        now_ms: 1_790_000_000_000,
        utc_offset_s: 8 * 3600,
    };
    for (i, text) in texts.iter().enumerate() {
        let t = Instant::now();
        let mut c = Conversation::new(
            &format!("c{}", i % 1000),
            &format!("k{}", i % 300),
            Channel::App,
            clock.now_ms,
        );
        let products = strategy.linker.link(text).into_iter().flat_map(|m| m.skus).collect();
        c.observe(
            &TurnFacts {
                text: text.clone(),
                intent: Some("presales_question".into()),
                confidence: 0.9,
                sentiment: Some("neutral".into()),
                negative: 0.05,
                products,
                at_ms: clock.now_ms,
            },
            strategy.rules.intents(),
            0.35,
            0.5,
        );
        let plan = strategy.plan(&c, &customer, &cart, 0.05, clock, &ledger);
        if let Some(k) = plan.candidates.first() {
            let offer = k.offer.clone();
            let _ = strategy.commit(&plan, &offer, "d", &mut c, &customer, 0.05, clock, &mut ledger);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "{{\"skus\": {skus}, \"catalog_load_s\": {load_s:.3}, \"linker_build_s\": {build_s:.3}, \
         \"link_messages_per_s\": {:.0}, \"mentions_found\": {found}, \
         \"turn_strategy_us\": {{\"p50\": {:.1}, \"p99\": {:.1}}}}}",
        messages as f64 / link_s,
        pct(0.5),
        pct(0.99)
    );
    let turns = arg("--turns", 0);
    if turns > 0 {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(served_turns(turns));
    }
}

/// Conversations/Turn against Nlu/Understand on the example shop, one call at a time.
async fn served_turns(n: usize) {
    use nudge_proto::v1 as pb;
    let var = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string("examples/shop/nudge.toml").expect("examples/shop/nudge.toml");
    let mut config: nudge_inference::ServeConfig = toml::from_str(&text).expect("shop config");
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    config.metrics_addr = "127.0.0.1:0".parse().expect("addr");
    if let Some(d) = config.decisions.as_mut() {
        d.policy_registry = var.path().join("policies");
        d.decision_log = var.path().join("decisions");
    }
    if let Some(s) = config.strategy.as_mut() {
        s.guardrails.quiet_hours = None;
        s.guardrails.max_offers_per_conversation = u32::MAX;
        s.guardrails.max_offers_per_customer_per_day = u32::MAX;
    }
    let server = nudge_inference::start(config).await.expect("server");
    let url = format!("http://{}", server.grpc_addr);
    let mut conv = pb::conversations_client::ConversationsClient::connect(url.clone())
        .await
        .expect("connect");
    let mut nlu = pb::nlu_client::NluClient::connect(url).await.expect("connect");
    let texts = [
        "How long does the X1 phone battery last?",
        "X1手机的电池能用多久？",
        "Is the iPhone 15 Pro Max in stock in blue?",
        "小米14 Pro和充电宝一起买有优惠吗",
        "What's the price of the MacBook Air 13?",
    ];
    let mut t_turn = Vec::with_capacity(n);
    let mut t_nlu = Vec::with_capacity(n);
    for i in 0..n {
        let text = texts[i % texts.len()];
        let t = Instant::now();
        nlu.understand(pb::UnderstandRequest {
            text: text.into(),
            ..Default::default()
        })
        .await
        .expect("understand");
        t_nlu.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        conv.turn(pb::TurnRequest {
            conversation_id: format!("bench-{}", i % 50),
            customer_id: format!("cust-{}", i % 50),
            channel: "app".into(),
            text: text.into(),
            customer: Some(pb::Customer {
                tier: "gold".into(),
                lifetime_value_cents: 1_200_000,
                marketing_consent: true,
                opted_out: false,
                attributes: Default::default(),
            }),
            ..Default::default()
        })
        .await
        .expect("turn");
        t_turn.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    println!(
        "{{\"turns\": {n}, \"understand_ms\": {{\"p50\": {:.2}, \"p99\": {:.2}}}, \"turn_ms\": {{\"p50\": {:.2}, \"p99\": {:.2}}}}}",
        q(&mut t_nlu, 0.5),
        q(&mut t_nlu, 0.99),
        q(&mut t_turn, 0.5),
        q(&mut t_turn, 0.99)
    );
    let _ = server.shutdown().await;
}
