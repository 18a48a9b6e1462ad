//! The gRPC API on loopback: concurrency and batching, bad input, limits, health, reflection.
use crate::common::*;
use nudge_model::Pooling;
use nudge_proto::v1::{ListModelsRequest, UnderstandBatchRequest, UnderstandRequest};
use tonic::Code;

fn req(text: &str) -> UnderstandRequest {
    UnderstandRequest {
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_calls_are_all_answered_in_batches() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::Bert, Pooling::Mean);
    let reference = nudge_model::NluModel::load(&bundle, nudge_model::BackendKind::Cpu).unwrap();
    let server = start_server(vec![bundle], |_| {}).await;
    let texts = texts(25);
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut c = client(server.grpc_addr).await;
        let text = texts[i % texts.len()].clone();
        calls.push(tokio::spawn(async move {
            let r = c
                .understand(UnderstandRequest {
                    text: text.clone(),
                    include_embedding: true,
                    top_k: 2,
                    ..Default::default()
                })
                .await;
            (text, r)
        }));
    }
    let mut answered = 0;
    for call in calls {
        let (text, r) = call.await.unwrap();
        let r = r.expect("call answered").into_inner();
        let u = r.result.unwrap();
        // Each answer is this text's own: compare with a direct, unbatched run.
        let want = nudge_inference::nlu::understand_local(&reference, &text, 2, true).unwrap();
        let d = u
            .embedding
            .iter()
            .zip(&want.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "answer for {text:?} differs by {d}");
        assert_eq!(u.intent.as_ref().unwrap().label, want.intent.unwrap().label);
        assert_eq!(u.intent.unwrap().top_k.len(), 2);
        assert_eq!(r.model, "tiny");
        assert_eq!(r.model_version, "t1");
        let timing = r.timing.unwrap();
        assert!(timing.batch_size >= 1);
        assert_eq!(timing.device, "cpu");
        answered += 1;
    }
    assert_eq!(answered, 200);
    let m = scrape(server.metrics_addr).await;
    let batches = metric(&m, "nudge_batch_size_count").unwrap();
    let texts_in_batches = metric(&m, "nudge_batch_size_sum").unwrap();
    assert_eq!(texts_in_batches, 200.0);
    assert!(batches < 200.0, "no batch held more than one text ({batches} batches)");
    assert_eq!(
        metric(&m, "nudge_encoder_batches_total{device=\"cpu\",model=\"tiny\"}"),
        Some(batches)
    );
    assert_eq!(
        metric(&m, "nudge_requests_total{code=\"OK\",method=\"Understand\"}"),
        Some(200.0)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_naming_the_field() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::Bert, Pooling::Mean);
    let server = start_server(vec![bundle], |c| {
        c.limits.max_text_bytes = 100;
        c.limits.max_batch_texts = 4;
    })
    .await;
    let mut c = client(server.grpc_addr).await;
    fn check<T>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, needle: &str) {
        let s = r.err().expect("call must fail");
        assert_eq!(s.code(), code, "{}", s.message());
        assert!(
            s.message().contains(needle),
            "message {:?} lacks {needle:?}",
            s.message()
        );
    }
    check(c.understand(req("")).await, Code::InvalidArgument, "text");
    check(
        c.understand(req(" \t\n ")).await,
        Code::InvalidArgument,
        "text: must not be empty",
    );
    check(
        c.understand(req(&"order ".repeat(40))).await,
        Code::InvalidArgument,
        "text: 240 bytes exceeds the limit of 100",
    );
    check(
        c.understand(UnderstandRequest {
            text: "hello".into(),
            model: "nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "model: no model named `nope`",
    );
    let batch = |texts: Vec<&str>| UnderstandBatchRequest {
        texts: texts.into_iter().map(String::from).collect(),
        ..Default::default()
    };
    check(
        c.understand_batch(batch(vec![])).await,
        Code::InvalidArgument,
        "texts: must hold at least one text",
    );
    check(
        c.understand_batch(batch(vec!["a"; 5])).await,
        Code::InvalidArgument,
        "texts: 5 texts exceeds the limit of 4",
    );
    check(
        c.understand_batch(batch(vec!["hello", "", "thanks"])).await,
        Code::InvalidArgument,
        "texts[1]",
    );

    // Nothing above broke the server: a good call still works, in both forms.
    let ok = c.understand(req("where is my order")).await.unwrap().into_inner();
    assert!(ok.result.unwrap().embedding.is_empty(), "embedding only on request");
    let b = c
        .understand_batch(batch(vec!["hello", "refund please", "where is my order"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.results.len(), 3);
    let m = scrape(server.metrics_addr).await;
    assert_eq!(
        metric(
            &m,
            "nudge_requests_total{code=\"InvalidArgument\",method=\"Understand\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "nudge_requests_total{code=\"NotFound\",method=\"Understand\"}"),
        Some(1.0)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn overload_answers_resource_exhausted_and_long_text_is_flagged_truncated() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::Bert, Pooling::Mean);
    let server = start_server(vec![bundle], |c| c.batcher.queue_capacity = Some(4)).await;
    let mut c = client(server.grpc_addr).await;
    let s = c
        .understand_batch(UnderstandBatchRequest {
            texts: vec!["hello".into(); 6],
            ..Default::default()
        })
        .await
        .expect_err("over capacity");
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    // Within capacity it is served.
    let r = c
        .understand_batch(UnderstandBatchRequest {
            texts: vec!["hello".into(); 4],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().results.len(), 4);
    // 47 positions in the tiny BERT (48 max): a 100-word text is cut and flagged.
    let r = c
        .understand(req(&vec!["order"; 100].join(" ")))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(r.truncated);
    assert_eq!(r.token_count, 48);
    let r = c
        .understand(req("where is my order"))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(!r.truncated);
    assert_eq!(r.token_count, 6);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn several_models_health_and_reflection() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let a = write_bundle(&dir.path().join("a"), "first", Variant::Bert, Pooling::Mean);
    let b = write_bundle(&dir.path().join("b"), "second", Variant::XlmR, Pooling::Cls);
    let server = start_server(vec![a, b], |_| {}).await;
    let mut c = client(server.grpc_addr).await;
    let models = c.list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(
        models
            .iter()
            .map(|m| (m.name.as_str(), m.is_default))
            .collect::<Vec<_>>(),
        vec![("first", true), ("second", false)]
    );
    assert_eq!(models[0].intent_labels, INTENTS);
    assert_eq!(models[0].embedding_dim, 16);
    let r = c
        .understand(UnderstandRequest {
            text: "hello".into(),
            model: "second".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model, "second");
    let r = c.understand(req("hello")).await.unwrap().into_inner();
    assert_eq!(r.model, "first");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "nudge.v1.Nlu"] {
        let s = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"nudge.v1.Nlu".to_string()) && names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    server.shutdown().await.unwrap();
}

#[test]
fn texts_whose_caller_gave_up_are_dropped_before_compute() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    use nudge_inference::batcher::{Batcher, BatcherConfig};
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::Bert, Pooling::Mean);
    let model = std::sync::Arc::new(nudge_model::NluModel::load(&bundle, nudge_model::BackendKind::Cpu).unwrap());
    let metrics = nudge_inference::metrics::Metrics::new();
    let batcher = Batcher::spawn(
        model.clone(),
        BatcherConfig {
            max_batch_size: Some(4),
            ..Default::default()
        },
        metrics.clone(),
    )
    .unwrap();
    let long = model.tokenize(&vec!["order"; 46].join(" ")).unwrap().ids;
    // 400 long texts keep the worker busy for a while ...
    let kept = batcher.submit(vec![long.clone(); 400]).unwrap();
    // ... so that these 10, whose callers hang up at once, are still queued when it gets there.
    drop(batcher.submit(vec![long; 10]).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for rx in kept {
        rt.block_on(rx).unwrap().unwrap();
    }
    // The worker takes the dropped ones right after the last kept batch; give it a moment.
    for _ in 0..100 {
        if metrics.dropped.with_label_values(&["tiny"]).get() == 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(metrics.dropped.with_label_values(&["tiny"]).get(), 10);
    assert_eq!(
        metrics.batch_size.with_label_values(&["tiny"]).get_sample_sum(),
        400.0,
        "only the 400 kept texts were computed"
    );
}
