//! Saved compliance SQL: the files of `sql/`, compiled into the binary so
//! `auditlake report NAME` works wherever it is installed, and the small part
//! of psql they use, so the same file runs under `psql -v name=value -f` and
//! under `auditlake report NAME --param name=value`.
//!
//! The psql subset: `:name` (the variable's text, as is), `:'name'` (as a
//! quoted literal), `\set name value` and `\if :{?name}` / `\else` / `\endif`
//! (defaults for optional parameters). Anything else starting with `\` is
//! refused by name rather than misread. This module only produces SQL text; it
//! never runs it.

use std::collections::BTreeMap;

/// Every file of `sql/`, by name without `.sql`.
pub const SAVED: &[(&str, &str)] = &[
    ("actor_timeline", include_str!("../sql/actor_timeline.sql")),
    ("admin_grants", include_str!("../sql/admin_grants.sql")),
    ("audit_log_access", include_str!("../sql/audit_log_access.sql")),
    ("content_access", include_str!("../sql/content_access.sql")),
    ("deletions", include_str!("../sql/deletions.sql")),
    ("dormant_accounts", include_str!("../sql/dormant_accounts.sql")),
    ("failed_then_successful_logins", include_str!("../sql/failed_then_successful_logins.sql")),
    ("mass_download", include_str!("../sql/mass_download.sql")),
    ("new_ip_logins", include_str!("../sql/new_ip_logins.sql")),
    ("off_hours_activity", include_str!("../sql/off_hours_activity.sql")),
    ("permission_changes", include_str!("../sql/permission_changes.sql")),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("no saved report {name}; there are: {known}")]
    Unknown { name: String, known: String },
    #[error("parameter {0} is not set: pass --param {0}=VALUE")]
    MissingParameter(String),
    #[error("--param {0}: expected NAME=VALUE")]
    BadParameter(String),
    #[error("line {line}: {reason}")]
    Script { line: usize, reason: String },
}

/// The text of saved report `name`.
pub fn saved(name: &str) -> Result<&'static str, ReportError> {
    SAVED.iter().find(|(n, _)| *n == name).map(|(_, text)| *text).ok_or_else(|| ReportError::Unknown {
        name: name.to_owned(),
        known: SAVED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
    })
}

/// Parameters given as `name=value`, as psql variables: numbers are used as
/// they are, anything else becomes a quoted SQL literal (`acme-u007` →
/// `'acme-u007'`), as one would pass `-v actor="'acme-u007'"` to psql.
pub fn parameters(pairs: &[String]) -> Result<BTreeMap<String, String>, ReportError> {
    let mut variables = BTreeMap::new();
    for pair in pairs {
        let (name, value) = pair.split_once('=').ok_or_else(|| ReportError::BadParameter(pair.clone()))?;
        if name.is_empty() {
            return Err(ReportError::BadParameter(pair.clone()));
        }
        let text = if value.parse::<f64>().is_ok() { value.to_owned() } else { quote(value) };
        variables.insert(name.to_owned(), text);
    }
    Ok(variables)
}

/// What a parameter of a saved report takes, as its header declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// "quoted timestamp": a day (`2026-11-01`) or an RFC 3339 time.
    Timestamp,
    /// "quoted interval": a count and a unit (`90 days`, `15 minutes`).
    Interval,
    /// Unquoted, with a numeric default: a whole number.
    Number,
    /// Any other quoted value.
    Text,
}

/// One parameter a saved report's header declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub optional: bool,
    pub kind: ParamKind,
    /// The header's words for it.
    pub about: String,
}

/// What a saved report is for: its header's first paragraph, after the
/// file name and its dash.
pub fn purpose(script: &str) -> String {
    let paragraph: Vec<&str> = script
        .lines()
        .map_while(|line| line.strip_prefix("--").map(str::trim).filter(|text| !text.is_empty()))
        .collect();
    let text = paragraph.join(" ");
    text.split_once(" — ").map_or(text.as_str(), |(_, purpose)| purpose).to_string()
}

/// The parameters a saved report's header declares (`-- Parameters:`,
/// one `:name  words` per line until the next heading), in order.
pub fn declared(script: &str) -> Vec<Declared> {
    let mut params = Vec::new();
    let mut inside = false;
    for line in script.lines().take_while(|line| line.starts_with("--")) {
        let text = line.trim_start_matches('-').trim();
        if let Some(rest) = text.strip_prefix("Parameters:") {
            inside = true;
            declare(rest.trim(), &mut params);
        } else if inside && text.starts_with(':') {
            declare(text, &mut params);
        } else if inside {
            inside = false;
        }
    }
    params
}

