//! The list views: events with their histogram and facets, one actor's
//! timeline, who touched a piece of content (one event in full is
//! `detail.rs`). Each reads the
//! reader's search from the URL (so a link shares it), runs its queries in
//! the reader's tenant scope, renders, and records what it showed.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use datafusion::logical_expr::Expr;
use datafusion::prelude::lit;
use serde::Deserialize;
use serde_json::{Value, json};

use super::html::{Page, esc, link, message, time};
use super::query::{self, Cursor, DEFAULT_PAGE_ROWS, HISTOGRAM_BUCKETS, MAX_PAGE_ROWS, PAGE_COLUMNS};
use super::session::Reader;
use super::{ClientAddress, UiError, Visit, signed_in};
use crate::http::export::scoped_events;
use crate::http::search::{self, Filter, Search, Term};
use crate::http::{Api, ApiError, as_stored};
use crate::policy::UgcMode;
use crate::query::Scope;

/// The window a search without `created:` looks at.
pub const DEFAULT_WINDOW_DAYS: i64 = 7;
const DAY_US: i64 = 24 * 60 * 60 * 1_000_000;
/// 0001-01-01 and 9999-12-31 UTC, in microseconds: the widest window shown.
const EARLIEST_SHOWN_US: i64 = -62_135_596_800_000_000;
const LATEST_SHOWN_US: i64 = 253_402_214_400_000_000;

/// A view's URL parameters. Unknown ones are ignored: none of them can
/// widen what the reader's scope allows.
#[derive(Debug, Default, Deserialize)]
pub struct ViewParams {
    #[serde(default)]
    pub q: String,
    /// The filter controls, folded into `q` (see [`folded`]).
    actor: Option<String>,
    action: Option<String>,
    ip: Option<String>,
    outcome: Option<String>,
    product: Option<String>,
    content: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// The content view's content id.
    id: Option<String>,
    /// Cursors: newest-first pages go on `before`, oldest-first on `after`.
    before: Option<String>,
    after: Option<String>,
    rows: Option<String>,
    /// The embedded viewer's viewer token.
    pub token: Option<String>,
}

pub type Params = Result<Query<ViewParams>, axum::extract::rejection::QueryRejection>;

pub fn params(params: Params) -> Result<ViewParams, UiError> {
    params.map(|Query(p)| p).map_err(|rejection| UiError::BadParameter(rejection.body_text()))
}

/// A search term for `value` of `qualifier`, quoted if it holds spaces.
fn qualified(qualifier: &str, value: &str) -> Result<String, UiError> {
    if value.contains('"') {
        return Err(UiError::BadParameter(format!("the {qualifier} filter cannot hold a double quote")));
    }
    Ok(match value.contains(char::is_whitespace) {
        true => format!("{qualifier}:\"{value}\""),
        false => format!("{qualifier}:{value}"),
    })
}

/// The filter controls' values written into the search text, so that the
/// URL holds one search and the box shows what runs. `None` when no
/// control was filled in.
fn folded(params: &ViewParams) -> Result<Option<String>, UiError> {
    let mut terms = Vec::new();
    for (qualifier, value) in [
        ("actor", &params.actor),
        ("action", &params.action),
        ("ip", &params.ip),
        ("outcome", &params.outcome),
        ("product", &params.product),
        ("content", &params.content),
    ] {
        if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            terms.push(qualified(qualifier, value)?);
        }
    }
    let day = |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    match (day(&params.from), day(&params.to)) {
        (None, None) => {}
        (from, to) => {
            terms.push(format!("created:{}..{}", from.unwrap_or_else(|| "*".into()), to.unwrap_or_else(|| "*".into())))
        }
    }
    if terms.is_empty() {
        return Ok(None);
    }
    let kept = params.q.trim();
    Ok(Some(if kept.is_empty() { terms.join(" ") } else { format!("{kept} {}", terms.join(" ")) }))
}

fn page_rows(params: &ViewParams) -> Result<usize, UiError> {
    let Some(rows) = params.rows.as_deref() else { return Ok(DEFAULT_PAGE_ROWS) };
    match rows.parse::<usize>() {
        Ok(rows) if (1..=MAX_PAGE_ROWS).contains(&rows) => Ok(rows),
        _ => Err(UiError::BadParameter(format!("rows={rows:?}: a page shows 1 to {MAX_PAGE_ROWS} rows"))),
    }
}

