//! The saved-query runner: the compliance SQL of `sql/` (compiled into the
//! binary, see [`crate::reports`]) as forms, one field per parameter its
//! header declares, each checked by kind before anything runs; the result
//! as a table or a CSV / JSONL download.
//!
//! A report runs as the reader's tenant-scoped session, read-only, under
//! the server's statement timeout; a reader who leaves the page (or presses
//! Cancel) drops the request, and with it the running statement. Only the
//! saved files run: a value is a checked literal in them, never SQL text.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::html::{Page, esc, link, message};
use super::query::MAX_PAGE_ROWS;
use super::session::Reader;
use super::views::on_queries;
use super::{ClientAddress, UiError, Visit, signed_in};
use crate::client::{self, Format};
use crate::http::export::{as_json, scoped_session};
use crate::http::{Api, ApiError};
use crate::reports::{self, Declared, ParamKind};

/// A parameter's header words as the form shows them: without psql's
/// quoting, which the form does itself (`the actor_id, quoted: -v
/// actor="'acme-u007'"` is "the actor_id").
fn for_the_form(about: &str) -> String {
    let about = about.split(", quoted: -v").next().unwrap_or(about);
    about.replace("quoted ", "")
}

/// The form of one saved report, with what was typed and any refusal next
/// to its field.
fn form(name: &str, values: &BTreeMap<String, String>, refused: Option<(&str, &str)>) -> String {
    let script = reports::saved(name).expect("a saved report");
    let mut html = format!(
        "<form method=\"get\" action=\"/ui/saved/{name}\" class=\"saved\" aria-labelledby=\"report-{name}\">\
         <h2 id=\"report-{name}\">{name}</h2><p>{}</p><div class=\"controls\">",
        esc(&reports::purpose(script))
    );
    for Declared { name: param, optional, kind, about } in reports::declared(script) {
        let id = format!("{name}-{param}");
        let value = values.get(&param).map_or("", String::as_str);
        let error = refused.filter(|(p, _)| *p == param);
        // The kind shapes the field; the server checks the value all the same.
        let typed = match kind {
            ParamKind::Number => " type=\"number\" step=\"1\"",
            ParamKind::Timestamp => " placeholder=\"2026-11-01\"",
            ParamKind::Interval => " placeholder=\"90 days\"",
            ParamKind::Text => "",
        };
        let described = match error {
            Some(_) => format!("{id}-about {id}-error\" aria-invalid=\"true"),
            None => format!("{id}-about"),
        };
        let _ = write!(
            html,
            "<label for=\"{id}\">{param}{}</label><input id=\"{id}\" name=\"{param}\" value=\"{}\"{typed}{} \
             aria-describedby=\"{described}\"><p id=\"{id}-about\" class=\"help\">{}</p>",
            if optional { " (optional)" } else { "" },
            esc(value),
            if optional { "" } else { " required" },
            esc(&for_the_form(&about)),
        );
        if let Some((_, reason)) = error {
            let _ = write!(html, "<p class=\"error\" role=\"alert\" id=\"{id}-error\">{}</p>", esc(reason));
        }
    }
    let _ = write!(
        html,
        "<label for=\"format-{name}\">Result as</label><select id=\"format-{name}\" name=\"format\">\
         <option value=\"html\">a table</option><option value=\"csv\">a CSV download</option>\
         <option value=\"jsonl\">a JSONL download</option></select>\
         <button type=\"submit\">Run</button></div></form>"
    );
    html
}

fn page(reader: &Reader, title: &str, status: StatusCode, body: String) -> Response {
    Page { title: title.into(), reader: Some(reader), current: "/ui/saved", body, frame_ancestors: None }.render(status)
}

/// `GET /ui/saved`: every saved report as a form.
pub async fn list(State(app): State<Api>, headers: HeaderMap) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let mut body = message(
        "Compliance queries kept with auditlake (sql/). Each runs over what you may read, under the server's \
         statement timeout.",
        false,
    );
    for (name, _) in reports::SAVED {
        body.push_str(&form(name, &BTreeMap::new(), None));
    }
    Ok(page(&reader, "Saved queries", StatusCode::OK, body))
}

