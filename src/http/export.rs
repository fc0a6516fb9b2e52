//! Reading events back over HTTP, for SIEMs and cold storage: one
//! organisation's events a page at a time, in `seq` order, with a cursor.
//!
//! The cursor is the last `seq` of a page. Storage makes events visible in
//! `seq` order (one WAL writer publishes each group under one lock), so the
//! events any query sees are a prefix of the log: paging on while ingest goes
//! on returns every matching event exactly once, with no gaps.
//!
//! Queries run in a session scoped to the organisation, the tenant scope SQL
//! users get, through DataFrame expressions: no SQL text is built from a
//! request. This module never writes.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ArrayWriter;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionContext, col, lit};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::search::{self, Search};
use crate::query::{self, QueryConfig, Scope, SessionControls};
use crate::storage::Storage;

/// Events per page when the request does not say.
pub const DEFAULT_PAGE_EVENTS: usize = 100;
/// The most events one page holds.
pub const MAX_PAGE_EVENTS: usize = 1000;

/// The query string of `GET /v1/orgs/{org}/events`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    /// Events at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Events before this time (RFC 3339).
    pub to: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub content: Option<String>,
    pub ip: Option<String>,
    /// Case-insensitive text in the action, content title or attributes.
    pub q: Option<String>,
    /// The search language of `search.rs` (`actor:alice created:>=2026-11-01`).
    pub search: Option<String>,
    pub limit: Option<usize>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

fn bad(message: String) -> ApiError {
    ApiError::BadParameter(message)
}

fn at(name: &str, text: &str) -> Result<Expr, ApiError> {
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| bad(format!("{name}={text:?} is not an RFC 3339 time: {e}")))?;
    Ok(lit(ScalarValue::TimestampMicrosecond(Some(time.timestamp_micros()), Some("UTC".into()))))
}

impl PageRequest {
    /// The request's `search`, read (an empty one when it has none).
    pub fn search(&self) -> Result<Search, ApiError> {
        self.search
            .as_deref()
            .map_or(Ok(Search::default()), |text| search::parse(text).map_err(|refused| bad(refused.to_string())))
    }
}

/// The condition a request asks for, after its cursor, with its search
/// (read by [`PageRequest::search`], its content ids as stored).
fn condition(request: &PageRequest, search: &Search) -> Result<Expr, ApiError> {
    let after: i64 = match &request.cursor {
        Some(cursor) => cursor.parse().map_err(|_| bad(format!("cursor={cursor:?} is not a cursor of this API")))?,
        None => 0,
    };
    let mut condition = col("seq").gt(lit(after));
    if let Some(from) = &request.from {
        condition = condition.and(col("time").gt_eq(at("from", from)?));
    }
    if let Some(to) = &request.to {
        condition = condition.and(col("time").lt(at("to", to)?));
    }
    for (column, value) in [
        ("actor_id", &request.actor),
        ("action", &request.action),
        ("content_id", &request.content),
        ("source_ip", &request.ip),
    ] {
        if let Some(value) = value {
            condition = condition.and(col(column).eq(lit(value.as_str())));
        }
    }
    if let Some(q) = &request.q {
        condition = condition.and(search::text_anywhere(q));
    }
    if let Some(searched) = search.condition() {
        condition = condition.and(searched);
    }
    Ok(condition)
}

/// One page of `org`'s events: `{"events": [...], "next_cursor": ..., "more":
/// ...}`. `next_cursor` continues after this page (after the request's own
/// cursor when the page is empty), so a poller keeps it and asks again
/// later; `more` says whether the page was full.
pub async fn page(
    storage: &Storage,
    limits: &QueryConfig,
    org: &str,
    request: &PageRequest,
    search: &Search,
) -> Result<Value, ApiError> {
    let limit = request.limit.unwrap_or(DEFAULT_PAGE_EVENTS);
    if !(1..=MAX_PAGE_EVENTS).contains(&limit) {
        return Err(bad(format!("limit={limit} is not between 1 and {MAX_PAGE_EVENTS}")));
    }
    let events = events(storage, limits, org, condition(request, search)?, limit).await?;
    let next_cursor = match events.last() {
        Some(last) => last["seq"].as_i64().expect("every event has a seq").to_string(),
        None => request.cursor.clone().unwrap_or_else(|| "0".to_string()),
    };
    Ok(json!({ "events": events, "next_cursor": next_cursor, "more": events.len() == limit }))
}

/// The event of `org` with id `id` that also holds `within`, if there is one.
pub async fn one(
    storage: &Storage,
    limits: &QueryConfig,
    org: &str,
    id: &str,
    within: Option<Expr>,
) -> Result<Option<Value>, ApiError> {
    let condition = match within {
        Some(within) => col("id").eq(lit(id)).and(within),
        None => col("id").eq(lit(id)),
    };
    Ok(events(storage, limits, org, condition, 1).await?.pop())
}

/// Up to `limit` of `org`'s events matching `condition`, in `seq` order, as
/// JSON objects.
async fn events(
    storage: &Storage,
    limits: &QueryConfig,
    org: &str,
    condition: Expr,
    limit: usize,
) -> Result<Vec<Value>, ApiError> {
    let failed = ApiError::Query;
    let table = scoped_events(storage, limits, Scope::Org(org.to_string())).await?;
    let batches = table
        .filter(condition)
        .map_err(failed)?
        .sort(vec![col("seq").sort(true, false)])
        .map_err(failed)?
        .limit(0, Some(limit))
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    as_json(&batches)
}

/// `audit_events` as a session scoped to `scope` reads it: the tenant
/// barrier SQL users have, below every filter a caller adds.
pub async fn scoped_events(storage: &Storage, limits: &QueryConfig, scope: Scope) -> Result<DataFrame, ApiError> {
    scoped_session(storage, limits, scope)?.table(query::TABLE).await.map_err(ApiError::Query)
}

/// A session scoped to `scope`, under the server's limits: every plan it
/// makes ends at the statement timeout, the row limit and its memory.
pub fn scoped_session(storage: &Storage, limits: &QueryConfig, scope: Scope) -> Result<SessionContext, ApiError> {
    let controls = SessionControls::new(limits);
    controls.scope.set(scope).expect("a fresh session has no scope yet");
    query::new_scoped_session_context(storage, limits, controls).map_err(ApiError::Query)
}

/// Rows as JSON objects, `attributes` as the object it was sent as.
pub fn as_json(batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut text = Vec::new();
    let mut writer = ArrayWriter::new(&mut text);
    for batch in batches {
        writer.write(batch).map_err(|e| ApiError::Query(e.into()))?;
    }
    writer.finish().map_err(|e| ApiError::Query(e.into()))?;
    let mut events: Vec<Value> =
        if text.is_empty() { Vec::new() } else { serde_json::from_slice(&text).expect("arrow writes JSON") };
    for event in &mut events {
        // `attributes` is stored as JSON text; it goes out as the object it was.
        if let Some(Value::String(attributes)) = event.get("attributes")
            && let Ok(object) = serde_json::from_str::<Value>(attributes)
        {
            event["attributes"] = object;
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_are_named() {
        let request = PageRequest { from: Some("yesterday".into()), ..Default::default() };
        assert!(condition(&request, &Search::default()).unwrap_err().to_string().contains("from=\"yesterday\""));
        let request = PageRequest { cursor: Some("abc".into()), ..Default::default() };
        assert!(condition(&request, &Search::default()).unwrap_err().to_string().contains("cursor=\"abc\""));
    }
}