fn cursor(text: Option<&str>) -> Result<Option<Cursor>, UiError> {
    text.map(|text| Cursor::parse(text).ok_or_else(|| UiError::BadParameter(format!("{text:?} is not a page cursor"))))
        .transpose()
}

/// Where a list is shown: the web view, or the embedded viewer (whose
/// links carry its token, and lead nowhere a viewer token cannot go).
pub struct Surface<'a> {
    pub path: &'a str,
    /// Parameters every link of the page keeps.
    pub kept: Vec<(&'a str, &'a str)>,
    pub embedded: bool,
}

/// What a view investigates: the reader's search with its scope's
/// narrowing, the time window, and the condition they make.
struct Investigation {
    from_us: i64,
    to_us: i64,
    /// The window was not asked for: it is the last [`DEFAULT_WINDOW_DAYS`].
    defaulted: bool,
    condition: Expr,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The search `text` plus `extra` terms, as `reader` may run it.
fn investigation(app: &Api, reader: &Reader, text: &str, extra: Vec<Term>) -> Result<Investigation, UiError> {
    let mut search = search::parse(text)?;
    search.terms.extend(extra);
    search.terms.extend(reader.narrowing());
    let now = now_us();
    let windows: Vec<(Option<i64>, Option<i64>)> = search
        .terms
        .iter()
        .filter(|term| !term.negated)
        .filter_map(|term| match term.filter {
            Filter::Created { from_us, to_us } => Some((from_us, to_us)),
            _ => None,
        })
        .collect();
    let defaulted = windows.is_empty();
    // The window shown (and cut into histogram bars) stays within the years
    // 1 to 9999, so that its width is a number: a search may name dates
    // 260,000 years apart, and its condition keeps them as typed.
    let to_us = windows.iter().filter_map(|w| w.1).min().unwrap_or(now).clamp(EARLIEST_SHOWN_US, LATEST_SHOWN_US);
    let from_us = windows
        .iter()
        .filter_map(|w| w.0)
        .max()
        .unwrap_or(to_us.saturating_sub(DEFAULT_WINDOW_DAYS * DAY_US))
        .clamp(EARLIEST_SHOWN_US, LATEST_SHOWN_US);
    if defaulted {
        search.terms.push(Term { negated: false, filter: Filter::Created { from_us: Some(from_us), to_us: None } });
    }
    stored_content_ids(app, &reader.scope(), &mut search)?;
    let condition = search.condition().unwrap_or(lit(true));
    Ok(Investigation { from_us, to_us: to_us.max(from_us.saturating_add(1)), defaulted, condition })
}

/// Content ids as stored: hashed where the organisation hashes UGC. A
/// reader of every organisation looks for the id as each of them stores it.
pub fn stored_content_ids(app: &Api, scope: &Scope, search: &mut Search) -> Result<(), UiError> {
    match scope {
        Scope::Org(org) => as_stored(app, org, search.content_ids_mut())?,
        Scope::All => {
            let hashing: Vec<String> = app
                .policies
                .list()
                .map_err(ApiError::from)?
                .into_iter()
                .filter(|(_, policy)| policy.ugc == UgcMode::Hash)
                .map(|(org, _)| org)
                .collect();
            let Some(key) = app.policies.key().filter(|_| !hashing.is_empty()) else { return Ok(()) };
            for term in &mut search.terms {
                if let Filter::Content(content) = &term.filter {
                    let mut ids = vec![content.clone()];
                    ids.extend(hashing.iter().map(|org| key.hash(org, content)));
                    term.filter = Filter::ContentIn(ids);
                }
            }
        }
    }
    Ok(())
}

/// Runs `work` on the query runtime. A reader who leaves (the request is
/// dropped) stops it too: the query threads do not go on for no one.
pub async fn on_queries<T: Send + 'static>(
    app: &Api,
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, UiError> {
    struct StopOnDrop(tokio::task::AbortHandle);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = app.queries.spawn(work);
    let _stop = StopOnDrop(task.abort_handle());
    Ok(task.await.map_err(|e| ApiError::Internal(e.to_string()))??)
}

/// The search form, as every list view shows it.
pub fn search_form(action: &str, q: &str, hidden: &[(&str, &str)], controls: bool) -> String {
    let mut form = format!("<form role=\"search\" method=\"get\" action=\"{action}\" class=\"search\">");
    for (name, value) in hidden {
        let _ = write!(form, "<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value));
    }
    let _ = write!(
        form,
        "<div class=\"search-row\"><label for=\"q\">Search</label>\
         <input id=\"q\" name=\"q\" value=\"{}\" maxlength=\"{}\" aria-describedby=\"q-help\" spellcheck=\"false\">\
         <button type=\"submit\">Search</button></div>\
         <p id=\"q-help\" class=\"help\">Qualifiers: <code>actor:</code> <code>action:</code> (a <code>*</code> at the \
         end matches a prefix) <code>ip:</code> (address or CIDR) <code>outcome:</code> <code>product:</code> \
         <code>content:</code> <code>container:</code> <code>created:&gt;=2026-11-01</code> or \
         <code>created:A..B</code>; a leading <code>-</code> negates; other words are searched as text.</p>",
        esc(q),
        search::MAX_SEARCH_BYTES,
    );
    if controls {
        form.push_str("<details class=\"filters\"><summary>Filters</summary><div class=\"controls\">");
        for (name, label) in [
            ("actor", "Actor"),
            ("action", "Action"),
            ("ip", "IP or CIDR"),
            ("product", "Product"),
            ("content", "Content id"),
        ] {
            let _ = write!(form, "<label for=\"f-{name}\">{label}</label><input id=\"f-{name}\" name=\"{name}\">");
        }
        form.push_str(
            "<label for=\"f-outcome\">Outcome</label><select id=\"f-outcome\" name=\"outcome\">\
             <option value=\"\">any</option><option>success</option><option>failure</option></select>\
             <label for=\"f-from\">From (UTC day)</label><input id=\"f-from\" name=\"from\" type=\"date\">\
             <label for=\"f-to\">To (UTC day, inclusive)</label><input id=\"f-to\" name=\"to\" type=\"date\">\
             <button type=\"submit\">Add filters</button></div></details>",
        );
    }
    form.push_str("</form>");
    form
}

fn window_note(investigation: &Investigation) -> String {
    let mut note = format!("<p class=\"window\">From {} to {}", time(investigation.from_us), time(investigation.to_us));
    if investigation.defaulted {
        let _ = write!(note, " (the last {DEFAULT_WINDOW_DAYS} days; add <code>created:</code> to change)");
    }
    note.push_str(". <button type=\"button\" class=\"times\" aria-pressed=\"false\">Show local times</button></p>");
    note
}

/// The events-over-time histogram. Clicking a bar zooms to its span and
/// dragging across bars to the dragged span (ui.js); the search box's
/// `created:` does the same without a pointer.
fn histogram(path: &str, investigation: &Investigation, counts: &[i64]) -> String {
    let (from_us, to_us) = (investigation.from_us, investigation.to_us);
    let width_us = ((to_us - from_us) / HISTOGRAM_BUCKETS).max(1);
    let highest = counts.iter().copied().max().unwrap_or(0).max(1);
    let total: i64 = counts.iter().sum();
    let bar_width = 960.0 / counts.len() as f64;
    let mut svg = format!(
        "<figure class=\"histogram\"><svg viewBox=\"0 0 960 100\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-labelledby=\"histogram-caption\" data-from-us=\"{from_us}\" data-to-us=\"{to_us}\" \
         data-buckets=\"{}\" data-path=\"{}\">",
        counts.len(),
        esc(path)
    );
    for (i, &events) in counts.iter().enumerate() {
        let start = from_us + i as i64 * width_us;
        let height = events as f64 / highest as f64 * 96.0;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{events} events from {}</title></rect>",
            i as f64 * bar_width + 0.5,
            100.0 - height,
            (bar_width - 1.0).max(0.5),
            height.max(if events > 0 { 1.0 } else { 0.0 }),
            chrono::DateTime::from_timestamp_micros(start)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default(),
        );
    }
    let _ = write!(
        svg,
        "</svg><figcaption id=\"histogram-caption\">{total} events over time, in {} bars; click a bar or drag \
         across bars to zoom in.</figcaption></figure>",
        counts.len()
    );
    svg
}

/// A facet's list: each value a link adding it to the search.
fn facet(surface: &Surface<'_>, q: &str, qualifier: &str, title: &str, values: &[(String, i64)]) -> String {
    let mut list = format!("<section class=\"facet\" aria-label=\"{title}\"><h2>{title}</h2><ol>");
    for (value, events) in values {
        let item = match qualified(qualifier, value) {
            Ok(term) => {
                let q = if q.trim().is_empty() { term } else { format!("{} {term}", q.trim()) };
                let mut params = surface.kept.clone();
                params.push(("q", &q));
                format!("<a href=\"{}\">{}</a>", esc(&link(surface.path, &params)), esc(value))
            }
            Err(_) => esc(value),
        };
        let _ = write!(list, "<li>{item} <span class=\"count\">{events}</span></li>");
    }
    if values.is_empty() {
        list.push_str("<li>none</li>");
    }
    list.push_str("</ol></section>");
    list
}

pub fn text<'a>(event: &'a Value, column: &str) -> &'a str {
    event[column].as_str().unwrap_or("")
}

