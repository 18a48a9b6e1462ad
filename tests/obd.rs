//! `nudge optimizer import-obd` and `replay` on a campaign in the Open Bandit Dataset's format,
//! written by the test with a known answer: item 2 is clicked half the time in slot 1, every
//! other shown item 5 % of the time. A policy learned on the older half must find it, the
//! logging policy's IPS must equal the newer half's observed click rate exactly (it logged
//! uniformly), and bad files are refused with the line and column named.
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nudge");
const ITEMS: usize = 4;

fn click_prob(item: usize, position: u32) -> f64 {
    if item == 2 && position == 1 {
        0.5
    } else {
        0.05
    }
}

/// A campaign directory `<dir>/<name>/` with item_context.csv and <name>.csv; returns the
/// number of clicks per row.
fn write_campaign(dir: &Path, name: &str, rows: usize, propensity: impl Fn(usize) -> f64) -> Vec<bool> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut items = String::from(",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n");
    for i in 0..ITEMS {
        writeln!(
            items,
            "{i},{i},{:.3},{:032x},{:032x},{:032x}",
            i as f64 * 0.5 - 1.0,
            0xa0 + i % 2,
            0xb0 + i,
            0xc0
        )
        .unwrap();
    }
    std::fs::write(d.join("item_context.csv"), items).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut csv = String::from(",timestamp,item_id,position,click,propensity_score");
    for k in 0..4 {
        write!(csv, ",user_feature_{k}").unwrap();
    }
    for i in 0..ITEMS {
        write!(csv, ",user-item_affinity_{i}").unwrap();
    }
    csv.push('\n');
    let mut clicks = Vec::new();
    for r in 0..rows {
        let item = rng.random_range(0..ITEMS);
        let position = rng.random_range(1..=3u32);
        let click = rng.random::<f64>() < click_prob(item, position);
        clicks.push(click);
        write!(
            csv,
            "{r},2019-11-24 {:02}:{:02}:{:02}.{:06}+00:00,{item},{position},{},{}",
            r / 3600,
            r / 60 % 60,
            r % 60,
            r * 7 % 1_000_000,
            u8::from(click),
            propensity(r)
        )
        .unwrap();
        for k in 0..4 {
            write!(csv, ",{:032x}", 0xd0 + (r + k) % 3).unwrap();
        }
        for i in 0..ITEMS {
            write!(csv, ",{}", u8::from(i == r % 5)).unwrap();
        }
        csv.push('\n');
    }
    std::fs::write(d.join(format!("{name}.csv")), csv).unwrap();
    clicks
}

fn nudge(args: &[&str], paths: &[(&str, &Path)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

#[test]
fn imported_campaign_replays_with_exact_logging_value_and_a_learned_policy_that_finds_the_best_item() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = 4000;
    let clicks = write_campaign(d, "toy", rows, |_| 1.0 / ITEMS as f64);
    let out = d.join("logs");
    let o = nudge(
        &["optimizer", "import-obd"],
        &[("--data", &d.join("toy")), ("--out", &out)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["decisions"], rows);
    assert_eq!(summary["clicks"], clicks.iter().filter(|c| **c).count());
    assert_eq!(summary["items"], ITEMS);
    // 3 slots + 4 user features × 3 values; item_feature_0, 2 + 4 + 1 categories, affinity.
    assert_eq!(summary["context_features"], 15);
    assert_eq!(summary["offer_features"], 9);

    // The decision log reads like a server's: every item a candidate, the shown one chosen.
    let logged = nudge_records::read_all::<nudge_records::DecisionRecord>(&out.join("decisions"))
        .unwrap()
        .0;
    assert_eq!(logged.len(), rows);
    let first = &logged[0];
    assert_eq!(first.candidates.len(), ITEMS);
    assert_eq!(first.propensity, 0.25);
    assert_eq!(first.probabilities, vec![0.25, 0.25, 0.25, 0.25]);
    assert!(first.context.keys().any(|k| k.starts_with("position=")));

    std::fs::write(d.join("click.toml"), "reward = \"click\"\nwindow_seconds = 0\n").unwrap();
    std::fs::write(
        d.join("learn.toml"),
        "[learn]\nholdout = 0.5\nnoise_var = 0.1\n[learn.exploration]\nkind = \"epsilon_greedy\"\nepsilon = 0.0\n",
    )
    .unwrap();
    let o = nudge(
        &["optimizer", "replay", "--json"],
        &[
            ("--reward", &d.join("click.toml")),
            ("--logs", &out.join("decisions")),
            ("--logs", &out.join("outcomes")),
            ("--registry", &out.join("registry")),
            ("--config", &d.join("learn.toml")),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = &report["verdict"];
    assert_eq!(v["train_examples"], rows / 2);
    let newer = clicks[rows / 2..].iter().filter(|c| **c).count() as f64 / (rows / 2) as f64;
    for est in ["ips", "snips"] {
        let got = v["serving"][est]["value"].as_f64().unwrap();
        assert!((got - newer).abs() < 1e-12, "{est} {got} vs observed {newer}");
    }
    // The learned policy shows item 2 in slot 1 (worth 0.5) and any item elsewhere (0.05):
    // (0.5 + 2 · 0.05) / 3 = 0.2, against uniform's (0.125 + 2 · 0.05) / 3 = 0.075.
    eprintln!("{}", serde_json::to_string(v).unwrap());
    let cand = v["candidate"]["ips"]["value"].as_f64().unwrap();
    assert!((cand - 0.2).abs() < 0.05, "{v}");
    assert!(v["candidate"]["ips"]["lo"].as_f64().unwrap() > v["serving"]["ips"]["hi"].as_f64().unwrap());
    assert_eq!(v["pass"], true);
    assert_eq!(report["serving_version"], "logging");

    // Logs of a non-uniform policy (the data set's Bernoulli-TS campaigns) are refused.
    write_campaign(d, "bts", 50, |r| if r == 3 { 0.4 } else { 0.25 });
    let o = nudge(
        &["optimizer", "import-obd"],
        &[("--data", &d.join("bts")), ("--out", &d.join("bts-logs"))],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("row 3") && err.contains("uniform"),
        "{err}"
    );
    // A malformed row names file, line and column; importing over existing logs is refused.
    let toy = d.join("toy").join("toy.csv");
    let text = std::fs::read_to_string(&toy).unwrap();
    let broken: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 5 {
                l.replace("2019-11-24", "2019-13-24") + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&toy, broken).unwrap();
    let o = nudge(
        &["optimizer", "import-obd"],
        &[("--data", &d.join("toy")), ("--out", &d.join("other"))],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("toy.csv") && err.contains("line 6, column `timestamp`"),
        "{err}"
    );
    std::fs::write(&toy, text).unwrap();
    let o = nudge(
        &["optimizer", "import-obd"],
        &[("--data", &d.join("toy")), ("--out", &out)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("empty directory"), "{err}");
}
