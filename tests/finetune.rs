//! `nudge train --fine-tune` as a process, on a tiny random encoder: it fits a small synthetic
//! set, the bundle it writes is served over gRPC with its labels, a run killed after a checkpoint
//! resumes to the very bytes of an uninterrupted run, and bad inputs are refused with nothing
//! written.
use crate::common::*;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nudge");

/// Three intents, each marked by its own keywords among filler words.
fn synthetic(n: usize, seed: u64) -> Vec<(String, String)> {
    let classes: [(&str, &[&str]); 3] = [
        ("track", &["order", "delivery", "where"]),
        ("refund", &["refund", "return", "cancel"]),
        ("discount", &["coupon", "price", "much"]),
    ];
    let filler = [
        "my", "the", "a", "please", "is", "it", "today", "blue", "shoes", "hello",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let (label, keys) = classes[i % 3];
            let len = rng.random_range(3..8);
            let mut words: Vec<&str> = (0..len).map(|_| filler[rng.random_range(0..filler.len())]).collect();
            let at = rng.random_range(0..=words.len());
            words.insert(at, keys[rng.random_range(0..keys.len())]);
            (words.join(" "), label.to_string())
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[(String, String)]) {
    let text: String = rows
        .iter()
        .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn fine_tune_cmd(dir: &Path, data: &Path, out: &str, ckpt: &str, extra: &[&str]) -> Command {
    with_base(dir, &dir.join("enc"), data, out, ckpt, extra)
}

fn with_base(dir: &Path, base: &Path, data: &Path, out: &str, ckpt: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--task", "intent", "--fine-tune", "--train"])
        .arg(data)
        .arg("--val")
        .arg(data)
        .arg("--base")
        .arg(base)
        .arg("--out")
        .arg(dir.join(out))
        .arg("--checkpoint-dir")
        .arg(dir.join(ckpt))
        .args(["--name", "tuned", "--version", "t1", "--patience", "0"])
        .args(extra);
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuned_bundle_fits_its_data_and_is_served_over_grpc() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::Bert, 11).write_encoder(&dir.path().join("enc"));
    let rows = synthetic(60, 1);
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &rows);
    let mut cmd = fine_tune_cmd(
        dir.path(),
        &data,
        "b",
        "ckpt",
        &[
            "--epochs",
            "25",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--head-lr",
            "3e-2",
        ],
    );
    let report = ok(tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap());
    assert!(report.contains("| 60 | 100.0% |"), "{report}");
    assert!(report.contains("intent head (fine-tune)"), "{report}");

    // The encoder itself was trained, and the manifest says how, on what data.
    let base = std::fs::read(dir.path().join("enc/model.safetensors")).unwrap();
    let tuned = std::fs::read(dir.path().join("b/encoder/model.safetensors")).unwrap();
    assert_ne!(base, tuned);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("b/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["metrics"]["intent"]["mode"], "fine-tune");
    assert_eq!(m["metrics"]["intent"]["epochs"].as_array().unwrap().len(), 25);
    assert!(m["metrics"]["intent"]["data_sha256"][data.display().to_string()].is_string());
    assert!(
        m["encoder"].get("source").is_none(),
        "a tuned encoder is not a fetched one"
    );
    assert!(
        !dir.path().join("ckpt").read_dir().unwrap().any(|_| true),
        "checkpoints removed after a finished run"
    );

    // Served over gRPC with the trained labels, every training text answered correctly.
    let server = start_server(vec![dir.path().join("b")], |_| {}).await;
    let mut c = client(server.grpc_addr).await;
    for (text, label) in &rows {
        let r = c
            .understand(nudge_proto::v1::UnderstandRequest {
                text: text.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_version, "t1");
        assert_eq!(r.result.unwrap().intent.unwrap().label, *label, "{text}");
    }
    server.shutdown().await.unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_bundle() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::XlmR, 12).write_encoder(&dir.path().join("enc"));
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &synthetic(600, 2));
    let args = [
        "--epochs",
        "8",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--train-layers",
        "1",
    ];

    let whole = ok(fine_tune_cmd(dir.path(), &data, "whole", "ck-whole", &args)
        .output()
        .unwrap());
    assert!(!whole.contains("resumed"), "{whole}");

    // Kill -9 as soon as the first checkpoint is on disk, then run the same command again.
    let mut child = fine_tune_cmd(dir.path(), &data, "resumed", "ck-resumed", &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt_written = || {
        std::fs::read_dir(dir.path().join("ck-resumed"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("checkpoint.safetensors").exists())
    };
    let t0 = std::time::Instant::now();
    while !ckpt_written() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint was seen"
        );
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before it finished");
    assert!(!dir.path().join("resumed/manifest.json").exists());

    let resumed = ok(fine_tune_cmd(dir.path(), &data, "resumed", "ck-resumed", &args)
        .output()
        .unwrap());
    assert!(resumed.contains("resumed from the checkpoint after epoch"), "{resumed}");
    for f in ["encoder/model.safetensors", "heads.safetensors", "manifest.json"] {
        assert!(
            std::fs::read(dir.path().join("whole").join(f)).unwrap()
                == std::fs::read(dir.path().join("resumed").join(f)).unwrap(),
            "{f} differs between the resumed and the uninterrupted run"
        );
    }
}

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    Tiny::new(Variant::Bert, 13).write_encoder(&dir.path().join("enc"));
    let err_of = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // A label with a single example.
    let mut rows = synthetic(12, 3);
    rows.push(("hello thanks".into(), "greeting".into()));
    let single = dir.path().join("single.jsonl");
    write_jsonl(&single, &rows);
    let err = err_of(fine_tune_cmd(dir.path(), &single, "b", "ck", &[]).output().unwrap());
    assert!(err.contains("label `greeting` has 1 training example"), "{err}");

    // A base that is not an encoder: a directory without weights, and a decoder's config.
    let data = dir.path().join("train.jsonl");
    write_jsonl(&data, &synthetic(12, 4));
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let err = err_of(
        with_base(dir.path(), &dir.path().join("empty"), &data, "b", "ck", &[])
            .output()
            .unwrap(),
    );
    assert!(err.contains("not an encoder"), "{err}");
    let gpt = dir.path().join("gpt");
    std::fs::create_dir_all(&gpt).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(dir.path().join("enc").join(f), gpt.join(f)).unwrap();
    }
    std::fs::write(
        gpt.join("config.json"),
        r#"{"model_type": "gpt2", "n_embd": 16, "n_layer": 2, "n_head": 2, "vocab_size": 34}"#,
    )
    .unwrap();
    let err = err_of(with_base(dir.path(), &gpt, &data, "b", "ck", &[]).output().unwrap());
    assert!(err.contains("config.json"), "{err}");

    // CSV: named columns are read; a missing column is named.
    let csv = dir.path().join("train.csv");
    let mut text = String::from("id,utterance,intent\n");
    for (i, (t, l)) in synthetic(12, 5).iter().enumerate() {
        text.push_str(&format!("{i},\"{t}\",{l}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let err = err_of(fine_tune_cmd(dir.path(), &csv, "b", "ck", &[]).output().unwrap());
    assert!(err.contains("train.csv") && err.contains("no column `text`"), "{err}");
    assert!(!dir.path().join("b").exists(), "nothing written for refused runs");
    ok(fine_tune_cmd(
        dir.path(),
        &csv,
        "b",
        "ck",
        &[
            "--epochs",
            "1",
            "--text-column",
            "utterance",
            "--label-column",
            "intent",
        ],
    )
    .output()
    .unwrap());
    let m = nudge_model::Manifest::read(&dir.path().join("b")).unwrap();
    assert_eq!(m.heads.intent.unwrap().labels, vec!["discount", "refund", "track"]);
}