/// The events table. `timeline` adds the columns an actor's timeline needs.
fn table(events: &[Value], timeline: Option<&Firsts>, caption: &str, links: bool) -> String {
    let caption = esc(caption);
    let mut html = format!(
        "<div class=\"table-wrap\" tabindex=\"0\" role=\"region\" aria-label=\"{caption}\"><table><caption>{caption}</caption><thead><tr><th scope=\"col\">Time</th>"
    );
    if timeline.is_none() {
        html.push_str("<th scope=\"col\">Organisation</th><th scope=\"col\">Actor</th>");
    }
    html.push_str("<th scope=\"col\">Action</th><th scope=\"col\">Outcome</th><th scope=\"col\">Content</th><th scope=\"col\">IP</th>");
    if timeline.is_some() {
        html.push_str("<th scope=\"col\">Place</th><th scope=\"col\">Session</th><th scope=\"col\">User agent</th>");
    }
    html.push_str("</tr></thead><tbody>");
    for event in events {
        let (org, id) = (text(event, "org_id"), text(event, "id"));
        let time_us = event["time_us"].as_i64().unwrap_or_default();
        let linked = |href: String, shown: &str| match links {
            true => format!("<a href=\"{}\">{shown}</a>", esc(&href)),
            false => shown.to_string(),
        };
        let _ = write!(
            html,
            "<tr data-seq=\"{}\"><td>{}</td>",
            event["seq"],
            linked(format!("/ui/event/{}/{}", urlencode(org), urlencode(id)), &time(time_us))
        );
        if timeline.is_none() {
            let actor = text(event, "actor_id");
            let _ = write!(
                html,
                "<td>{}</td><td>{}</td>",
                esc(org),
                linked(link("/ui/timeline", &[("actor", actor)]), &esc(actor))
            );
        }
        let content = match (text(event, "content_title"), text(event, "content_id")) {
            ("", "") => String::new(),
            (title, id) => {
                let shown = if title.is_empty() { id } else { title };
                match id.is_empty() {
                    true => esc(shown),
                    false => linked(link("/ui/content", &[("id", id)]), &esc(shown)),
                }
            }
        };
        let _ = write!(
            html,
            "<td>{}</td><td class=\"outcome-{}\">{}</td><td>{content}</td>",
            esc(text(event, "action")),
            esc(text(event, "outcome")),
            esc(text(event, "outcome")),
        );
        let ip = text(event, "source_ip");
        match timeline {
            None => {
                let _ = write!(html, "<td>{}</td>", esc(ip));
            }
            Some(firsts) => {
                let place = text(event, "location");
                let _ = write!(
                    html,
                    "<td>{}{}</td><td>{}{}</td><td>{}</td><td class=\"agent\">{}</td>",
                    esc(ip),
                    firsts.badge(&firsts.ips, ip, time_us, "new IP"),
                    esc(place),
                    firsts.badge(&firsts.places, place, time_us, "new place"),
                    esc(text(event, "session_id")),
                    esc(text(event, "user_agent")),
                );
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    if events.is_empty() {
        html.push_str(&message("No events match.", false));
    }
    html
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)]).expect("text encodes")[1..].replace('+', "%20")
}

