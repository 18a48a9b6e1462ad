//! NLU model versions in the console: the bundles under the models root (each a version of a
//! served model: a fine-tune, new heads, a new threshold), which one each model serves, and
//! "serve this bundle" for editors — a new version or a rollback to an older one, through the
//! same checks as `ModelAdmin.ReloadModel` (checksums, shapes, a probe pass; in a cluster every
//! server follows), so a bundle that fails them is refused and the old one keeps serving.
use super::{ApiError, Shared};
use crate::error::RequestError;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use nudge_proto::v1 as pb;
use serde::Deserialize;

pub(super) async fn models(State(c): Shared, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let admin = c.models.clone();
    let bundles = tokio::task::spawn_blocking(move || admin.bundles())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let served = c.models.served();
    Ok(Json(serde_json::json!({"served": served, "bundles": bundles})))
}

#[derive(Deserialize)]
pub(super) struct ServeBundle {
    /// The served model (empty: the default).
    #[serde(default)]
    model: String,
    /// The bundle directory, as listed.
    dir: String,
}

pub(super) async fn serve(
    State(c): Shared,
    headers: HeaderMap,
    Json(req): Json<ServeBundle>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    if req.dir.is_empty() {
        return Err(ApiError::invalid("dir", "name the bundle directory"));
    }
    let r = c
        .models
        .reload(pb::ReloadModelRequest {
            model: req.model.clone(),
            bundle_dir: req.dir.clone(),
        })
        .await
        .map_err(|e| match e {
            RequestError::UnknownModel(m) => ApiError::invalid("model", format!("no served model `{m}`")),
            RequestError::InvalidArgument { reason, .. } => ApiError::invalid("dir", reason),
            e => ApiError::invalid("dir", e.to_string()),
        })?;
    c.record(
        &s.user,
        s.role.name(),
        "model.serve",
        &format!("model {}", r.model),
        r.version.clone(),
        format!("was {} ({})", r.previous_version, r.bundle_dir),
    )
    .await;
    Ok(Json(serde_json::json!({
        "model": r.model,
        "version": r.version,
        "previous": r.previous_version,
        "load_ms": r.load_ms,
    })))
}
