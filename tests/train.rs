//! `nudge train` (heads only) as a process: a tiny encoder and a small separable data set give a
//! bundle that reaches 100 % on its training data, is reproducible, and serves its labels; bad
//! training files get errors naming the file and line.
use crate::common::*;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nudge");

fn write_jsonl(path: &std::path::Path, rows: &[(&str, &str)]) {
    let text: String = rows
        .iter()
        .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn train(dir: &std::path::Path, out: &str, train: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["train", "--task", "intent", "--train"])
        .arg(train)
        .arg("--val")
        .arg(train)
        .arg("--base")
        .arg(dir.join("enc"))
        .arg("--out")
        .arg(dir.join(out))
        .args(["--name", "trained", "--oos-quantile", "0", "--cache-dir"])
        .arg(dir.join("cache"))
        .output()
        .unwrap()
}

#[test]
fn trained_head_fits_its_data_is_reproducible_and_is_served() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::Bert, 5).write_encoder(&dir.path().join("enc"));
    let rows = [
        ("where is my order", "track"),
        ("my order where is it", "track"),
        ("delivery today", "track"),
        ("refund please", "money"),
        ("refund my card", "money"),
        ("pay card refund", "money"),
        ("hello", "hi"),
        ("hello hello", "hi"),
        ("thanks hello", "hi"),
    ];
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &rows);
    let out = train(dir.path(), "b1", &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("| 9 | 100.0% |"), "{report}");

    // Same data, same seed: the same head, byte for byte (the second run reuses the cache).
    assert!(train(dir.path(), "b2", &data).status.success());
    assert_eq!(
        std::fs::read(dir.path().join("b1/heads.safetensors")).unwrap(),
        std::fs::read(dir.path().join("b2/heads.safetensors")).unwrap()
    );

    // Retraining into an existing bundle replaces what it manages, keeps files it does not, and
    // leaves no staging directories behind.
    std::fs::write(dir.path().join("b1/make.sh"), "# how b1 was made\n").unwrap();
    assert!(train(dir.path(), "b1", &data).status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b1/make.sh")).unwrap(),
        "# how b1 was made\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".nudge-bundle"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let model = nudge_model::NluModel::load(&dir.path().join("b1"), nudge_model::BackendKind::Cpu).unwrap();
    assert_eq!(model.intent_spec().unwrap().labels, vec!["hi", "money", "track"]);
    for (text, label) in rows {
        let u = nudge_inference::nlu::understand_local(&model, text, 1, false).unwrap();
        assert_eq!(u.intent.unwrap().label, label, "{text}");
    }
}

#[test]
fn bad_training_files_are_refused_with_file_and_line() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::Bert, 5).write_encoder(&dir.path().join("enc"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"hello\", \"label\": \"hi\"}\n\n{\"text\": \"refund\", \"label\": \n",
    )
    .unwrap();
    let out = train(dir.path(), "b", &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("line 3") && err.contains("malformed JSON"),
        "{err}"
    );

    let one = dir.path().join("one.jsonl");
    write_jsonl(&one, &[("hello", "hi"), ("hello hello", "hi")]);
    let out = train(dir.path(), "b", &one);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only one class"), "{err}");
    assert!(
        !dir.path().join("b/manifest.json").exists(),
        "nothing written for a refused run"
    );
}

#[test]
fn lang_takes_one_language_from_tagged_files_and_whole_untagged_ones() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::Bert, 5).write_encoder(&dir.path().join("enc"));
    // A bilingual file tagging its rows (the zh rows carry a label of their own, so the trained
    // labels show which rows were read) and an untagged one.
    let tagged = dir.path().join("tagged.jsonl");
    let rows = [
        ("where is my order", "track", "en"),
        ("my order where is it", "track", "en"),
        ("refund please", "money", "en"),
        ("refund my card", "money", "en"),
        ("订单到哪了", "zh_track", "zh"),
        ("我的订单呢", "zh_track", "zh"),
    ];
    let text: String = rows
        .iter()
        .map(|(t, l, g)| serde_json::json!({"text": t, "label": l, "lang": g}).to_string() + "\n")
        .collect();
    std::fs::write(&tagged, text).unwrap();
    let untagged = dir.path().join("untagged.jsonl");
    write_jsonl(&untagged, &[("hello", "hi"), ("hello hello", "hi")]);
    let run = |lang: &str, out: &str| {
        Command::new(BIN)
            .args(["train", "--task", "intent", "--train"])
            .arg(&tagged)
            .arg("--train")
            .arg(&untagged)
            .arg("--base")
            .arg(dir.path().join("enc"))
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--oos-quantile", "0", "--lang", lang, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = run("en", "b");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("b/manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m["heads"]["intent"]["labels"],
        serde_json::json!(["hi", "money", "track"])
    );
    assert_eq!(m["metrics"]["intent"]["lang"], "en");
    assert_eq!(m["metrics"]["intent"]["train_examples"], 6);

    let out = run("fr", "c");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tagged.jsonl") && err.contains("no examples with lang `fr`"),
        "{err}"
    );
}