/// When an actor was first seen at each address and place: a row where
/// one appears for the first time, after the actor's first event, is marked.
struct Firsts {
    ips: HashMap<String, i64>,
    places: HashMap<String, i64>,
    actor_first_us: i64,
}

impl Firsts {
    fn badge(&self, firsts: &HashMap<String, i64>, value: &str, time_us: i64, what: &str) -> String {
        match firsts.get(value) {
            Some(&first) if first == time_us && first > self.actor_first_us => {
                format!(" <span class=\"badge\">{what}</span>")
            }
            _ => String::new(),
        }
    }
}

/// The pager: the next page's link, and the first page's.
fn pager(path: &str, base: &[(&str, &str)], name: &str, next: Option<Cursor>) -> String {
    let mut html = String::from("<nav class=\"pager\" aria-label=\"Pages\">");
    let _ = write!(html, "<a href=\"{}\">First page</a>", esc(&link(path, base)));
    if let Some(next) = next {
        let next = next.to_string();
        let mut params = base.to_vec();
        params.push((name, &next));
        let _ = write!(html, " <a href=\"{}\" rel=\"next\">Next page</a>", esc(&link(path, &params)));
    }
    html.push_str("</nav>");
    html
}

/// A view's body, or its error under the view's top (a search refused is
/// shown under the search box that holds it), with the status to answer;
/// records what was shown.
pub fn finish(
    app: &Api,
    visit: &Visit<'_>,
    view: &str,
    top: String,
    result: Result<(String, usize), UiError>,
    q: &str,
) -> (StatusCode, String) {
    let mut attributes = json!({ "search": q });
    match result {
        Ok((body, rows)) => {
            attributes["rows"] = json!(rows);
            visit.record(&app.ui.access_log, view, attributes, None);
            (StatusCode::OK, top + &body)
        }
        Err(error) => {
            visit.record(&app.ui.access_log, view, attributes, Some(&error));
            (error.status(), top + &message(&error.to_string(), true))
        }
    }
}

