//! What operators look at without changing: the catalog and its offers as the engine prices
//! them, the conversations kept now (their texts masked when they were kept; ids masked again
//! here, since bots sometimes put a phone number in them), and the policy versions with a
//! rollback — the one change here, through the same path as `PolicyAdmin.Rollback`, so in a
//! cluster every server follows it.
use super::{now_ms, ApiError, Shared};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use nudge_strategy::catalog::OfferKind;
use nudge_strategy::conversation::Conversation;
use nudge_strategy::pii::mask;
use serde::Deserialize;

/// What an offer does, in words an operator reads.
fn describe(k: &OfferKind) -> String {
    match k {
        OfferKind::Coupon { amount, min_spend } => format!("{amount} off a cart of at least {min_spend}"),
        OfferKind::SpendSave {
            threshold,
            save,
            repeat,
        } => format!(
            "{save} off for every {threshold} spent{}",
            if *repeat { "" } else { " (once)" }
        ),
        OfferKind::PercentOff {
            basis_points,
            category,
            max_discount,
        } => format!(
            "{}.{:02} % off{}{}",
            basis_points / 100,
            basis_points % 100,
            category.as_ref().map(|c| format!(" {c}")).unwrap_or_default(),
            max_discount.map(|m| format!(", at most {m}")).unwrap_or_default()
        ),
        OfferKind::Bundle { items, price } => format!("{} together for {price}", items.join(" + ")),
        OfferKind::Upgrade { from, to, extra } => format!("{from} → {to} for {extra} more"),
        OfferKind::Warranty {
            sku,
            price,
            for_category,
        } => format!("{sku} for {price}, for {for_category}"),
    }
}

#[derive(Deserialize)]
pub(super) struct CatalogQuery {
    /// Products whose SKU, names or category contain this.
    #[serde(default)]
    q: String,
}

pub(super) async fn catalog(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<CatalogQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let s = c.conversations.strategy();
    let now = (now_ms() / 1000) as i64;
    let offers: Vec<_> = s
        .catalog
        .offers()
        .iter()
        .map(|o| {
            serde_json::json!({
                "id": o.id,
                "kind": o.kind.name(),
                "what": describe(&o.kind),
                "title_zh": o.title_zh,
                "title_en": o.title_en,
                "channels": o.channels.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "valid_now": o.valid_from.is_none_or(|t| now >= t) && o.valid_to.is_none_or(|t| now <= t),
                "valid_from": o.valid_from,
                "valid_to": o.valid_to,
                "budget": o.budget,
                "stacks_with": o.stacks_with,
            })
        })
        .collect();
    let needle = q.q.to_lowercase();
    let matching: Vec<_> = s
        .catalog
        .products()
        .iter()
        .filter(|p| {
            needle.is_empty()
                || [&p.sku, &p.name_zh, &p.name_en, &p.category]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&needle))
        })
        .collect();
    let products: Vec<_> = matching
        .iter()
        .take(200)
        .map(|p| {
            serde_json::json!({
                "sku": p.sku,
                "name_zh": p.name_zh,
                "name_en": p.name_en,
                "category": p.category,
                "price": p.price.to_string(),
                "margin": p.margin.to_string(),
                "stock": p.stock,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "version": s.catalog.version(),
        "rules_version": s.rules.version(),
        "offers": offers,
        "products": products,
        "matching": matching.len(),
        "total": s.catalog.products().len(),
    })))
}

fn summary(conv: &Conversation) -> serde_json::Value {
    serde_json::json!({
        "id": mask(&conv.id),
        "customer": conv.customer.chars().take(12).collect::<String>(),
        "channel": conv.channel.name(),
        "stage": conv.stage.name(),
        "turns": conv.turns,
        "intents": conv.intents,
        "offers": conv.offers.iter().map(|o| serde_json::json!({"offer": o.offer, "status": o.status, "turn": o.turn})).collect::<Vec<_>>(),
        "last_active_ms": conv.last_active_ms,
    })
}

pub(super) async fn conversations(State(c): Shared, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let list: Vec<_> = c.conversations.conversations(200).iter().map(summary).collect();
    Ok(Json(serde_json::json!({"conversations": list})))
}

pub(super) async fn conversation(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    // The list shows masked ids; an operator may also paste the real one.
    let conv = c
        .conversations
        .conversation(&id, |v| mask(&v.id) == id)
        .ok_or_else(|| ApiError::NotFound(format!("no conversation `{}` is kept now", mask(&id))))?;
    let mut v = summary(&conv);
    v["recent"] = serde_json::json!(conv
        .recent
        .iter()
        .map(|t| serde_json::json!({
            "turn": t.turn,
            // Masked when kept; masked again in case a rule of the masker changed since.
            "text": mask(&t.text),
            "intent": t.intent,
            "sentiment": t.sentiment,
            "negative": t.negative,
        }))
        .collect::<Vec<_>>());
    v["summary"] = serde_json::json!(mask(&conv.summary()));
    v["complained"] = serde_json::json!(conv.complained);
    v["asked_for_human"] = serde_json::json!(conv.asked_for_human);
    Ok(Json(v))
}

pub(super) async fn policies(State(c): Shared, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let (versions, serving) = c.policies.as_ref().map(|p| p.versions()).unwrap_or_default();
    Ok(Json(serde_json::json!({"versions": versions, "serving": serving})))
}

#[derive(Deserialize)]
pub(super) struct PolicyRollback {
    version: String,
}

pub(super) async fn rollback_policy(
    State(c): Shared,
    headers: HeaderMap,
    Json(req): Json<PolicyRollback>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = c.session(&headers)?;
    s.may_edit()?;
    let admin = c
        .policies
        .as_ref()
        .ok_or_else(|| ApiError::invalid("version", "this server has no [decisions]: no policies"))?;
    let previous = admin
        .serve(&req.version)
        .await
        .map_err(|e| ApiError::invalid("version", e.to_string()))?;
    c.record(
        &s.user,
        s.role.name(),
        "policy.rollback",
        "policy",
        req.version.clone(),
        format!("was {previous}"),
    )
    .await;
    Ok(Json(serde_json::json!({"serving": req.version, "previous": previous})))
}
