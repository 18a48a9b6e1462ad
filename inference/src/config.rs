//! The server's configuration (`nudge serve --config nudge.toml`, flags and environment on
//! top), and [`Secret`], the type every key and token is held in so that `--print-config`,
//! `Debug` and logs never show one.
use crate::batcher::BatcherConfig;
use crate::conversations::StrategyConfig;
use crate::decide::DecisionsConfig;
use crate::service::Limits;
use nudge_model::BackendKind;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A key or token. Shown as `<redacted>` by `Debug`, `Display` and serialisation; only
/// [`Secret::expose`] gives the value, at the one place that uses it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The text to show instead of a secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { Self::REDACTED })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { Self::REDACTED })
    }
}

/// TLS for both gRPC listeners (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Everything `nudge serve` needs. Defaults serve `models/bundles/default` on loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The data listener: Nlu, Decisions, health, reflection.
    pub grpc_addr: SocketAddr,
    /// The admin listener: ModelAdmin, PolicyAdmin (and health). Loopback by default.
    pub admin_addr: SocketAddr,
    /// Prometheus `/metrics` over plain HTTP.
    pub metrics_addr: SocketAddr,
    /// Bundle directories; the first is the default model.
    pub bundles: Vec<PathBuf>,
    /// Where encoders run.
    pub device: BackendKind,
    /// ModelAdmin loads bundles only from under this directory.
    pub models_root: PathBuf,
    /// How texts are batched.
    pub batcher: BatcherConfig,
    /// Request limits.
    pub limits: Limits,
    /// Bearer token every service but health requires (`authorization: Bearer <token>`).
    /// Prefer `auth_token_file` or the `NUDGE_AUTH_TOKEN` environment variable.
    pub auth_token: Option<Secret>,
    /// File holding the bearer token (trailing whitespace ignored).
    pub auth_token_file: Option<PathBuf>,
    /// TLS on both gRPC listeners; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// Offer decisions and policy hot-loading; off unless configured.
    pub decisions: Option<DecisionsConfig>,
    /// Conversations: catalog, rules, guardrails (needs `decisions`).
    pub strategy: Option<StrategyConfig>,
    /// Several servers and an optimizer on NATS JetStream (needs `decisions`); absent, one
    /// machine with local logs.
    pub cluster: Option<nudge_cluster::ClusterConfig>,
    /// The operator console (needs `strategy`); absent, no console.
    pub console: Option<crate::console::ConsoleConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            bundles: vec![PathBuf::from("models/bundles/default")],
            device: BackendKind::Cpu,
            models_root: PathBuf::from("models"),
            batcher: BatcherConfig::default(),
            limits: Limits::default(),
            auth_token: None,
            auth_token_file: None,
            tls: None,
            decisions: None,
            strategy: None,
            cluster: None,
            console: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_or_printed_config() {
        let c = ServeConfig {
            auth_token: Some(Secret::new("tok-123456789")),
            decisions: Some(DecisionsConfig {
                customer_id_key: Secret::new("very-secret-key-0123456789"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let printed = toml::to_string(&c).unwrap();
        let debug = format!("{c:?}");
        for text in [&printed, &debug] {
            assert!(
                !text.contains("tok-123456789") && !text.contains("very-secret-key"),
                "{text}"
            );
            assert!(text.contains(Secret::REDACTED));
        }
        // Read back, a redacted key is too short to serve: it cannot pass for the real one.
        let back: ServeConfig = toml::from_str(&printed).unwrap();
        assert_eq!(back.decisions.unwrap().customer_id_key.expose(), Secret::REDACTED);
    }
}
