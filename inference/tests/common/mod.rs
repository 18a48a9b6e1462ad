//! Helpers for tests that run a server in process: start one on loopback, connect a client.
//! The root crate's end-to-end tests include this file too (`#[path]`).
#![allow(dead_code, unused_imports, clippy::unwrap_used)]
pub use nudge_testkit::*;
use std::path::PathBuf;

/// Starts an in-process server on loopback ports chosen by the OS.
pub async fn start_server(
    bundles: Vec<PathBuf>,
    tweak: impl FnOnce(&mut nudge_inference::ServeConfig),
) -> nudge_inference::RunningServer {
    let mut config = nudge_inference::ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        bundles,
        // Test bundles live in temporary directories.
        models_root: std::env::temp_dir(),
        ..Default::default()
    };
    tweak(&mut config);
    nudge_inference::start(config).await.expect("server starts")
}

/// The example shop's `examples/shop/nudge.toml` (read from the workspace root) on loopback
/// ports, its policies and decision log under `var`, quiet hours off (they depend on the clock;
/// a test must not).
pub fn example_shop_config(var: &std::path::Path) -> nudge_inference::ServeConfig {
    let text = std::fs::read_to_string("examples/shop/nudge.toml").unwrap();
    let mut config: nudge_inference::ServeConfig = toml::from_str(&text).unwrap();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let d = config.decisions.as_mut().unwrap();
    d.policy_registry = var.join("policies");
    d.decision_log = var.join("decisions");
    let s = config.strategy.as_mut().unwrap();
    s.guardrails.quiet_hours = None;
    s.events_log = Some(var.join("events"));
    config
}

pub async fn client(addr: std::net::SocketAddr) -> nudge_proto::v1::nlu_client::NluClient<tonic::transport::Channel> {
    nudge_proto::v1::nlu_client::NluClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A channel to one of the server's listeners (`grpc_addr` or `admin_addr`).
pub async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A child process that is killed and reaped when dropped, so a failing assertion does not
/// leave a server or optimizer running (and holding the test harness's output pipes).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
