//! The one mapping of query errors to SQLSTATE codes. DataFusion reports
//! every failure as its own error type, which pgwire would send as `XX000`
//! (internal error); clients (and the self-audit records) need the class of
//! what went wrong: bad SQL, an unknown name, a limit, a cancel.
//!
//! It changes only the code, never the message.

use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use pgwire::error::{ErrorInfo, PgWireError};

use crate::query::{LimitHit, limit_hit};

/// A statement's error with SQLSTATE `code`: the one way this endpoint
/// builds one.
pub fn statement_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// `error` with the SQLSTATE its cause calls for, when we know one.
pub fn classify(error: PgWireError) -> PgWireError {
    let code = match &error {
        PgWireError::ApiError(inner) if inner.is::<ParserError>() => Some("42601"),
        PgWireError::ApiError(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(cause) => sqlstate(cause.find_root()),
            None => None,
        },
        _ => None,
    };
    match code {
        Some(code) => statement_error(code, error_text(&error)),
        None => error,
    }
}

fn error_text(error: &PgWireError) -> String {
    match error {
        PgWireError::ApiError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

fn sqlstate(cause: &DataFusionError) -> Option<&'static str> {
    if let Some(hit) = limit_hit(cause) {
        return Some(match hit {
            LimitHit::Timeout | LimitHit::Canceled => "57014",
            LimitHit::TooManyRows | LimitHit::ValueTooLarge => "54000",
            LimitHit::OutOfMemory => "53200",
        });
    }
    Some(match cause {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::SchemaError(error, _) => match error.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            _ => "42P18",
        },
        DataFusionError::Plan(message)
            if message.contains("Invalid function") || message.starts_with("table function '") =>
        {
            "42883"
        }
        DataFusionError::Plan(message) if message.starts_with("table '") && message.ends_with("not found") => "42P01",
        DataFusionError::Plan(message) if message.starts_with("unrecognized configuration parameter") => "42704",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::Execution(message) if message == super::subqueries::MORE_THAN_ONE_ROW => "21000",
        // A worker of the cluster went away mid-query (see `cluster`): the
        // connection to it failed, not the statement.
        DataFusionError::External(inner) if inner.downcast_ref::<tonic::Status>().is_some_and(is_lost_worker) => {
            "08006"
        }
        _ => return None,
    })
}

/// Whether a worker's answer says the connection to it was lost.
fn is_lost_worker(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(error: DataFusionError) -> String {
        match classify(PgWireError::ApiError(Box::new(error))) {
            PgWireError::UserError(info) => info.code,
            other => format!("unclassified: {other}"),
        }
    }

    #[test]
    fn causes_map_to_their_class() {
        let cancel = DataFusionError::Execution("canceling statement due to user request".into());
        assert_eq!(code(cancel), "57014");
        let wrapped = DataFusionError::Context(
            "while streaming".into(),
            Box::new(DataFusionError::Execution("canceling statement after the statement timeout".into())),
        );
        assert_eq!(code(wrapped), "57014");
        assert_eq!(code(DataFusionError::Plan("table 'auditlake.public.x' not found".into())), "42P01");
        let unknown_setting = DataFusionError::Plan("unrecognized configuration parameter \"x\"".into());
        assert_eq!(code(unknown_setting), "42704");
        let too_many = format!("{} 10 rows, the most one statement may return", crate::query::TOO_MANY_ROWS);
        assert_eq!(code(DataFusionError::ResourcesExhausted(too_many)), "54000");
        // A memory refusal that names rows is still a memory refusal.
        let memory = "query memory limit of 1024 bytes reached (buffered rows wanted 84276 more)";
        assert_eq!(code(DataFusionError::ResourcesExhausted(memory.into())), "53200");
        let two_rows = DataFusionError::Execution(crate::server::subqueries::MORE_THAN_ONE_ROW.into());
        assert_eq!(code(two_rows), "21000");
        assert!(code(DataFusionError::Internal("bug".into())).starts_with("unclassified"));
    }
}
