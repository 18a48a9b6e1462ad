//! `nudge.v1.ModelAdmin/ReloadModel` on loopback: while 100 clients keep calling Understand,
//! the served model is swapped ten times between two bundles (different versions and labels).
//! No call fails, every answer's labels belong to the version it names, and bundles that fail
//! a check (checksum, NaN weights, another model's name) are refused while the old version
//! keeps serving.
use crate::common::*;
use nudge_model::Manifest;
use nudge_model::Pooling;
use nudge_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::Code;

const B_INTENTS: &[&str] = &["b_track", "b_return", "b_hello"];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of `from` with its manifest edited (the files it checksums are unchanged).
fn variant_of(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    copy_dir(from, to);
    let p = to.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn reload(model: &str, dir: &Path) -> pb::ReloadModelRequest {
    pb::ReloadModelRequest {
        model: model.into(),
        bundle_dir: dir.display().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_reload_under_load_without_a_failed_call_or_a_mixed_answer() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let a = write_bundle(&dir.path().join("a"), "tiny", Variant::Bert, Pooling::Mean);
    let b = dir.path().join("b");
    variant_of(&a, &b, |m| {
        m["version"] = "t2".into();
        m["heads"]["intent"]["labels"] = serde_json::json!(B_INTENTS);
    });
    let labels: BTreeMap<&str, BTreeSet<&str>> = [
        ("t1", INTENTS.iter().copied().collect()),
        ("t2", B_INTENTS.iter().copied().collect()),
    ]
    .into();
    let server = start_server(vec![a.clone()], |_| {}).await;
    let admin_channel = channel(server.admin_addr).await;
    let channel = channel(server.grpc_addr).await;
    let mut admin = pb::model_admin_client::ModelAdminClient::new(admin_channel);

    let stop = Arc::new(AtomicBool::new(false));
    let texts = texts(20);
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut nlu = pb::nlu_client::NluClient::new(channel.clone());
        let (stop, texts) = (stop.clone(), texts.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                let r = nlu
                    .understand(pb::UnderstandRequest {
                        text: texts[k % texts.len()].clone(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner());
                seen.push(r.map(|r| (r.model_version, r.result.unwrap().intent.unwrap().label)));
                k += 7;
            }
            seen
        }));
    }
    for i in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let (to, from_v, to_v) = if i % 2 == 0 { (&b, "t1", "t2") } else { (&a, "t2", "t1") };
        let r = admin.reload_model(reload("tiny", to)).await.unwrap().into_inner();
        assert_eq!((r.previous_version.as_str(), r.version.as_str()), (from_v, to_v));
        assert_eq!(r.model, "tiny");
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions = BTreeSet::new();
    let mut calls = 0;
    for c in clients {
        for r in c.await.unwrap() {
            let (v, label) = r.expect("no call fails during reloads");
            assert!(
                labels[v.as_str()].contains(label.as_str()),
                "{label} is not a label of {v}"
            );
            versions.insert(v);
            calls += 1;
        }
    }
    eprintln!("{calls} calls during 10 reloads, versions {versions:?}");
    assert_eq!(versions.len(), 2);
    assert!(calls >= 500, "{calls}");

    // Refused: a corrupt file, NaN weights with valid checksums, another model's bundle, an
    // unknown model. Each names the field; the serving version stays t1.
    let corrupt = dir.path().join("corrupt");
    copy_dir(&a, &corrupt);
    let heads = corrupt.join("heads.safetensors");
    let mut bytes = std::fs::read(&heads).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&heads, bytes).unwrap();
    let e = admin.reload_model(reload("tiny", &corrupt)).await.unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("bundle_dir") && e.message().contains("sha256"),
        "{e}"
    );
    let nan = dir.path().join("nan");
    copy_dir(&a, &nan);
    let hidden = Tiny::new(Variant::Bert, 7).hidden;
    let mut t = BTreeMap::new();
    for (n, k) in [("intent", INTENTS.len()), ("sentiment", SENTIMENTS.len())] {
        t.insert(format!("{n}.weight"), (vec![k, hidden], vec![f32::NAN; k * hidden]));
        t.insert(format!("{n}.bias"), (vec![k], vec![0.0; k]));
    }
    write_safetensors(&nan.join("heads.safetensors"), &t);
    let mut m = Manifest::read(&nan).unwrap();
    m.write_with_checksums(
        &nan,
        &[
            "encoder/config.json",
            "encoder/tokenizer.json",
            "encoder/model.safetensors",
            "heads.safetensors",
        ],
    )
    .unwrap();
    let e = admin.reload_model(reload("tiny", &nan)).await.unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("bundle_dir") && e.message().contains("NaN"),
        "{e}"
    );
    let other = dir.path().join("other");
    variant_of(&a, &other, |m| m["name"] = "other".into());
    let e = admin.reload_model(reload("tiny", &other)).await.unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("named `other`"),
        "{e}"
    );
    let e = admin.reload_model(reload("nope", &a)).await.unwrap_err();
    assert!(e.code() == Code::NotFound && e.message().starts_with("model"), "{e}");
    let mut nlu = pb::nlu_client::NluClient::new(channel.clone());
    let r = nlu
        .understand(pb::UnderstandRequest {
            text: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, "t1");

    // An empty bundle_dir reloads from where the serving version came from; ListModels agrees.
    let r = admin
        .reload_model(pb::ReloadModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.previous_version.as_str(), r.version.as_str()), ("t1", "t1"));
    assert_eq!(Path::new(&r.bundle_dir), a.as_path());
    let listed = nlu.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.models[0].version, "t1");
    assert_eq!(listed.models[0].intent_labels, INTENTS);
    server.shutdown().await.unwrap();
}
