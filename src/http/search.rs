//! The investigators' search language: GitHub-style qualifiers and free
//! text, as typed into a search box or a URL.
//!
//! ```text
//! actor:alice action:confluence.page.* -outcome:success ip:10.0.0.0/8 container:SPACE-1
//! created:>=2026-11-01 created:2026-11-01..2026-11-07 "exported page"
//! ```
//!
//! A search is parsed here into [`Filter`]s and turned into one condition
//! over `audit_events` built from DataFusion expressions, the typed values
//! as literals: no SQL text is ever made from it. Anything it cannot read
//! (an unknown qualifier, a bad date, a bad CIDR block, an unclosed quote)
//! is refused with the token and its position, and nothing runs. It never
//! runs a query and never names an organisation: the condition is applied
//! inside the caller's tenant-scoped session, so no qualifier can widen it.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Days, NaiveDate};
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::cast::as_string_array;
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{col, lit};
use ipnet::IpNet;

/// The longest search text read, in bytes.
pub const MAX_SEARCH_BYTES: usize = 2048;

/// The most terms a search holds: an investigator types a handful, and
/// each term deepens the condition the planner walks.
pub const MAX_SEARCH_TERMS: usize = 32;

/// The qualifiers, as written before the colon.
pub const QUALIFIERS: [&str; 8] = ["actor", "action", "ip", "outcome", "product", "content", "container", "created"];

/// A search refused: what is wrong, in which token, at which character
/// (counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("search: {reason} in `{token}` at character {position}")]
pub struct SearchError {
    pub token: String,
    pub position: usize,
    pub reason: String,
}

/// What one token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Actor(String),
    Action(String),
    /// `action:confluence.*`: actions starting with the text.
    ActionPrefix(String),
    /// An address is a network of one.
    Ip(IpNet),
    Outcome(String),
    Product(String),
    Content(String),
    /// Any of these content ids (one id as each organisation stores it).
    ContentIn(Vec<String>),
    Container(String),
    /// `[from, to)` in microseconds since the epoch; either may be open.
    Created {
        from_us: Option<i64>,
        to_us: Option<i64>,
    },
    /// Free text, found case-insensitively in the action, the content's
    /// title or the attributes.
    Text(String),
}

/// One token: a filter, or (with a leading `-`) everything it does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub negated: bool,
    pub filter: Filter,
}

/// A parsed search: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    pub terms: Vec<Term>,
}

/// Reads `text` as a search.
pub fn parse(text: &str) -> Result<Search, SearchError> {
    if text.len() > MAX_SEARCH_BYTES {
        return Err(SearchError {
            token: text.chars().take(20).collect(),
            position: 1,
            reason: format!("the search is {} bytes, more than {MAX_SEARCH_BYTES}", text.len()),
        });
    }
    let tokens = tokens(text)?;
    if let Some((position, token)) = tokens.get(MAX_SEARCH_TERMS) {
        return Err(SearchError {
            token: token.to_string(),
            position: *position,
            reason: format!("a search holds at most {MAX_SEARCH_TERMS} terms"),
        });
    }
    let terms = tokens.into_iter().map(|(position, token)| term(position, token)).collect::<Result<_, _>>()?;
    Ok(Search { terms })
}

/// The tokens of `text` with the character each starts at: separated by
/// white space, except inside double quotes.
fn tokens(text: &str) -> Result<Vec<(usize, &str)>, SearchError> {
    let mut tokens = Vec::new();
    let mut start: Option<(usize, usize)> = None;
    let mut quoted = false;
    for (position, (offset, c)) in text.char_indices().enumerate() {
        if c.is_whitespace() && !quoted {
            if let Some((at, begin)) = start.take() {
                tokens.push((at, &text[begin..offset]));
            }
            continue;
        }
        if start.is_none() {
            start = Some((position + 1, offset));
        }
        if c == '"' {
            quoted = !quoted;
        }
    }
    if let Some((at, begin)) = start {
        if quoted {
            return Err(SearchError {
                token: text[begin..].to_string(),
                position: at,
                reason: "unclosed quote".into(),
            });
        }
        tokens.push((at, &text[begin..]));
    }
    Ok(tokens)
}