/// A page of the web view (not the embedded viewer's).
fn view_page(reader: &Reader, title: String, current: &str, (status, body): (StatusCode, String)) -> Response {
    Page { title, reader: Some(reader), current, body, frame_ancestors: None }.render(status)
}

/// `GET /ui/events`: the results table under its histogram and facets.
pub async fn events(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    raw: Params,
) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let params = params(raw)?;
    if let Some(q) = folded(&params)? {
        return Ok(Redirect::to(&link("/ui/events", &[("q", &q)])).into_response());
    }
    let visit = Visit::of(&reader, &headers, address);
    let top = search_form("/ui/events", &params.q, &[], true);
    let surface = Surface { path: "/ui/events", kept: Vec::new(), embedded: false };
    let result = events_body(&app, &reader, &params, &surface).await;
    Ok(view_page(&reader, "Events".into(), "/ui/events", finish(&app, &visit, "events", top, result, &params.q)))
}

/// The events list: histogram, facets, the table and its pager.
pub async fn events_body(
    app: &Api,
    reader: &Reader,
    params: &ViewParams,
    surface: &Surface<'_>,
) -> Result<(String, usize), UiError> {
    let rows = page_rows(params)?;
    let before = cursor(params.before.as_deref())?;
    let investigation = investigation(app, reader, &params.q, Vec::new())?;
    let table_frame = scoped_events(&app.storage, &app.limits, reader.scope()).await?;
    let (condition, from_us, to_us) = (investigation.condition.clone(), investigation.from_us, investigation.to_us);
    let (page, counts, actors, actions, products) = on_queries(app, async move {
        futures::try_join!(
            query::page(table_frame.clone(), condition.clone(), before, false, rows, &PAGE_COLUMNS),
            query::histogram(table_frame.clone(), condition.clone(), from_us, to_us),
            query::facet(table_frame.clone(), condition.clone(), "actor_id"),
            query::facet(table_frame.clone(), condition.clone(), "action"),
            query::facet(table_frame, condition, "product"),
        )
    })
    .await?;
    let (events, more) = page;
    let q = params.q.as_str();
    let mut body = window_note(&investigation);
    body.push_str(&histogram(surface.path, &investigation, &counts));
    body.push_str("<div class=\"facets\">");
    body.push_str(&facet(surface, q, "actor", "Actors", &actors));
    body.push_str(&facet(surface, q, "action", "Actions", &actions));
    body.push_str(&facet(surface, q, "product", "Products", &products));
    body.push_str("</div>");
    body.push_str(&table(&events, None, "Events, newest first", !surface.embedded));
    let next = if more { events.last().and_then(Cursor::of) } else { None };
    let rows_text = rows.to_string();
    let mut kept = surface.kept.clone();
    kept.push(("q", q));
    kept.push(("rows", if params.rows.is_some() { rows_text.as_str() } else { "" }));
    body.push_str(&pager(surface.path, &kept, "before", next));
    Ok((body, events.len()))
}

