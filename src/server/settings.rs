//! Which session settings a client may change, and `statement_timeout`.
//!
//! Drivers and BI tools send a handful of `SET`s when they connect
//! (`extra_float_digits`, `application_name`, `DateStyle`, the time zone,
//! the transaction characteristics); those are honoured or answered as
//! PostgreSQL would. Everything else changes the engine rather than the
//! client's view of it (`datafusion.*` among them: row filters, pruning,
//! parallelism; and `auditlake.lookup_path`, which road lookups take), so for an organisation's user it is refused with 42501
//! before it reaches DataFusion. `datafusion.runtime.*` (memory pools, spill
//! directories) is refused for everyone: those limits are the server's.
//!
//! `statement_timeout` is honoured for everyone, within the limit the login
//! set: it can lower the session's timeout, never raise it. So is
//! `auditlake.engine` (`local`, `distributed`, `auto`): where the rows are
//! read changes none of them.
//!
//! This hook only reads or refuses settings; the rest of `SET` and `SHOW` is
//! datafusion-postgres' `SetShowHook`, which runs after it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::PgWireResult;

use super::sqlstate::statement_error;
use crate::query::engine::ENGINES;
use crate::query::{Scope, SessionScope, SessionTimeout};

/// Settings an organisation's user may change, passed on to
/// datafusion-postgres, which keeps them per connection.
const CLIENT_SETTINGS: [&str; 8] = [
    "datestyle",
    "intervalstyle",
    "bytea_output",
    "application_name",
    "extra_float_digits",
    "search_path",
    "timezone",
    "time zone",
];

/// Settings PostgreSQL accepts that mean nothing on a read-only endpoint
/// without locks or planner choices: answered `SET`, nothing changes.
const NO_EFFECT_SETTINGS: [&str; 9] = [
    "client_min_messages",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "transaction_isolation",
    "transaction",
    "jit",
    "row_security",
];

/// The settings of the engine below SQL: DataFusion's and auditlake's own.
const ENGINE_PREFIXES: [&str; 2] = ["datafusion.", "auditlake."];

/// The setting every user may change among auditlake's own.
const ENGINE_SETTING: &str = "auditlake.engine";

/// The prefix of DataFusion settings no client may change.
const RUNTIME_PREFIX: &str = "datafusion.runtime.";

#[derive(Debug)]
pub(super) struct SettingsHook {
    pub scope: SessionScope,
    pub timeout: SessionTimeout,
}

/// What the hook does with one `SET`.
enum Decision {
    /// Answered here: `SET`, with the setting honoured or meaning nothing.
    Done,
    /// Left to datafusion-postgres.
    PassOn,
    Refused {
        code: &'static str,
        message: String,
    },
}

impl SettingsHook {
    fn is_admin(&self) -> bool {
        matches!(self.scope.get(), Some(Scope::All))
    }

    fn decide(&self, set: &Set, session: &SessionContext) -> Decision {
        let names = names(set);
        if let Some(name) = names.iter().find(|n| n.starts_with(RUNTIME_PREFIX)) {
            return refused(
                "42501",
                format!("permission denied to set parameter \"{name}\": the server's limits apply"),
            );
        }
        if let Set::SingleAssignment { variable, values, .. } = set
            && variable.to_string().eq_ignore_ascii_case("statement_timeout")
        {
            return match values.first().map_or_else(|| Err(String::new()), timeout_value) {
                Ok(requested) => {
                    self.timeout.lower_to(requested);
                    Decision::Done
                }
                Err(text) => refused("22023", format!("invalid value for parameter \"statement_timeout\": \"{text}\"")),
            };
        }
        if names.iter().any(|n| n == ENGINE_SETTING) {
            // Which engine reads the rows changes no row a user may see
            // (see `query::engine`), so every user may choose it.
            let value = first_value(set).unwrap_or_default();
            if names.len() > 1 || !ENGINES.contains(&value.as_str()) {
                return refused(
                    "22023",
                    format!(
                        "invalid value for parameter \"{ENGINE_SETTING}\": \"{value}\"; it takes one of {}",
                        ENGINES.join(", ")
                    ),
                );
            }
            return Decision::PassOn;
        }
        if self.is_admin() {
            return match engine_setting_error(set, session) {
                Some(message) => refused("22023", message),
                None => Decision::PassOn,
            };
        }
        for name in &names {
            match name.as_str() {
                "client_encoding" => match encoding(set) {
                    Some(e) if ["utf8", "utf-8", "unicode"].contains(&e.as_str()) => {}
                    other => {
                        let other = other.unwrap_or_default();
                        return refused("0A000", format!("client_encoding \"{other}\" is not supported: only UTF8"));
                    }
                },
                "standard_conforming_strings" if first_value(set).is_some_and(|v| v == "on") => {}
                n if NO_EFFECT_SETTINGS.contains(&n) => {}
                n if CLIENT_SETTINGS.contains(&n) => {
                    if names.len() > 1 {
                        return refused("0A000", "set client settings one at a time".into());
                    }
                    return Decision::PassOn;
                }
                other => {
                    return refused(
                        "42501",
                        format!(
                            "permission denied to set parameter \"{other}\": an organisation's user may set \
                             statement_timeout, {}, client_encoding and the transaction characteristics",
                            CLIENT_SETTINGS.join(", ")
                        ),
                    );
                }
            }
        }
        Decision::Done
    }

