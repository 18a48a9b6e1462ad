//! Bearer-token authentication for every gRPC service but health (load balancers probe it
//! without credentials). The token is compared in constant time, so response timing does not
//! tell a caller how much of a guess was right.
use crate::config::Secret;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor; with no token configured it lets every call through.
#[derive(Clone, Default)]
pub struct BearerAuth {
    token: Option<Arc<Secret>>,
}

impl BearerAuth {
    /// Requires `token` (when given and non-empty).
    pub fn new(token: Option<Secret>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()).map(Arc::new),
        }
    }

    /// Whether calls need a token.
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "authorization: a valid `Bearer <token>` is required",
            ))
        }
    }
}
