//! The operator console in a real browser: `nudge serve` with the example shop and `[console]`,
//! driven by headless Chromium (Debian's `chromium`, through playwright-core from npm; both
//! installed here if missing, as `.ci/run` does). An editor signs in, writes a rule with an error
//! and sees it at its line, fixes it and makes it live — the next `Turn` over gRPC follows it —
//! a viewer cannot change anything, and the editor compares versions and rolls the change back,
//! which the next `Turn` follows too. The change log on disk names who did what. Screenshots go
//! to `target/console-screenshots/`. Needs `cargo run --release -- models fetch`.
#[path = "../inference/tests/common/mod.rs"]
mod common;
use common::channel;
use nudge_proto::v1 as pb;
use nudge_records::ChangeRecord;
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

fn browser_step(script: &Path, step: &str, url: &str, shots: &Path) {
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
}

async fn offer_for_regular_customer(grpc: std::net::SocketAddr, conv: &str) -> String {
    let mut c = pb::conversations_client::ConversationsClient::new(channel(grpc).await);
    let r = c
        .turn(pb::TurnRequest {
            conversation_id: conv.into(),
            customer_id: format!("cust-{conv}"),
            channel: "web".into(),
            text: "How long does the X1 phone battery last?".into(),
            customer: Some(pb::Customer {
                tier: "regular".into(),
                lifetime_value_cents: 10_000,
                marketing_consent: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.offer.map(|o| o.offer_id).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_a_rule_sees_it_live_and_rolls_it_back_in_a_browser() {
    let script = playwright();
    chromium();
    let var = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The console writes the rules file: a copy of the example shop's.
    let rules = var.path().join("rules.toml");
    std::fs::copy("examples/shop/rules.toml", &rules).unwrap();
    let users = var.path().join("users.toml");
    let hash = |p: &str| nudge_inference::console::hash_password(p).unwrap();
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ana\"\nrole = \"editor\"\npassword_hash = \"{}\"\n\n[[user]]\nname = \"vic\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
            hash("ana's long password"),
            hash("vic's long password")
        ),
    )
    .unwrap();
    let mut config = common::example_shop_config(var.path());
    config.strategy.as_mut().unwrap().rules = rules.clone();
    config.console = Some(nudge_inference::console::ConsoleConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        users_file: users,
        dir: var.path().join("console"),
        session_minutes: 10,
    });
    let server = nudge_inference::start(config)
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
    server.shutdown().await.unwrap();
}