fn declare(text: &str, params: &mut Vec<Declared>) {
    let Some(rest) = text.strip_prefix(':') else { return };
    let (name, about) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let about = about.trim();
    let kind = if about.contains("quoted timestamp") {
        ParamKind::Timestamp
    } else if about.contains("quoted interval") {
        ParamKind::Interval
    } else if about.contains("quoted") {
        ParamKind::Text
    } else {
        ParamKind::Number
    };
    params.push(Declared {
        name: name.to_string(),
        optional: about.starts_with("optional"),
        kind,
        about: about.to_string(),
    });
}

/// Units an interval parameter may be given in.
const INTERVAL_UNITS: [&str; 10] =
    ["minute", "minutes", "hour", "hours", "day", "days", "week", "weeks", "month", "months"];

impl ParamKind {
    /// `value` as the SQL text a psql variable of this kind holds (a quoted
    /// literal, or a number), or why it is not one.
    pub fn literal(self, value: &str) -> Result<String, String> {
        let value = value.trim();
        match self {
            ParamKind::Timestamp => {
                let day = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
                if day || chrono::DateTime::parse_from_rfc3339(value).is_ok() {
                    Ok(quote(value))
                } else {
                    Err(format!("{value:?} is not a date (2026-11-01) or an RFC 3339 time"))
                }
            }
            ParamKind::Interval => {
                let (count, unit) = value.split_once(' ').unwrap_or((value, ""));
                if count.parse::<u32>().is_ok() && INTERVAL_UNITS.contains(&unit.trim()) {
                    Ok(quote(&format!("{count} {}", unit.trim())))
                } else {
                    Err(format!("{value:?} is not an interval such as \"90 days\" or \"15 minutes\""))
                }
            }
            ParamKind::Number => match value.parse::<i64>() {
                Ok(number) => Ok(number.to_string()),
                Err(_) => Err(format!("{value:?} is not a whole number")),
            },
            ParamKind::Text => Ok(quote(value)),
        }
    }
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The SQL statement of `script` with `variables` (and the script's own
/// defaults) substituted.
pub fn render(script: &str, variables: &BTreeMap<String, String>) -> Result<String, ReportError> {
    let mut variables = variables.clone();
    // One entry per open `\if`: whether its current branch is taken.
    let mut branches: Vec<bool> = Vec::new();
    let mut sql = String::new();
    for (index, line) in script.lines().enumerate() {
        let line_no = index + 1;
        let script_error = |reason: String| ReportError::Script { line: line_no, reason };
        let trimmed = line.trim();
        let active = branches.iter().all(|taken| *taken);
        if let Some(command) = trimmed.strip_prefix('\\') {
            let (verb, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
            match verb {
                "if" => {
                    let name =
                        rest.trim().strip_prefix(":{?").and_then(|r| r.strip_suffix('}')).ok_or_else(|| {
                            script_error(format!("only \\if :{{?name}} is supported, not \\if {rest}"))
                        })?;
                    branches.push(variables.contains_key(name));
                }
                "else" => match branches.last_mut() {
                    Some(taken) => *taken = !*taken,
                    None => return Err(script_error("\\else without \\if".into())),
                },
                "endif" => {
                    branches.pop().ok_or_else(|| script_error("\\endif without \\if".into()))?;
                }
                "set" if active => {
                    let (name, value) = rest.trim().split_once(char::is_whitespace).unwrap_or((rest.trim(), ""));
                    variables.insert(name.to_owned(), unquote_meta_argument(value.trim()));
                }
                "set" => {}
                other => return Err(script_error(format!("psql command \\{other} is not supported"))),
            }
            continue;
        }
        if active {
            sql.push_str(&substitute(line, &variables)?);
            sql.push('\n');
        }
    }
    if !branches.is_empty() {
        return Err(ReportError::Script { line: script.lines().count(), reason: "\\if without \\endif".into() });
    }
    Ok(sql)
}

/// A `\set` argument as psql reads it: `'...'` with `''` for a quote inside.
fn unquote_meta_argument(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => value.to_owned(),
    }
}

/// `line` with `:name` and `:'name'` replaced, leaving `::` casts, comments
/// and string literals alone.
fn substitute(line: &str, variables: &BTreeMap<String, String>) -> Result<String, ReportError> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut in_literal = false;
    while let Some(c) = rest.chars().next() {
        if !in_literal && rest.starts_with("--") {
            out.push_str(rest);
            break;
        }
        if c == '\'' {
            in_literal = !in_literal;
        }
        if !in_literal && c == ':' && !rest.starts_with("::") && !out.ends_with(':') {
            let (quoted, after) = match rest[1..].strip_prefix('\'') {
                Some(after) => (true, after),
                None => (false, &rest[1..]),
            };
            let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if name_len > 0 && (!quoted || after[name_len..].starts_with('\'')) {
                let name = &after[..name_len];
                let value = variables.get(name).ok_or_else(|| ReportError::MissingParameter(name.to_owned()))?;
                if quoted {
                    // `:'name'` quotes the variable's text as a literal.
                    out.push_str(&quote(value));
                    rest = &after[name_len + 1..];
                } else {
                    out.push_str(value);
                    rest = &after[name_len..];
                }
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[&str]) -> BTreeMap<String, String> {
        parameters(&pairs.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn every_file_in_sql_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|name| name.strip_suffix(".sql").map(str::to_owned))
            .collect();
        files.sort();
        let mut saved: Vec<&str> = SAVED.iter().map(|(n, _)| *n).collect();
        saved.sort();
        assert_eq!(files, saved);
    }

    #[test]
    fn every_saved_report_declares_its_parameters() {
        let timeline = declared(saved("actor_timeline").unwrap());
        assert_eq!(
            timeline.iter().map(|d| (d.name.as_str(), d.optional, d.kind)).collect::<Vec<_>>(),
            [("actor", false, ParamKind::Text), ("since", true, ParamKind::Timestamp)]
        );
        let logins = declared(saved("failed_then_successful_logins").unwrap());
        assert_eq!(
            logins.iter().map(|d| (d.name.as_str(), d.kind)).collect::<Vec<_>>(),
            [("failures", ParamKind::Number), ("window", ParamKind::Interval), ("since", ParamKind::Timestamp)]
        );
        assert_eq!(purpose(saved("actor_timeline").unwrap()), "everything one account did, in order, with where from.");
        assert_eq!(
            purpose(saved("audit_log_access").unwrap()),
            "who used the audit log itself: logins (failed ones too) and every statement, with its SQL, rows \
             returned and outcome."
        );
        // Every variable a report uses is declared, so the form asks for it.
        for (name, script) in SAVED {
            let names: Vec<String> = declared(script).into_iter().map(|d| d.name).collect();
            assert!(!names.is_empty(), "{name} declares its parameters");
            let given: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), "1".to_string())).collect();
            render(script, &given).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn parameter_values_are_checked_by_kind() {
        assert_eq!(ParamKind::Timestamp.literal("2026-11-01"), Ok("'2026-11-01'".into()));
        assert_eq!(ParamKind::Timestamp.literal("2026-11-01T10:00:00Z"), Ok("'2026-11-01T10:00:00Z'".into()));
        assert!(ParamKind::Timestamp.literal("yesterday').. --").unwrap_err().contains("is not a date"));
        assert_eq!(ParamKind::Interval.literal("90 days"), Ok("'90 days'".into()));
        assert!(ParamKind::Interval.literal("90 days'; drop").is_err());
        assert_eq!(ParamKind::Number.literal(" 25 "), Ok("25".into()));
        assert!(ParamKind::Number.literal("25 or 1=1").is_err());
        assert_eq!(ParamKind::Text.literal("o'brien"), Ok("'o''brien'".into()));
    }

    #[test]
    fn parameters_become_literals_or_numbers() {
        assert_eq!(
            vars(&["actor=acme-u007", "threshold=25", "who=o'brien"]),
            BTreeMap::from([
                ("actor".to_owned(), "'acme-u007'".to_owned()),
                ("threshold".to_owned(), "25".to_owned()),
                ("who".to_owned(), "'o''brien'".to_owned()),
            ])
        );
        assert_eq!(parameters(&["actor".into()]), Err(ReportError::BadParameter("actor".into())));
    }

    #[test]
    fn defaults_apply_only_when_a_parameter_is_not_given() {
        let script = "\\if :{?since}\n\\else\n\\set since 'now() - interval ''7 days'''\n\\endif\n\
                      select * from t where a = :actor and time >= :since and b::text = 'x:y' -- :not_a_var\n";
        let defaulted = render(script, &vars(&["actor=u1"])).unwrap();
        assert_eq!(
            defaulted,
            "select * from t where a = 'u1' and time >= now() - interval '7 days' and b::text = 'x:y' -- :not_a_var\n"
        );
        let given = render(script, &vars(&["actor=u1", "since=2026-11-01"])).unwrap();
        assert!(given.contains("time >= '2026-11-01' and"), "{given}");
        assert_eq!(render(script, &vars(&[])), Err(ReportError::MissingParameter("actor".into())));
        assert_eq!(render("select :'name'", &vars(&["name=x"])).unwrap(), "select '''x'''\n");
        assert!(matches!(render("\\copy t to 'f'", &vars(&[])), Err(ReportError::Script { line: 1, .. })));
        assert!(matches!(render("\\if :{?a}\nselect 1", &vars(&[])), Err(ReportError::Script { .. })));
    }

    #[test]
    fn the_saved_reports_render_with_their_documented_parameters() {
        let sql = render(saved("actor_timeline").unwrap(), &vars(&["actor=acme-u007"])).unwrap();
        assert!(sql.contains("where actor_id = 'acme-u007'"), "{sql}");
        assert!(matches!(saved("nope"), Err(ReportError::Unknown { .. })));
    }
}
