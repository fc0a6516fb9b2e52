//! What "read-only" means for every way SQL reaches the log: the one
//! definition the Postgres endpoint, `auditlake query` and the HTTP API use.
//! It looks at parsed statements only; it never runs one.

use datafusion::sql::sqlparser::ast::Statement;

/// Whether a statement only reads (or only touches its own session), the
/// one definition of "read-only" for every way SQL reaches the log.
/// `SELECT ... INTO t` is a write wherever it hides (a CTE, a subquery,
/// `EXPLAIN`, `COPY (...) TO STDOUT`, a cursor's query): it creates a table.
pub fn is_read_only(statement: &Statement) -> bool {
    !selects_into(statement) && reads_only(statement)
}

/// Whether a `SELECT ... INTO` is anywhere in `statement`.
pub fn selects_into(statement: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Query, SetExpr, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Into;
    fn has_into(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.into.is_some(),
            SetExpr::SetOperation { left, right, .. } => has_into(left) || has_into(right),
            _ => false,
        }
    }
    impl Visitor for Into {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if has_into(&query.body) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    statement.visit(&mut Into).is_break()
}

fn reads_only(statement: &Statement) -> bool {
    match statement {
        Statement::Explain { statement, .. } => reads_only(statement),
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::Set(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => true,
        _ => false,
    }
}

/// The first two words of a statement (`CREATE TABLE`), for messages.
pub fn statement_verb(statement: &Statement) -> String {
    statement.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}