    fn show(&self, statement: &Statement) -> Option<PgWireResult<Response>> {
        let Statement::ShowVariable { variable } = statement else { return None };
        let [name] = variable.as_slice() else { return None };
        name.value.eq_ignore_ascii_case("statement_timeout").then(|| {
            let value = format!("{}ms", self.timeout.get().as_millis());
            one_text_row("statement_timeout", &value).map(Response::Query)
        })
    }

    fn answer(&self, statement: &Statement, session: &SessionContext) -> Option<PgWireResult<Response>> {
        let Statement::Set(set) = statement else { return self.show(statement) };
        match self.decide(set, session) {
            Decision::Done => Some(Ok(Response::Execution(Tag::new("SET")))),
            Decision::PassOn => None,
            Decision::Refused { code, message } => Some(Err(statement_error(code, message))),
        }
    }
}

/// Whether `name` is a setting a session may change or set without effect
/// (its value lives in the connection).
pub(super) fn is_session_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CLIENT_SETTINGS.contains(&name.as_str())
        || NO_EFFECT_SETTINGS.contains(&name.as_str())
        || name == "statement_timeout"
}

fn refused(code: &'static str, message: String) -> Decision {
    Decision::Refused { code, message }
}

/// The lower-case names a `SET` changes.
fn names(set: &Set) -> Vec<String> {
    let name = |n: &dyn ToString| n.to_string().to_lowercase();
    match set {
        Set::SingleAssignment { variable, .. } => vec![name(variable)],
        Set::ParenthesizedAssignments { variables, .. } => variables.iter().map(|v| name(v)).collect(),
        Set::MultipleAssignments { assignments } => assignments.iter().map(|a| name(&a.name)).collect(),
        Set::SetTimeZone { .. } => vec!["time zone".into()],
        Set::SetNames { .. } | Set::SetNamesDefault {} => vec!["client_encoding".into()],
        Set::SetTransaction { .. } => vec!["transaction".into()],
        Set::SetRole { .. } => vec!["role".into()],
        Set::SetSessionAuthorization(_) => vec!["session_authorization".into()],
        Set::SetSessionParam(_) => vec!["session parameters".into()],
    }
}