fn term(position: usize, token: &str) -> Result<Term, SearchError> {
    let refused = |reason: String| SearchError { token: token.to_string(), position, reason };
    let (negated, rest) = match token.strip_prefix('-') {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, token),
    };
    // `word:value` is a qualifier, which must be known; a quoted phrase or
    // an address (`https://…`) is text.
    let qualified = rest.split_once(':').filter(|(key, value)| {
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphabetic()) && !value.starts_with("//")
    });
    let Some((key, value)) = qualified else {
        return Ok(Term { negated, filter: Filter::Text(unquoted(rest).to_string()) });
    };
    let key = key.to_ascii_lowercase();
    if !QUALIFIERS.contains(&key.as_str()) {
        return Err(refused(format!("unknown qualifier `{key}:` (known: {})", QUALIFIERS.join(", "))));
    }
    let value = unquoted(value);
    if value.is_empty() {
        return Err(refused(format!("`{key}:` needs a value")));
    }
    let filter = match key.as_str() {
        "actor" => Filter::Actor(value.to_string()),
        "action" => match value.find('*') {
            None => Filter::Action(value.to_string()),
            Some(star) if star + 1 == value.len() && star > 0 => Filter::ActionPrefix(value[..star].to_string()),
            Some(_) => return Err(refused("`action:` takes `*` only at the end, after some text".into())),
        },
        "ip" => {
            Filter::Ip(network(value).ok_or_else(|| refused(format!("`{value}` is not an IP address or CIDR block")))?)
        }
        "outcome" => Filter::Outcome(value.to_string()),
        "product" => Filter::Product(value.to_string()),
        "content" => Filter::Content(value.to_string()),
        "container" => Filter::Container(value.to_string()),
        "created" => created(value).map_err(refused)?,
        _ => unreachable!("every qualifier is matched"),
    };
    Ok(Term { negated, filter })
}

/// `"a b"` as `a b`; text without both quotes as it is.
fn unquoted(text: &str) -> &str {
    text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text)
}

fn network(text: &str) -> Option<IpNet> {
    match text.contains('/') {
        true => text.parse().ok(),
        false => text.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// `created:` with `>=D`, `>D`, `<=D`, `<D`, `D` or `A..B` (either side may
/// be `*`), each a day (`2026-11-01`, UTC) or an RFC 3339 time.
fn created(value: &str) -> Result<Filter, String> {
    let (from_us, to_us) = if let Some((from, to)) = value.split_once("..") {
        let from = if from == "*" { None } else { Some(moment(from)?.0) };
        let to = if to == "*" { None } else { Some(moment(to)?.1) };
        (from, to)
    } else if let Some(day) = value.strip_prefix(">=") {
        (Some(moment(day)?.0), None)
    } else if let Some(day) = value.strip_prefix("<=") {
        (None, Some(moment(day)?.1))
    } else if let Some(day) = value.strip_prefix('>') {
        (Some(moment(day)?.1), None)
    } else if let Some(day) = value.strip_prefix('<') {
        (None, Some(moment(day)?.0))
    } else {
        let (start, end) = moment(value)?;
        (Some(start), Some(end))
    };
    if let (Some(from), Some(to)) = (from_us, to_us)
        && from >= to
    {
        return Err(format!("`created:{value}` ends before it starts"));
    }
    Ok(Filter::Created { from_us, to_us })
}

/// The span a date or time names, `[start, end)` in microseconds: a whole
/// UTC day, or one microsecond.
fn moment(text: &str) -> Result<(i64, i64), String> {
    let bad = || format!("`{text}` is not a date (2026-11-01) or an RFC 3339 time");
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let start = day.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_micros();
        let next = day.checked_add_days(Days::new(1)).ok_or_else(bad)?;
        return Ok((start, next.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_micros()));
    }
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| bad())?.timestamp_micros();
    Ok((time, time.checked_add(1).ok_or_else(bad)?))
}