/// `GET /ui/saved/{name}?param=value&format=`: runs one saved report.
pub async fn run(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(mut values): Query<BTreeMap<String, String>>,
) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let script = reports::saved(&name).map_err(|e| UiError::BadParameter(e.to_string()))?;
    let format = values.remove("format").unwrap_or_else(|| "html".into());
    let format = match format.as_str() {
        "html" => None,
        "csv" => Some(Format::Csv),
        "jsonl" => Some(Format::Jsonl),
        other => return Err(UiError::BadParameter(format!("format={other:?}: a result is html, csv or jsonl"))),
    };
    values.retain(|_, value| !value.trim().is_empty());
    let visit = Visit::of(&reader, &headers, address);
    let recorded = json!({ "report": name, "parameters": values, "format": format.map_or("html", |f| match f {
        Format::Csv => "csv",
        _ => "jsonl",
    }) });

    // Every value checked by its declared kind, every required one given:
    // a refusal is shown next to its field, and nothing runs.
    let mut variables = BTreeMap::new();
    for Declared { name: param, optional, kind, .. } in reports::declared(script) {
        let refused = match values.get(&param) {
            None if optional => continue,
            None => Err("this parameter is required".to_string()),
            Some(value) => kind.literal(value),
        };
        match refused {
            Ok(literal) => _ = variables.insert(param, literal),
            Err(reason) => {
                let error = UiError::BadParameter(format!("{param}: {reason}"));
                visit.record(&app.ui.access_log, "saved_query", recorded, Some(&error));
                let body = form(&name, &values, Some((&param, &reason)));
                return Ok(page(&reader, &format!("Saved query {name}"), StatusCode::BAD_REQUEST, body));
            }
        }
    }
    let sql = reports::render(script, &variables).map_err(|e| UiError::BadParameter(e.to_string()))?;
    let result = run_sql(&app, &reader, sql).await;
    let batches = match result {
        Ok(batches) => batches,
        Err(error) => {
            visit.record(&app.ui.access_log, "saved_query", recorded, Some(&error));
            let body = message(&error.to_string(), true) + &form(&name, &values, None);
            return Ok(page(&reader, &format!("Saved query {name}"), error.status(), body));
        }
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut attributes = recorded;
    attributes["rows"] = json!(rows);
    visit.record(&app.ui.access_log, "saved_query", attributes, None);

    if let Some(format) = format {
        let (extension, content_type) = match format {
            Format::Csv => ("csv", "text/csv; charset=utf-8"),
            _ => ("jsonl", "application/x-ndjson"),
        };
        let bytes = client::render(&batches, format).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut response = (StatusCode::OK, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let disposition = format!("attachment; filename=\"{name}.{extension}\"");
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("a file name"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    let shown: Vec<_> = as_json(&batches)?.into_iter().take(MAX_PAGE_ROWS).collect();
    let columns: Vec<String> =
        batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    let mut body = format!("<p class=\"window\">{rows} rows.");
    if rows > MAX_PAGE_ROWS {
        let _ = write!(body, " The first {MAX_PAGE_ROWS} are shown; download the CSV or JSONL for all of them.");
    }
    let mut download: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    download.push(("format", "csv"));
    let _ = write!(body, " <a href=\"{}\">Download CSV</a>", esc(&link(&format!("/ui/saved/{name}"), &download)));
    download.pop();
    download.push(("format", "jsonl"));
    let _ = write!(body, " <a href=\"{}\">Download JSONL</a></p>", esc(&link(&format!("/ui/saved/{name}"), &download)));
    let _ = write!(
        body,
        "<div class=\"table-wrap\" tabindex=\"0\" role=\"region\" aria-label=\"Result of {name}\"><table>\
         <caption>Result of {name}</caption><thead><tr>"
    );
    for column in &columns {
        let _ = write!(body, "<th scope=\"col\">{}</th>", esc(column));
    }
    body.push_str("</tr></thead><tbody>");
    for row in &shown {
        body.push_str("<tr class=\"result\">");
        for column in &columns {
            let cell = match &row[column] {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            let _ = write!(body, "<td>{}</td>", esc(&cell));
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&form(&name, &values, None));
    Ok(page(&reader, &format!("Saved query {name}"), StatusCode::OK, body))
}

/// Runs `sql` read-only in the reader's scope; its plan ends at the
/// statement timeout as every plan of a scoped session does.
async fn run_sql(
    app: &Api,
    reader: &Reader,
    sql: String,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, UiError> {
    client::check_read_only(&sql).map_err(|e| UiError::BadParameter(e.to_string()))?;
    let (storage, limits, scope) = (app.storage.clone(), app.limits.clone(), reader.scope());
    on_queries(app, async move {
        let session = scoped_session(&storage, &limits, scope)?;
        let run = async { session.sql_with_options(&sql, client::read_only()).await?.collect().await };
        run.await.map_err(ApiError::Query)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_says_nothing_of_psql_quoting() {
        assert_eq!(for_the_form("the actor_id, quoted: -v actor=\"'acme-u007'\""), "the actor_id");
        assert_eq!(
            for_the_form("optional lower bound, quoted timestamp; default 7 days ago"),
            "optional lower bound, timestamp; default 7 days ago"
        );
    }
}
