//! The `nudge` binary as a real process: `serve` with a TOML file, flags and env, SIGTERM; a
//! bad bundle at start-up; `understand`, also into a closed pipe; `models import` refusing a file
//! that is not a model.
use crate::common::*;
use nudge_model::Pooling;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nudge");

#[tokio::test]
async fn serve_reads_toml_then_env_then_flags_and_stops_on_sigterm() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&dir.path().join("b"), "tiny", Variant::Bert, Pooling::Mean);
    let toml = dir.path().join("nudge.toml");
    std::fs::write(
        &toml,
        format!(
            "bundles = [{:?}]\n[limits]\nmax_text_bytes = 1000\nmax_batch_texts = 3\n",
            bundle.display().to_string()
        ),
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&toml)
            .args(["--grpc-addr", "127.0.0.1:0", "--max-text-bytes", "20"])
            .env("NUDGE_METRICS_ADDR", "127.0.0.1:0")
            .env("NUDGE_MAX_TEXT_BYTES", "500")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("listening line")
        .parse()
        .unwrap();
    let mut c = client(grpc).await;
    let ok = c
        .understand(nudge_proto::v1::UnderstandRequest {
            text: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.model, "tiny");
    // The flag (20) beats the env (500), which beats the file (1000).
    let err = c
        .understand(nudge_proto::v1::UnderstandRequest {
            text: "where is my order please".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("limit of 20 bytes"), "{}", err.message());
    // The file's max_batch_texts still applies.
    let err = c
        .understand_batch(nudge_proto::v1::UnderstandBatchRequest {
            texts: vec!["a".into(); 4],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("limit of 3"), "{}", err.message());
    drop(c);
    send_signal(child.id(), 15);
    // Wait off the runtime, so the client side of the connection can answer the server's GOAWAY.
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "drain took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");
}

fn send_signal(pid: u32, sig: i32) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

#[test]
fn serve_refuses_a_bad_bundle_at_start_up_naming_the_file() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&dir.path().join("b"), "tiny", Variant::Bert, Pooling::Mean);
    std::fs::write(bundle.join("heads.safetensors"), b"not a tensor file").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--bundle",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heads.safetensors") && err.contains("sha256 mismatch"),
        "{err}"
    );
}

#[test]
fn understand_prints_json_and_import_refuses_a_non_model() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&dir.path().join("b"), "tiny", Variant::Bert, Pooling::Mean);
    let out = Command::new(BIN)
        .args(["understand", "refund please", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(INTENTS.contains(&v["intent"]["label"].as_str().unwrap()));
    assert!(SENTIMENTS.contains(&v["sentiment"]["label"].as_str().unwrap()));

    // A reader that has gone (`nudge understand … | head -c0`): the pipe's read end is closed
    // before the process starts, so its first write fails. It ends quietly, with success, where
    // `println!` panicked with a backtrace.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["understand", "refund please", "--bundle"])
        .arg(&bundle)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");

    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"GGUF....").unwrap();
    let out = Command::new(BIN)
        .args(["models", "import", "--from"])
        .arg(&junk)
        .arg("--out")
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.bin") && err.contains("E5S1"), "{err}");
}