/// The form of a view about one subject (an actor, a content id): its
/// field `(name, label, value)` and a search that narrows it.
fn subject_form(path: &str, (name, label, value): (&str, &str, &str), q: &str, button: &str) -> String {
    format!(
        "<form method=\"get\" action=\"{path}\" class=\"search\"><div class=\"search-row\">\
         <label for=\"{name}\">{label}</label><input id=\"{name}\" name=\"{name}\" value=\"{}\" required>\
         <label for=\"q\">Search</label><input id=\"q\" name=\"q\" value=\"{}\" spellcheck=\"false\">\
         <button type=\"submit\">{button}</button></div></form>",
        esc(value),
        esc(q)
    )
}

/// A view about one subject: its name in records, path, titles and prompt.
struct Subject {
    view: &'static str,
    path: &'static str,
    title: &'static str,
    /// The title once a subject is typed, `{}` standing for it.
    title_of: fn(&str) -> String,
    prompt: &'static str,
}

const TIMELINE: Subject = Subject {
    view: "timeline",
    path: "/ui/timeline",
    title: "Actor timeline",
    title_of: |actor| format!("Timeline of {actor}"),
    prompt: "Type an actor id to see everything they did, oldest first.",
};

const CONTENT: Subject = Subject {
    view: "content",
    path: "/ui/content",
    title: "Who touched content",
    title_of: |_| "Who touched content".to_string(),
    prompt: "Type a content id (a page's, an issue's) to see who touched it.",
};

/// A subject view's page: its prompt while no subject is typed (`result`
/// is `None`), else its body; recorded with the subject as a search term.
fn subject_page(
    app: &Api,
    visit: &Visit<'_>,
    subject: &Subject,
    mut top: String,
    (qualifier, value): (&str, &str),
    q: &str,
    result: Option<Result<(String, usize), UiError>>,
) -> Response {
    let Some(result) = result else {
        top.push_str(&message(subject.prompt, false));
        let shown = finish(app, visit, subject.view, top, Ok((String::new(), 0)), "");
        return view_page(visit.reader, subject.title.into(), subject.path, shown);
    };
    let record = format!("{q} {qualifier}:{value}");
    let shown = finish(app, visit, subject.view, top, result, record.trim());
    view_page(visit.reader, (subject.title_of)(value), subject.path, shown)
}

/// `GET /ui/timeline?actor=`: one actor's events, oldest first, with new
/// addresses and places marked.
pub async fn timeline(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    raw: Params,
) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let params = params(raw)?;
    let visit = Visit::of(&reader, &headers, address);
    let actor = params.actor.clone().unwrap_or_default();
    let top = subject_form("/ui/timeline", ("actor", "Actor id", &actor), &params.q, "Show timeline");
    let result = match actor.is_empty() {
        true => None,
        false => Some(timeline_body(&app, &reader, &params, &actor).await),
    };
    Ok(subject_page(&app, &visit, &TIMELINE, top, ("actor", &actor), &params.q, result))
}