/// A setting's value as written, unquoted.
fn raw_text(value: &Expr) -> String {
    match value {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// A setting's value as text, unquoted and lower-case.
fn text(value: &Expr) -> String {
    raw_text(value).trim().to_lowercase()
}

/// Why an admin's `SET` of an engine setting (`datafusion.*`,
/// `auditlake.*`) cannot be applied, tried on a copy of the session's
/// settings: datafusion-postgres answers `SET` to any statement and drops
/// DataFusion's error, so a mistyped name or value would change nothing
/// without a word.
fn engine_setting_error(set: &Set, session: &SessionContext) -> Option<String> {
    let Set::SingleAssignment { variable, values, .. } = set else { return None };
    let name = variable.to_string().to_lowercase();
    if !ENGINE_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
        return None;
    }
    let value = values.first().map(raw_text).unwrap_or_default();
    let mut options = session.state().config_options().as_ref().clone();
    options.set(&name, &value).err().map(|e| format!("cannot set \"{name}\" to \"{value}\": {e}"))
}

fn first_value(set: &Set) -> Option<String> {
    match set {
        Set::SingleAssignment { values, .. } => values.first().map(text),
        _ => None,
    }
}

fn encoding(set: &Set) -> Option<String> {
    match set {
        Set::SetNames { charset_name, .. } => Some(charset_name.value.to_lowercase()),
        Set::SetNamesDefault {} => Some("utf8".into()),
        _ => first_value(set),
    }
}

/// A `statement_timeout` value: `None` for 0 or `DEFAULT` (the login's
/// limit); milliseconds without a unit, as PostgreSQL reads them.
fn timeout_value(value: &Expr) -> Result<Option<Duration>, String> {
    let text = text(value);
    if text == "default" {
        return Ok(None);
    }
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic()).trim();
    let unit_ms: u64 = match text[digits.len()..].trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(text),
    };
    let ms = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit_ms)).ok_or_else(|| text.clone())?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The column PostgreSQL names a `SHOW`'s answer, which clients on the
/// extended protocol (JDBC: DBeaver, Metabase) see when they describe it
/// before running it: the setting's own name (`TimeZone`, `search_path`,
/// `transaction_isolation`). `SHOW ALL` is left to datafusion-postgres.
fn show_column(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> Option<String> {
    let words: Vec<String> = variable.iter().map(|ident| ident.value.to_ascii_lowercase()).collect();
    let name = match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["all"] | [] => return None,
        ["time", "zone"] | ["timezone"] => "TimeZone".to_string(),
        ["transaction", "isolation", "level"] => "transaction_isolation".to_string(),
        ["datestyle"] => "DateStyle".to_string(),
        ["intervalstyle"] => "IntervalStyle".to_string(),
        _ => words.join("_"),
    };
    Some(name)
}

fn one_text_row(name: &str, value: &str) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(vec![FieldInfo::new(name.into(), None, None, Type::VARCHAR, FieldFormat::Text)]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(QueryResponse::new(fields, Box::pin(futures::stream::once(async move { Ok(row) }))))
}

#[async_trait]
impl QueryHook for SettingsHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.answer(statement, session_context)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if let Statement::ShowVariable { variable } = statement {
            return show_column(variable).map(|name| {
                let field =
                    datafusion::arrow::datatypes::Field::new(name, datafusion::arrow::datatypes::DataType::Utf8, true);
                let schema = DFSchema::from_unqualified_fields(vec![field].into(), Default::default())
                    .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
                Ok(LogicalPlan::EmptyRelation(EmptyRelation { produce_one_row: true, schema: Arc::new(schema) }))
            });
        }
        let Statement::Set(set) = statement else { return None };
        match self.decide(set, session_context) {
            Decision::Refused { code, message } => Some(Err(statement_error(code, message))),
            Decision::Done => {
                let schema = Arc::new(DFSchema::empty());
                Some(Ok(LogicalPlan::EmptyRelation(EmptyRelation { produce_one_row: true, schema })))
            }
            Decision::PassOn => None,
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.answer(statement, session_context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn set(sql: &str) -> Set {
        match Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0) {
            Statement::Set(set) => set,
            other => panic!("not a SET: {other}"),
        }
    }

    #[test]
    fn timeouts_read_as_postgresql_reads_them() {
        let value = |sql: &str| match set(sql) {
            Set::SingleAssignment { values, .. } => timeout_value(&values[0]),
            _ => panic!(),
        };
        assert_eq!(value("set statement_timeout = 1500"), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(value("set statement_timeout = '2s'"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(value("set statement_timeout = '1min'"), Ok(Some(Duration::from_secs(60))));
        assert_eq!(value("set statement_timeout = 0"), Ok(None));
        assert_eq!(value("set statement_timeout to default"), Ok(None));
        assert!(value("set statement_timeout = 'soon'").is_err());
        assert!(value("set statement_timeout = '99999999999999999999d'").is_err());
    }
}