/// `text` for a LIKE pattern, LIKE's own characters taken literally.
fn like_literal(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// Free text anywhere an investigator would look for it.
pub fn text_anywhere(text: &str) -> Expr {
    let pattern = format!("%{}%", like_literal(text));
    ["action", "content_title", "attributes"]
        .into_iter()
        .map(|column| col(column).ilike(lit(pattern.clone())))
        .reduce(Expr::or)
        .expect("three columns")
}

fn utc_micros(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

impl Filter {
    fn condition(&self) -> Expr {
        match self {
            Filter::Actor(actor) => col("actor_id").eq(lit(actor.as_str())),
            Filter::Action(action) => col("action").eq(lit(action.as_str())),
            Filter::ActionPrefix(prefix) => col("action").like(lit(format!("{}%", like_literal(prefix)))),
            Filter::Ip(network) => IP_IN_NETWORK.call(vec![col("source_ip"), lit(network.to_string())]),
            Filter::Outcome(outcome) => col("outcome").eq(lit(outcome.as_str())),
            Filter::Product(product) => col("product").eq(lit(product.as_str())),
            Filter::Content(content) => col("content_id").eq(lit(content.as_str())),
            Filter::ContentIn(contents) => {
                col("content_id").in_list(contents.iter().map(|c| lit(c.as_str())).collect(), false)
            }
            Filter::Container(container) => col("container_id").eq(lit(container.as_str())),
            Filter::Created { from_us, to_us } => {
                let from = from_us.map(|from| col("time").gt_eq(utc_micros(from)));
                let to = to_us.map(|to| col("time").lt(utc_micros(to)));
                from.into_iter().chain(to).reduce(Expr::and).unwrap_or(lit(true))
            }
            Filter::Text(text) => text_anywhere(text),
        }
    }
}

impl Search {
    /// The content ids the search names, to be restated as stored (hashed,
    /// where the organisation's policy hashes them).
    pub fn content_ids_mut(&mut self) -> impl Iterator<Item = &mut String> {
        self.terms.iter_mut().filter_map(|term| match &mut term.filter {
            Filter::Content(content) => Some(content),
            _ => None,
        })
    }

    /// The condition every term must hold, or `None` for an empty search.
    /// A negated term keeps the events it is not true of, those with no
    /// value in its column among them (`-outcome:success` keeps events
    /// without an outcome).
    pub fn condition(&self) -> Option<Expr> {
        self.terms
            .iter()
            .map(|term| match term.negated {
                true => Expr::IsNotTrue(Box::new(term.filter.condition())),
                false => term.filter.condition(),
            })
            .reduce(Expr::and)
    }
}

/// `auditlake_ip_in_network(address, network)`: whether the address (text,
/// as events carry it) is in the network (a CIDR block); NULL for no
/// address, false for text that is not one.
static IP_IN_NETWORK: LazyLock<ScalarUDF> = LazyLock::new(|| {
    create_udf(
        "auditlake_ip_in_network",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let network = match &args[1] {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(network))) => network.parse::<IpNet>().ok(),
                _ => None,
            };
            let Some(network) = network else {
                return Err(datafusion::error::DataFusionError::Execution(
                    "auditlake_ip_in_network takes a constant CIDR block".into(),
                ));
            };
            let addresses = args[0].to_array(1)?;
            let addresses = as_string_array(&addresses)?;
            let inside: BooleanArray = addresses
                .iter()
                .map(|address| address.map(|a| a.parse::<IpAddr>().is_ok_and(|a| network.contains(&a))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(inside)))
        }),
    )
});

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filters(text: &str) -> Vec<(bool, Filter)> {
        parse(text).unwrap().terms.into_iter().map(|t| (t.negated, t.filter)).collect()
    }

    fn day(text: &str) -> i64 {
        moment(text).unwrap().0
    }

    #[test]
    fn qualifiers_negation_quotes_and_free_text() {
        assert_eq!(
            filters(r#"actor:alice -outcome:success action:confluence.* content:"PAGE 1" "exported page" oops"#),
            [
                (false, Filter::Actor("alice".into())),
                (true, Filter::Outcome("success".into())),
                (false, Filter::ActionPrefix("confluence.".into())),
                (false, Filter::Content("PAGE 1".into())),
                (false, Filter::Text("exported page".into())),
                (false, Filter::Text("oops".into())),
            ]
        );
        assert_eq!(filters("ACTION:jira.issue.viewed"), [(false, Filter::Action("jira.issue.viewed".into()))]);
        assert_eq!(filters("   "), []);
        // Text that only looks like a qualifier is text.
        assert_eq!(filters("https://example.com"), [(false, Filter::Text("https://example.com".into()))]);
        assert_eq!(filters("-"), [(false, Filter::Text("-".into()))]);
        assert_eq!(filters(r#""actor:alice""#), [(false, Filter::Text("actor:alice".into()))]);
    }

    #[test]
    fn addresses_and_networks() {
        assert_eq!(filters("ip:10.0.0.0/8"), [(false, Filter::Ip("10.0.0.0/8".parse().unwrap()))]);
        assert_eq!(filters("ip:10.1.2.3"), [(false, Filter::Ip("10.1.2.3/32".parse().unwrap()))]);
        assert_eq!(filters("ip:2001:db8::/32"), [(false, Filter::Ip("2001:db8::/32".parse().unwrap()))]);
    }

    #[test]
    fn created_days_times_and_ranges() {
        let created = |from: Option<i64>, to: Option<i64>| vec![(false, Filter::Created { from_us: from, to_us: to })];
        assert_eq!(filters("created:>=2026-11-01"), created(Some(day("2026-11-01")), None));
        assert_eq!(filters("created:>2026-11-01"), created(Some(day("2026-11-02")), None));
        assert_eq!(filters("created:<2026-11-01"), created(None, Some(day("2026-11-01"))));
        assert_eq!(filters("created:<=2026-11-01"), created(None, Some(day("2026-11-02"))));
        assert_eq!(filters("created:2026-11-01"), created(Some(day("2026-11-01")), Some(day("2026-11-02"))));
        assert_eq!(
            filters("created:2026-11-01..2026-11-07"),
            created(Some(day("2026-11-01")), Some(day("2026-11-08")))
        );
        assert_eq!(filters("created:*..2026-11-07"), created(None, Some(day("2026-11-08"))));
        let noon = day("2026-11-01T12:00:00Z");
        assert_eq!(filters("created:>=2026-11-01T12:00:00Z"), created(Some(noon), None));
    }

    #[test]
    fn refusals_name_the_token_and_its_position() {
        let refused = |text: &str| parse(text).unwrap_err();
        let error = refused("actor:alice org:globex");
        assert_eq!((error.token.as_str(), error.position), ("org:globex", 13));
        assert!(error.reason.contains("unknown qualifier `org:`"), "{error}");
        assert_eq!(
            error.to_string(),
            "search: unknown qualifier `org:` (known: actor, action, ip, outcome, product, content, container, \
             created) in `org:globex` at character 13"
        );
        let error = refused("créé ip:300.1.2.3");
        assert_eq!((error.token.as_str(), error.position), ("ip:300.1.2.3", 6));
        assert!(refused("created:2026-13-01").reason.contains("`2026-13-01` is not a date"));
        assert!(refused("created:2026-11-07..2026-11-01").reason.contains("ends before it starts"));
        assert!(refused("action:*.viewed").reason.contains("`*` only at the end"));
        assert!(refused("action:*").reason.contains("`*` only at the end"));
        assert!(refused("actor:").reason.contains("needs a value"));
        assert_eq!(refused(r#"actor:"alice"#).reason, "unclosed quote");
        assert!(refused(&"x".repeat(MAX_SEARCH_BYTES + 1)).reason.contains("more than 2048"));
        let many = refused(&"ab ".repeat(MAX_SEARCH_TERMS + 1));
        assert_eq!((many.position, many.reason.as_str()), (3 * 32 + 1, "a search holds at most 32 terms"));
    }

    #[test]
    fn like_characters_in_a_prefix_are_literal() {
        assert_eq!(like_literal("50%_off\\"), "50\\%\\_off\\\\");
        let search = parse("action:a_b%*").unwrap();
        assert_eq!(search.condition().unwrap(), col("action").like(lit("a\\_b\\%%")));
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in "\\PC{0,200}") {
            if let Ok(search) = parse(&text) {
                let _ = search.condition();
            }
        }

        #[test]
        fn parsing_qualifier_shaped_text_never_panics(
            negated in any::<bool>(),
            key in prop::sample::select(QUALIFIERS.to_vec()),
            value in "[-<>=.*:/ 0-9a-zA-Z\"TZ]{0,40}",
        ) {
            let text = format!("{}{key}:{value}", if negated { "-" } else { "" });
            if let Ok(search) = parse(&text) {
                let _ = search.condition();
            }
        }
    }
}
