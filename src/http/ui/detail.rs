//! One event in full: every column, its attributes as JSON to copy, and
//! its integrity proof, checked against this server's key as the page is
//! made (verified, failed and why, or not yet sealed). Another
//! organisation's event is "not found", as a missing one is.

use std::fmt::Write;
use std::time::Instant;

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use datafusion::prelude::{col, lit};
use serde_json::json;

use super::html::{Page, esc, message, time};
use super::query::{self, PAGE_COLUMNS};
use super::session::Reader;
use super::views::{on_queries, stored_content_ids, text};
use super::{ClientAddress, UiError, Visit, signed_in};
use crate::http::export::scoped_events;
use crate::http::search::Search;
use crate::http::{Api, ApiError};
use crate::integrity::Inclusion;
use crate::query::Scope;

/// `GET /ui/event/{org}/{id}`: every column of one event, its attributes,
/// and its integrity proof.
pub async fn detail(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let visit = Visit::of(&reader, &headers, address);
    let started = Instant::now();
    let result = detail_body(&app, &reader, &org, &id).await;
    let attributes = json!({ "org": org, "id": id, "duration_ms": started.elapsed().as_secs_f64() * 1000.0 });
    match result {
        Ok(body) => {
            visit.record(&app.ui.access_log, "event", attributes, None);
            Ok(Page { title: "Event".into(), reader: Some(&reader), current: "", body, frame_ancestors: None }
                .render(StatusCode::OK))
        }
        Err(error) => {
            visit.record(&app.ui.access_log, "event", attributes, Some(&error));
            Err(error)
        }
    }
}

async fn detail_body(app: &Api, reader: &Reader, org: &str, id: &str) -> Result<String, UiError> {
    // Another organisation's event is "not found", as a missing one is.
    if matches!(reader.scope(), Scope::Org(own) if own != org) {
        return Err(UiError::NotFound);
    }
    let mut within = Search { terms: reader.narrowing() };
    stored_content_ids(app, &reader.scope(), &mut within)?;
    let condition = col("org_id").eq(lit(org)).and(col("id").eq(lit(id)));
    let condition = match within.condition() {
        Some(narrowing) => condition.and(narrowing),
        None => condition,
    };
    let table_frame = scoped_events(&app.storage, &app.limits, reader.scope()).await?;
    let mut columns = PAGE_COLUMNS.to_vec();
    columns.push("attributes");
    let (events, _) =
        on_queries(app, async move { query::page(table_frame, condition, None, true, 1, &columns).await }).await?;
    let event = events.into_iter().next().ok_or(UiError::NotFound)?;
    let mut body = String::from("<dl class=\"event\">");
    let _ = write!(body, "<dt>time</dt><dd>{}</dd>", time(event["time_us"].as_i64().unwrap_or_default()));
    let _ = write!(body, "<dt>seq</dt><dd>{}</dd>", event["seq"]);
    for column in PAGE_COLUMNS {
        let _ = write!(body, "<dt>{column}</dt><dd>{}</dd>", esc(text(&event, column)));
    }
    body.push_str("</dl><h2 id=\"attributes\">Attributes</h2>");
    let attributes = serde_json::to_string_pretty(&event["attributes"]).unwrap_or_default();
    let _ = write!(
        body,
        "<pre id=\"attributes-json\" tabindex=\"0\" aria-labelledby=\"attributes\">{}</pre>\
         <button type=\"button\" class=\"copy\" data-copy=\"attributes-json\">Copy attributes</button>",
        esc(&attributes)
    );
    let seq = event["seq"].as_u64().ok_or_else(|| ApiError::Internal("an event without a seq".into()))?;
    body.push_str(&proof_section(app, seq).await?);
    Ok(body)
}

/// The event's integrity proof, checked: verified, failed (and why), or
/// not yet sealed.
async fn proof_section(app: &Api, seq: u64) -> Result<String, UiError> {
    let mut html = String::from("<section aria-labelledby=\"proof\"><h2 id=\"proof\">Integrity proof</h2>");
    let Some(integrity) = app.integrity.clone() else {
        html.push_str(&message(
            "This server does not checkpoint events (it runs without --signing-key), so it has no proofs.",
            false,
        ));
        return Ok(html + "</section>");
    };
    let storage = app.storage.clone();
    let inclusion = tokio::task::spawn_blocking(move || integrity.check_inclusion(&storage, seq))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (status, class, said, proof) = match inclusion {
        Inclusion::Verified(proof) => {
            let said = format!(
                "Leaf {} of {} under checkpoint {} (seqs {} to {}), whose signature by this server's key holds.",
                proof["leaf_index"],
                proof["tree_size"],
                proof["checkpoint"]["index"],
                proof["checkpoint"]["first_seq"],
                proof["checkpoint"]["last_seq"]
            );
            ("verified", "proof-verified", said, Some(proof))
        }
        Inclusion::Failed { reason, proof } => ("failed", "proof-failed", reason, proof),
        Inclusion::NotSealed => (
            "not yet sealed",
            "proof-pending",
            "No checkpoint covers this event yet; it will once sealed.".into(),
            None,
        ),
    };
    let _ = write!(
        html,
        "<p><span class=\"{class}\" id=\"proof-status\" role=\"status\">{status}</span>: {}</p>",
        esc(&said)
    );
    if let Some(proof) = proof {
        let _ = write!(
            html,
            "<dl class=\"event\"><dt>segment</dt><dd>{}</dd><dt>leaf hash</dt><dd><code>{}</code></dd>\
             <dt>signed root</dt><dd><code>{}</code></dd><dt>signed at</dt><dd>{}</dd><dt>public key</dt>\
             <dd><code>{}</code></dd><dt>inclusion path</dt><dd><ol class=\"path\">",
            esc(proof["segment"].as_str().unwrap_or("")),
            esc(proof["leaf_hash"].as_str().unwrap_or("")),
            esc(proof["checkpoint"]["root"].as_str().unwrap_or("")),
            esc(proof["checkpoint"]["written_at"].as_str().unwrap_or("")),
            esc(proof["checkpoint"]["public_key"].as_str().unwrap_or("")),
        );
        for hash in proof["path"].as_array().into_iter().flatten() {
            let _ = write!(html, "<li><code>{}</code></li>", esc(hash.as_str().unwrap_or("")));
        }
        html.push_str("</ol></dd></dl>");
    }
    Ok(html + "</section>")
}
