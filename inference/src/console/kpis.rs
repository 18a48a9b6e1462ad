//! The KPI endpoints: totals and a time series of one grouping, as JSON for the page's charts
//! and as CSV for spreadsheets — the same numbers `/metrics` counts.
use super::{blocking, now_ms, ApiError, Shared};
use crate::kpi::{Counts, Dimension};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct KpiQuery {
    /// channel, intent, offer, policy or arm.
    #[serde(default = "default_group")]
    group: String,
    /// How far back, in hours (at most what the server keeps).
    #[serde(default = "default_hours")]
    hours: u64,
    /// Width of a point of the series, in minutes (default: 48 points).
    #[serde(default)]
    step_minutes: u64,
}

fn default_group() -> String {
    "channel".into()
}

fn default_hours() -> u64 {
    24
}

struct Window {
    group: Dimension,
    from: u64,
    to: u64,
    step: u64,
}

fn window(q: &KpiQuery) -> Result<Window, ApiError> {
    let group = Dimension::from_name(&q.group)
        .ok_or_else(|| ApiError::invalid("group", "one of channel, intent, offer, policy, arm"))?;
    if !(1..=24 * 90).contains(&q.hours) {
        return Err(ApiError::invalid("hours", "1 to 2160"));
    }
    let span = q.hours * 3_600_000;
    let step = if q.step_minutes == 0 {
        (span / 48).max(60_000)
    } else {
        q.step_minutes.clamp(1, 24 * 60) * 60_000
    };
    let to = now_ms() + 1;
    Ok(Window {
        group,
        from: to.saturating_sub(span),
        to,
        step,
    })
}

pub(super) async fn kpis(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<KpiQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.session(&headers)?;
    let w = window(&q)?;
    let c2 = c.clone();
    blocking(move || {
        let k = c2.conversations.kpis();
        let series: Vec<_> = k
            .series(w.group, w.from, w.to, w.step)
            .into_iter()
            .map(|(t, key, counts)| serde_json::json!({"t": t, "key": key, "counts": counts, "rates": counts.rates()}))
            .collect();
        Ok(Json(serde_json::json!({
            "from": w.from,
            "to": w.to,
            "step": w.step,
            "totals": k.totals(w.group, w.from, w.to),
            "series": series,
        })))
    })
    .await
}

/// One CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The header of the CSV export.
pub(super) const CSV_HEADER: &str = "start_ms,group,key,turns,conversations,resolved,handoffs,offers,shown,clicks,add_to_cart,conversions,declines,opt_outs,complaints,revenue,mean_response_ms,resolution_rate,handoff_rate,offer_rate,click_rate,accept_rate,conversion_rate,order_value,complaint_rate,opt_out_rate";

fn csv_row(t: u64, group: &str, key: &str, c: &Counts) -> String {
    let r = c.rates();
    format!(
        "{t},{group},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{:.3},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.2},{:.6},{:.6}\n",
        field(key),
        c.turns,
        c.conversations,
        c.resolved,
        c.handoffs,
        c.offers,
        c.shown,
        c.clicks,
        c.carts,
        c.conversions,
        c.declines,
        c.opt_outs,
        c.complaints,
        c.revenue_cents as f64 / 100.0,
        r.mean_response_ms,
        r.resolution_rate,
        r.handoff_rate,
        r.offer_rate,
        r.click_rate,
        r.accept_rate,
        r.conversion_rate,
        r.order_value,
        r.complaint_rate,
        r.opt_out_rate,
    )
}

pub(super) async fn kpis_csv(
    State(c): Shared,
    headers: HeaderMap,
    Query(q): Query<KpiQuery>,
) -> Result<Response, ApiError> {
    c.session(&headers)?;
    let w = window(&q)?;
    let group = q.group.clone();
    let c2 = c.clone();
    let body = blocking(move || {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for (t, key, counts) in c2.conversations.kpis().series(w.group, w.from, w.to, w.step) {
            out.push_str(&csv_row(t, &group, &key, &counts));
        }
        Ok(out)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"nudge-kpis-{}.csv\"", q.group),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_row_has_every_column_and_quotes_what_it_must() {
        let c = Counts {
            turns: 4,
            offers: 2,
            conversions: 1,
            revenue_cents: 12_345,
            ..Default::default()
        };
        let row = csv_row(60_000, "offer", "a,b", &c);
        assert_eq!(
            row.trim_end().split(',').count(),
            CSV_HEADER.split(',').count() + 1,
            "{row}"
        );
        assert!(row.starts_with("60000,offer,\"a,b\",4,0,0,0,2,"), "{row}");
        assert!(row.contains(",123.45,"), "{row}");
    }
}