#[test]
fn eval_refuses_labels_the_bundle_does_not_know() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&dir.path().join("b"), "tiny", Variant::Bert, nudge_model::Pooling::Mean);
    let data = dir.path().join("d.jsonl");
    write_jsonl(&data, &[("where is my order", "order_status"), ("hello", "weather")]);
    let out = Command::new(BIN)
        .args(["eval", "--bundle"])
        .arg(&bundle)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("d.jsonl") && err.contains("example 2") && err.contains("weather"),
        "{err}"
    );
}

#[test]
fn calibrate_writes_a_new_version_and_leaves_the_served_bundle_as_it_was() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&dir.path().join("b"), "tiny", Variant::Bert, nudge_model::Pooling::Mean);
    let source_manifest = std::fs::read(bundle.join("manifest.json")).unwrap();
    let data = dir.path().join("cal.jsonl");
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for t in ["where is my order", "track parcel", "has it shipped", "delivery date"] {
        rows.push((t, "order_status"));
    }
    for t in ["refund please", "money back", "return this item", "cancel and refund"] {
        rows.push((t, "refund"));
    }
    for t in ["hello", "hi there", "good morning", "hey"] {
        rows.push((t, "greeting"));
    }
    for t in [
        "what is the weather",
        "tell me a joke",
        "who won the match",
        "play some music",
        "capital of peru",
    ] {
        rows.push((t, "oos"));
    }
    write_jsonl(&data, &rows);
    let calibrate = |out: &str, extra: &[&str]| {
        Command::new(BIN)
            .args(["calibrate", "--bundle"])
            .arg(&bundle)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--max-in-scope-loss", "0.25"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = calibrate("c", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();

    // The source is untouched; the new version names its origin and data.
    assert_eq!(std::fs::read(bundle.join("manifest.json")).unwrap(), source_manifest);
    let old = nudge_model::Manifest::read(&bundle).unwrap();
    let new = nudge_model::Manifest::read(&dir.path().join("c")).unwrap();
    let data_sha = nudge_model::bundle::sha256_hex(&std::fs::read(&data).unwrap());
    assert_eq!(new.version, format!("{}-cal-{}", old.version, &data_sha[..8]));
    assert_eq!(new.name, old.name);
    let record = &new.metrics["oos_calibration"];
    assert_eq!(record["data_sha256"], data_sha.as_str());
    assert_eq!(record["from_version"], old.version.as_str());
    let threshold = new.heads.intent.as_ref().unwrap().oos_threshold;
    assert_eq!(record["threshold"].as_f64().unwrap() as f32, threshold);
    assert!(
        stdout.contains(&format!("-> {threshold:.4}")) && stdout.contains(&new.version),
        "{stdout}"
    );

    // The chosen threshold does what calibration promises on its data, measured by eval.
    let task = nudge_training::Task::Intent;
    let before = nudge_training::eval::evaluate_bundle(&bundle, &data, task).unwrap();
    let after = nudge_training::eval::evaluate_bundle(&dir.path().join("c"), &data, task).unwrap();
    let (b, a) = (before.oos.unwrap(), after.oos.unwrap());
    assert!(
        a.in_scope_accuracy >= b.in_scope_accuracy - 0.25 - 1e-9,
        "{a:?} vs {b:?}"
    );
    assert!(
        a.in_scope_accuracy + a.recall >= b.in_scope_accuracy + b.recall - 1e-9,
        "{a:?} vs {b:?}"
    );

    // An existing directory is not overwritten, and a version equal to the old one is refused.
    let again = calibrate("c", &[]);
    assert!(!again.status.success());
    let same = calibrate("d", &["--version", &old.version]);
    assert!(!same.status.success());
    assert!(String::from_utf8_lossy(&same.stderr).contains("version of its own"));
    assert!(!dir.path().join("d").exists());
}
