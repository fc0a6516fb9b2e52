//! `COPY (query) TO STDOUT` and `COPY audit_events TO STDOUT`, in text or
//! CSV: what psql's `\copy (select ...) to 'file.csv' csv header` sends, so
//! rows reach a file on the client's side.
//!
//! The rows come from the session's own query (its tenant scope and limits
//! hold) and are encoded by arrow-pg into pgwire's COPY encoder. This never
//! touches a file on the server: every other form of `COPY` (to or from a
//! server file or program, `FROM STDIN`) stays refused by the read-only gate.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::encode_value;
use datafusion_postgres::hooks::HookClient;
use futures::StreamExt;
use pgwire::api::ClientInfo;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, Response};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;

use super::sqlstate::statement_error;

/// Whether `statement` is a COPY this endpoint serves: to the client only.
pub fn is_copy_to_client(statement: &Statement) -> bool {
    matches!(statement, Statement::Copy { to: true, target: CopyTarget::Stdout, .. })
}

/// How the rows are written, from the statement's options (new and legacy syntax).
#[derive(Debug, PartialEq)]
struct CopyFormat {
    csv: bool,
    header: bool,
    delimiter: Option<char>,
    null: Option<String>,
    quote: Option<char>,
    escape: Option<char>,
}

fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> PgWireResult<CopyFormat> {
    let unsupported = |what: String| statement_error("0A000", format!("COPY TO STDOUT does not support {what}"));
    let mut format = CopyFormat { csv: false, header: false, delimiter: None, null: None, quote: None, escape: None };
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => format.csv = true,
                "text" => format.csv = false,
                other => return Err(unsupported(format!("FORMAT {other} (text and csv are)"))),
            },
            CopyOption::Header(header) => format.header = *header,
            CopyOption::Delimiter(c) => format.delimiter = Some(*c),
            CopyOption::Null(null) => format.null = Some(null.clone()),
            CopyOption::Quote(c) => format.quote = Some(*c),
            CopyOption::Escape(c) => format.escape = Some(*c),
            other => return Err(unsupported(format!("the option {other}"))),
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                format.csv = true;
                for csv_option in csv_options {
                    match csv_option {
                        CopyLegacyCsvOption::Header => format.header = true,
                        CopyLegacyCsvOption::Quote(c) => format.quote = Some(*c),
                        CopyLegacyCsvOption::Escape(c) => format.escape = Some(*c),
                        other => return Err(unsupported(format!("the option {other}"))),
                    }
                }
            }
            CopyLegacyOption::Header => format.header = true,
            CopyLegacyOption::Delimiter(c) => format.delimiter = Some(*c),
            CopyLegacyOption::Null(null) => format.null = Some(null.clone()),
            other => return Err(unsupported(format!("the option {other}"))),
        }
    }
    Ok(format)
}

/// The query whose rows a COPY sends.
fn source_query(source: &CopySource) -> String {
    match source {
        CopySource::Query(query) => query.to_string(),
        CopySource::Table { table_name, columns } if columns.is_empty() => format!("select * from {table_name}"),
        CopySource::Table { table_name, columns } => {
            let columns: Vec<String> = columns.iter().map(ToString::to_string).collect();
            format!("select {} from {table_name}", columns.join(", "))
        }
    }
}

/// One CSV header field, quoted when PostgreSQL would.
fn csv_header_field(name: &str, delimiter: char, quote: char) -> String {
    if name.contains([delimiter, quote, '\n', '\r']) || name.is_empty() {
        let doubled = name.replace(quote, &format!("{quote}{quote}"));
        format!("{quote}{doubled}{quote}")
    } else {
        name.to_string()
    }
}

