//! The admin door on loopback: ModelAdmin lives on the admin listener only; with a token set,
//! every service but health answers UNAUTHENTICATED without it (on both listeners); a bundle
//! outside the models root is refused naming `bundle_dir` while the old version keeps serving;
//! with TLS configured (a self-signed certificate made here) clients that trust it are served
//! and plain-text clients are not.
use crate::common::*;
use nudge_inference::{Secret, TlsConfig};
use nudge_model::Pooling;
use nudge_proto::v1 as pb;
use pb::model_admin_client::ModelAdminClient;
use pb::nlu_client::NluClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

const TOKEN: &str = "s3cret-token-for-tests";

fn understand(text: &str) -> pb::UnderstandRequest {
    pb::UnderstandRequest {
        text: text.into(),
        ..Default::default()
    }
}

/// `req` with `authorization: Bearer <token>`.
fn bearer<T>(req: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn every_service_but_health_needs_the_token_and_model_admin_is_only_on_the_admin_port() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let root = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&root.path().join("a"), "tiny", Variant::Bert, Pooling::Mean);
    let server = start_server(vec![bundle.clone()], |c| {
        c.auth_token = Some(Secret::new(TOKEN));
        c.models_root = root.path().to_path_buf();
    })
    .await;

    let mut nlu = NluClient::new(channel(server.grpc_addr).await);
    let status = nlu.understand(understand("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Bearer"), "{}", status.message());
    let status = nlu
        .understand(bearer(understand("hello"), "s3cret-token-for-test"))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "a token one byte short is refused"
    );
    let r = nlu
        .understand(bearer(understand("hello"), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model, "tiny");
    let intent = r.result.unwrap().intent.unwrap();
    assert!(!intent.top_k.is_empty() && intent.top_k.iter().all(|l| INTENTS.contains(&l.label.as_str())));

    // Load balancers probe health without credentials, on both listeners.
    for addr in [server.grpc_addr, server.admin_addr] {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel(addr).await);
        let s = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // ModelAdmin is not served on the data port at all.
    let reload = pb::ReloadModelRequest {
        model: "tiny".into(),
        bundle_dir: String::new(),
    };
    let mut on_data = ModelAdminClient::new(channel(server.grpc_addr).await);
    let status = on_data.reload_model(bearer(reload.clone(), TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    let mut admin = ModelAdminClient::new(channel(server.admin_addr).await);
    let status = admin.reload_model(reload.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let r = admin.reload_model(bearer(reload, TOKEN)).await.unwrap().into_inner();
    assert_eq!((r.version.as_str(), r.previous_version.as_str()), ("t1", "t1"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bundle_outside_the_models_root_is_refused_and_the_old_one_keeps_serving() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let root = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&root.path().join("a"), "tiny", Variant::Bert, Pooling::Mean);
    // A valid bundle of the same model, but not under the root; and a link from inside the
    // root that points out of it.
    let outside = write_bundle(&elsewhere.path().join("b"), "tiny", Variant::Bert, Pooling::Mean);
    std::os::unix::fs::symlink(&outside, root.path().join("sneaky")).unwrap();
    let server = start_server(vec![bundle], |c| c.models_root = root.path().to_path_buf()).await;
    let mut admin = ModelAdminClient::new(channel(server.admin_addr).await);
    for dir in [
        outside.display().to_string(),
        root.path().join("sneaky").display().to_string(),
        root.path().join("a/../../").display().to_string(),
    ] {
        let status = admin
            .reload_model(pb::ReloadModelRequest {
                model: "tiny".into(),
                bundle_dir: dir.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{dir}: {status:?}");
        assert!(
            status.message().contains("bundle_dir") && status.message().contains("models root"),
            "{dir}: {}",
            status.message()
        );
    }
    let mut nlu = client(server.grpc_addr).await;
    let r = nlu.understand(understand("hello")).await.unwrap().into_inner();
    assert_eq!(r.model_version, "t1");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_refuses_plain_text() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let root = tempfile::tempdir().unwrap();
    let bundle = write_bundle(&root.path().join("a"), "tiny", Variant::Bert, Pooling::Mean);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let (cert_path, key_path) = (root.path().join("cert.pem"), root.path().join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let server = start_server(vec![bundle], |c| {
        c.models_root = root.path().to_path_buf();
        c.tls = Some(TlsConfig {
            cert: cert_path,
            key: key_path,
        });
    })
    .await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    for addr in [server.grpc_addr, server.admin_addr] {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .expect("TLS connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .expect("health over TLS");
        if addr == server.grpc_addr {
            let r = NluClient::new(channel)
                .understand(understand("hello"))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.model, "tiny");
        }
    }

    // A plain-text HTTP/2 client gets no answer from a TLS listener.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = NluClient::new(ch).understand(understand("hello")).await;
        assert!(r.is_err(), "plain text must not be served: {r:?}");
    }
    // A client that does not trust the certificate is refused at the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let untrusted = Channel::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(other.cert.pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    match untrusted {
        Err(_) => {}
        Ok(ch) => assert!(NluClient::new(ch).understand(understand("hello")).await.is_err()),
    }
    server.shutdown().await.unwrap();
}