async fn timeline_body(
    app: &Api,
    reader: &Reader,
    params: &ViewParams,
    actor: &str,
) -> Result<(String, usize), UiError> {
    let rows = page_rows(params)?;
    let after = cursor(params.after.as_deref())?;
    let only_actor = || Term { negated: false, filter: Filter::Actor(actor.to_string()) };
    let investigation = investigation(app, reader, &params.q, vec![only_actor()])?;
    // First sightings are over all of the actor's events the reader may
    // see, not only this window's.
    let mut everything = Search { terms: vec![only_actor()] };
    everything.terms.extend(reader.narrowing());
    let actor_condition = everything.condition().expect("one term at least");
    let table_frame = scoped_events(&app.storage, &app.limits, reader.scope()).await?;
    let (condition, from_us, to_us) = (investigation.condition.clone(), investigation.from_us, investigation.to_us);
    let (page, counts, ips, places) = on_queries(app, async move {
        futures::try_join!(
            query::page(table_frame.clone(), condition.clone(), after, true, rows, &PAGE_COLUMNS),
            query::histogram(table_frame.clone(), condition, from_us, to_us),
            query::first_seen(table_frame.clone(), actor_condition.clone(), "source_ip"),
            query::first_seen(table_frame, actor_condition, "location"),
        )
    })
    .await?;
    let (events, more) = page;
    let actor_first_us = ips.values().chain(places.values()).copied().min().unwrap_or(i64::MIN);
    let firsts = Firsts { ips, places, actor_first_us };
    let q = params.q.as_str();
    let mut body = window_note(&investigation);
    body.push_str(&histogram("/ui/timeline", &investigation, &counts));
    body.push_str(&table(&events, Some(&firsts), &format!("Events of {actor}, oldest first"), true));
    let next = if more { events.last().and_then(Cursor::of) } else { None };
    body.push_str(&pager("/ui/timeline", &[("actor", actor), ("q", q)], "after", next));
    Ok((body, events.len()))
}

/// `GET /ui/content?id=`: who touched one piece of content, and how.
pub async fn content(
    State(app): State<Api>,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    raw: Params,
) -> Result<Response, UiError> {
    let reader = signed_in(&app, &headers)?;
    let params = params(raw)?;
    let visit = Visit::of(&reader, &headers, address);
    let id = params.id.clone().unwrap_or_default();
    let mut top = subject_form("/ui/content", ("id", "Content id", &id), &params.q, "Who touched it");
    if let Some(note) = content_policy_note(&app, &reader)? {
        top.push_str(&note);
    }
    let result = match id.is_empty() {
        true => None,
        false => Some(content_body(&app, &reader, &params, &id).await),
    };
    Ok(subject_page(&app, &visit, &CONTENT, top, ("content", &id), &params.q, result))
}

/// What the reader's organisation's UGC policy means for content lookups.
fn content_policy_note(app: &Api, reader: &Reader) -> Result<Option<String>, UiError> {
    let Scope::Org(org) = reader.scope() else { return Ok(None) };
    Ok(match app.policies.of(&org).map_err(ApiError::from)?.ugc {
        UgcMode::Store => None,
        UgcMode::Hash => Some(message(
            &format!(
                "Organisation {org} keeps content ids hashed: the id you type is hashed the same way and \
                 matched; titles are not kept."
            ),
            false,
        )),
        UgcMode::Drop => Some(message(
            &format!(
                "Organisation {org} drops content ids and titles (UGC policy `drop`), so events do not say which \
                 content they were about: no lookup by content can find them. Events sent before the policy \
                 changed are still found."
            ),
            true,
        )),
    })
}

async fn content_body(app: &Api, reader: &Reader, params: &ViewParams, id: &str) -> Result<(String, usize), UiError> {
    let rows = page_rows(params)?;
    let before = cursor(params.before.as_deref())?;
    let about = Term { negated: false, filter: Filter::Content(id.to_string()) };
    let investigation = investigation(app, reader, &params.q, vec![about])?;
    let table_frame = scoped_events(&app.storage, &app.limits, reader.scope()).await?;
    let condition = investigation.condition.clone();
    let (page, actors, actions) = on_queries(app, async move {
        futures::try_join!(
            query::page(table_frame.clone(), condition.clone(), before, false, rows, &PAGE_COLUMNS),
            query::facet(table_frame.clone(), condition.clone(), "actor_id"),
            query::facet(table_frame, condition, "action"),
        )
    })
    .await?;
    let (events, more) = page;
    let mut body = window_note(&investigation);
    body.push_str("<div class=\"facets\">");
    let q = format!("{} {}", params.q, qualified("content", id).unwrap_or_default());
    let surface = Surface { path: "/ui/events", kept: Vec::new(), embedded: false };
    body.push_str(&facet(&surface, q.trim(), "actor", "Who", &actors));
    body.push_str(&facet(&surface, q.trim(), "action", "What they did", &actions));
    body.push_str("</div>");
    body.push_str(&table(&events, None, "Events about this content, newest first", true));
    let next = if more { events.last().and_then(Cursor::of) } else { None };
    body.push_str(&pager("/ui/content", &[("id", id), ("q", &params.q)], "before", next));
    Ok((body, events.len()))
}
