//! The pages' HTML: every value from an event, a search or a URL is escaped
//! here on its way into a page, and every link is built from encoded
//! parameters. Nothing here reads a request or runs a query.

use std::fmt::Write;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Reader;

/// `text` as HTML text or a double-quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `path?name=value&...`, the values percent-encoded; empty values left out.
pub fn link(path: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(&str, &str)> = params.iter().copied().filter(|(_, value)| !value.is_empty()).collect();
    if params.is_empty() {
        return path.to_string();
    }
    let query = serde_urlencoded::to_string(&params).expect("text parameters encode");
    format!("{path}?{query}")
}

/// What every page says about where the browser may fetch from: only this
/// server, no inline script or style, no framing (the embedded viewer sets
/// its own `frame-ancestors`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'";

/// A page of the web view.
pub struct Page<'a> {
    pub title: String,
    /// `None` on the sign-in page.
    pub reader: Option<&'a Reader>,
    /// Which view the navigation marks as the current one.
    pub current: &'a str,
    pub body: String,
    /// `frame-ancestors` for the embedded viewer; `None`: no framing.
    pub frame_ancestors: Option<String>,
}

/// The views in the navigation: (path, name).
const VIEWS: [(&str, &str); 4] = [
    ("/ui/events", "Events"),
    ("/ui/timeline", "Actor timeline"),
    ("/ui/content", "Who touched content"),
    ("/ui/saved", "Saved queries"),
];

impl Page<'_> {
    pub fn render(self, status: StatusCode) -> Response {
        let mut html = String::with_capacity(self.body.len() + 2048);
        let embedded = matches!(self.reader, Some(Reader::Viewer(_)));
        let _ = write!(
            html,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · auditlake</title><link rel=\"stylesheet\" href=\"/ui/assets/ui.css\">\
             <script src=\"/ui/assets/ui.js\" defer></script></head>\
             <body><a class=\"skip\" href=\"#main\">Skip to the content</a>",
            esc(&self.title),
        );
        html.push_str("<header><span class=\"brand\">auditlake</span>");
        if let Some(reader) = self.reader {
            if !embedded {
                html.push_str("<nav aria-label=\"Views\"><ul>");
                for (path, name) in VIEWS {
                    let current = if path == self.current { " aria-current=\"page\"" } else { "" };
                    let _ = write!(html, "<li><a href=\"{path}\"{current}>{name}</a></li>");
                }
                html.push_str("</ul></nav>");
            }
            let _ = write!(html, "<span class=\"who\">{}</span>", esc(&reader.label()));
            if !embedded {
                html.push_str(
                    "<form method=\"post\" action=\"/ui/sign-out\" class=\"sign-out\">\
                     <button type=\"submit\">Sign out</button></form>",
                );
            }
        }
        html.push_str("</header><main id=\"main\" tabindex=\"-1\">");
        let _ = write!(html, "<h1>{}</h1>", esc(&self.title));
        html.push_str(&self.body);
        html.push_str("</main></body></html>");

        let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
        let policy = match &self.frame_ancestors {
            Some(ancestors) => {
                CONTENT_SECURITY_POLICY.replace("frame-ancestors 'none'", &format!("frame-ancestors {ancestors}"))
            }
            None => CONTENT_SECURITY_POLICY.to_string(),
        };
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&policy).expect("an ASCII policy"));
        if self.frame_ancestors.is_none() {
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // Not `no-referrer`: under it a browser sends `Origin: null` with a
        // form post, and the sign-in could not tell its own page's post.
        // Nothing leaves for other sites (the embedded viewer's token is
        // in its URL).
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A time as the pages show it: UTC text the script may restate in the
/// browser's zone.
pub fn time(time_us: i64) -> String {
    let Some(at) = chrono::DateTime::from_timestamp_micros(time_us) else {
        return esc(&time_us.to_string());
    };
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// A message box; `alert` for errors a screen reader should announce.
pub fn message(text: &str, alert: bool) -> String {
    match alert {
        true => format!("<p class=\"error\" role=\"alert\">{}</p>", esc(text)),
        false => format!("<p class=\"note\">{}</p>", esc(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_leave_their_text_or_attribute() {
        assert_eq!(esc("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(esc("\" onmouseover=\"x"), "&quot; onmouseover=&quot;x");
        assert_eq!(
            link("/ui/events", &[("q", "actor:a&b \"c\""), ("before", "")]),
            "/ui/events?q=actor%3Aa%26b+%22c%22"
        );
    }
}