async fn copy_out(
    source: &CopySource,
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
    session: &SessionContext,
) -> PgWireResult<Response> {
    let format = copy_format(options, legacy)?;
    let api = |e: datafusion::error::DataFusionError| PgWireError::ApiError(Box::new(e));
    let frame = session.sql(&source_query(source)).await.map_err(api)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?);
    let delimiter = format.delimiter.unwrap_or(if format.csv { ',' } else { '\t' });
    let mut header = None::<String>;
    let mut encoder = if format.csv {
        let defaults = CopyCsvOptions::default();
        let quote = format.quote.unwrap_or('"');
        if format.header {
            let names: Vec<String> =
                schema.fields().iter().map(|f| csv_header_field(f.name(), delimiter, quote)).collect();
            header = Some(names.join(&delimiter.to_string()) + "\n");
        }
        CopyEncoder::new_csv(
            Arc::clone(&fields),
            CopyCsvOptions {
                delimiter: delimiter.to_string().into(),
                quote: quote.to_string().into(),
                escape: format.escape.unwrap_or(quote).to_string().into(),
                null_string: format.null.clone().map(Into::into).unwrap_or(defaults.null_string),
                force_quote: vec![],
            },
        )
    } else {
        let defaults = CopyTextOptions::default();
        if format.header {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            header = Some(names.join(&delimiter.to_string()) + "\n");
        }
        CopyEncoder::new_text(
            Arc::clone(&fields),
            CopyTextOptions {
                delimiter: delimiter.to_string().into(),
                null_string: format.null.clone().map(Into::into).unwrap_or(defaults.null_string),
            },
        )
    };
    let batches = frame.execute_stream().await.map_err(api)?;
    let columns = fields.len();
    // The header goes out with the first row (the `COPY n` tag counts
    // messages, and so do the self-audit records), or alone if none come.
    let header = Arc::new(std::sync::Mutex::new(header));
    let header_alone = Arc::clone(&header);
    let rows = batches.flat_map(move |batch| {
        let encoded: Vec<PgWireResult<CopyData>> = match batch {
            Err(e) => vec![Err(api(e))],
            Ok(batch) => (0..batch.num_rows())
                .map(|row| {
                    for (column, pg_field) in fields.iter().enumerate() {
                        let array = batch.column(column);
                        encode_value(&mut encoder, array, row, batch.schema_ref().field(column), pg_field)?;
                    }
                    let mut data = encoder.take_copy();
                    if let Some(header) = header.lock().expect("COPY header").take() {
                        data.data = [header.as_bytes(), &data.data].concat().into();
                    }
                    Ok(data)
                })
                .collect(),
        };
        futures::stream::iter(encoded)
    });
    let header_alone = futures::stream::once(async move { header_alone.lock().expect("COPY header").take() })
        .filter_map(|header| futures::future::ready(header.map(|h| Ok(CopyData::new(h.into_bytes().into())))));
    Ok(Response::CopyOut(CopyResponse::new(0, columns, rows.chain(header_alone))))
}

/// Serves `COPY ... TO STDOUT` in the simple query protocol (psql's `\copy`).
#[derive(Debug)]
pub(super) struct CopyToClientHook;

#[async_trait]
impl QueryHook for CopyToClientHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Copy { source, to: true, target: CopyTarget::Stdout, options, legacy_options, .. } = statement
        else {
            return None;
        };
        Some(copy_out(source, options, legacy_options, session_context).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        is_copy_to_client(statement).then(|| {
            Err(statement_error(
                "0A000",
                "COPY TO STDOUT works in the simple query protocol (as psql's \\copy sends it)".into(),
            ))
        })
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0)
    }

    fn format_of(sql: &str) -> PgWireResult<CopyFormat> {
        match parse(sql) {
            Statement::Copy { options, legacy_options, .. } => copy_format(&options, &legacy_options),
            other => panic!("not a COPY: {other}"),
        }
    }

    #[test]
    fn psql_copy_options_in_both_syntaxes() {
        let csv_header = CopyFormat { csv: true, header: true, delimiter: None, null: None, quote: None, escape: None };
        assert_eq!(format_of("COPY ( select 1 ) TO STDOUT csv header").unwrap(), csv_header);
        assert_eq!(format_of("COPY audit_events TO STDOUT (FORMAT csv, HEADER true)").unwrap(), csv_header);
        let text = format_of("COPY audit_events TO STDOUT").unwrap();
        assert!(!text.csv && !text.header);
        let error = format_of("COPY audit_events TO STDOUT (FORMAT binary)").unwrap_err().to_string();
        assert!(error.contains("FORMAT binary"), "{error}");
    }

    #[test]
    fn only_copies_to_the_client_are_served() {
        assert!(is_copy_to_client(&parse("COPY (select 1) TO STDOUT")));
        assert!(!is_copy_to_client(&parse("COPY audit_events TO '/tmp/x.csv'")));
        assert!(!is_copy_to_client(&parse("COPY audit_events FROM STDIN")));
        assert!(!is_copy_to_client(&parse("COPY audit_events FROM '/etc/passwd'")));
        assert_eq!(
            source_query(&copy_source("COPY audit_events (id, seq) TO STDOUT")),
            "select id, seq from audit_events"
        );
    }

    fn copy_source(sql: &str) -> CopySource {
        match parse(sql) {
            Statement::Copy { source, .. } => source,
            other => panic!("not a COPY: {other}"),
        }
    }

    #[test]
    fn csv_header_fields_are_quoted_like_postgres() {
        assert_eq!(csv_header_field("actor_id", ',', '"'), "actor_id");
        assert_eq!(csv_header_field("a,b", ',', '"'), "\"a,b\"");
        assert_eq!(csv_header_field("say \"hi\"", ',', '"'), "\"say \"\"hi\"\"\"");
    }
}
