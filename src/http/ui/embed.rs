//! The embedded viewer: `/embed?token=` in an iframe of a SaaS vendor's
//! admin pages, showing one customer organisation its own events (as
//! Retraced's embedded viewer does).
//!
//! The vendor's backend asks for a viewer token (`POST
//! /v1/orgs/{org}/viewer-tokens`, with its read token) and puts it in the
//! iframe's URL. The page reads with that token only: the organisation and
//! narrowing it was signed with are terms of every search, so nothing typed
//! or put in the URL widens them. Only origins on the organisation's
//! allow-list (`embed_origins` of its policy) may frame it, said by
//! `frame-ancestors`; with none, no page may. When the token expires the
//! page says so and tells the host page with `postMessage` (ui.js), so that
//! it can fetch a new one. It has no cookie and no session: each request
//! carries the token, and the token's own request budget applies.

use std::time::Instant;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::html::{Page, esc, message};
use super::session::Reader;
use super::views::{Params, Surface, events_body, finish, params, search_form};
use super::{ClientAddress, UiError, Visit};
use crate::http::viewer::{ViewerClaims, ViewerError};
use crate::http::{Api, ApiError};

/// The `frame-ancestors` sources of `org`'s embedded viewer.
fn frame_ancestors(app: &Api, org: &str) -> String {
    match app.policies.of(org) {
        Ok(policy) if !policy.embed_origins.is_empty() => policy.embed_origins.join(" "),
        _ => "'none'".to_string(),
    }
}

fn page(title: &str, claims: Option<&ViewerClaims>, frame: String, (status, body): (StatusCode, String)) -> Response {
    let reader = claims.map(|claims| Reader::Viewer(claims.clone()));
    Page { title: title.into(), reader: reader.as_ref(), current: "", body, frame_ancestors: Some(frame) }
        .render(status)
}

/// `GET /embed?token=&q=`: the reduced events view for an iframe.
pub async fn embed(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    raw: Params,
) -> Response {
    let params = match params(raw) {
        Ok(params) => params,
        Err(error) => {
            return page("Audit log", None, "'none'".into(), (error.status(), message(&error.to_string(), true)));
        }
    };
    let token = params.token.clone().unwrap_or_default();
    let claims = match app.viewer.verify(token.trim(), chrono::Utc::now().timestamp_millis()) {
        Ok(claims) => claims,
        Err(ViewerError::Expired(claims)) => {
            // Still the organisation's to frame: the host page shows the
            // message, and hears of it.
            let body = format!(
                "{}<div id=\"viewer-expired\" data-expires-at=\"{}\" hidden></div>",
                message(
                    &format!("This view expired at {}. Reload the page to get a new one.", claims.expires_at()),
                    true
                ),
                esc(&claims.expires_at())
            );
            let frame = frame_ancestors(&app, &claims.org);
            return page("Audit log", None, frame, (StatusCode::UNAUTHORIZED, body));
        }
        Err(error) => {
            let error = UiError::Api(ApiError::Viewer(error));
            return page("Audit log", None, "'none'".into(), (error.status(), message(&error.to_string(), true)));
        }
    };
    let frame = frame_ancestors(&app, &claims.org);
    // The budget is the token's: its tag is as unique as the token.
    let budget = token.rsplit('.').next().unwrap_or_default();
    if let Err(refused) = app.ui.sessions.spend(budget, Instant::now()) {
        let error = UiError::from(refused);
        return page("Audit log", Some(&claims), frame, (error.status(), message(&error.to_string(), true)));
    }
    let reader = Reader::Viewer(claims.clone());
    let visit = Visit::of(&reader, &headers, address);
    let kept = vec![("token", token.as_str())];
    let mut top = search_form("/embed", &params.q, &kept, false);
    top.push_str(&format!(
        "<div id=\"viewer\" data-expires-ms=\"{}\" data-expires-at=\"{}\" hidden></div>",
        claims.expires_ms,
        esc(&claims.expires_at())
    ));
    let surface = Surface { path: "/embed", kept, embedded: true };
    let result = events_body(&app, &reader, &params, &surface).await;
    let shown = finish(&app, &visit, "embed", top, result, &params.q);
    page(&format!("Audit log of {}", claims.org), Some(&claims), frame, shown)
}
