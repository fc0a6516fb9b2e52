//! How a prepared statement's result columns are described to the client
//! (RowDescription after Describe): as PostgreSQL describes them, where the
//! Arrow type alone would name another type.
//!
//! The values are still encoded from their Arrow type; a column is only
//! described otherwise when the bytes sent are what PostgreSQL sends for the
//! described type in that format: `name` and `pg_node_tree` are text on the
//! wire in both formats, `xid` is four bytes as `int4` is, a one-character
//! `"char"` is its byte, and `aclitem[]` is only ever read as text
//! (PostgreSQL has no binary `aclitem`). `pg_lsn` (eight bytes in binary),
//! `int2vector`/`oidvector` (arrays in binary) and the arrays of `"char"`
//! and `oid` (held as `text[]` and `int4[]`; a binary array names its
//! element type) are described as such only for text results. It never
//! changes a value, and never describes a column the plan does not produce.
//!
//! Prepared statements are described by [`DescribedAsPostgres`], the query
//! parser's descriptions restated; queries on the simple protocol (psql,
//! psycopg2, psycopg 3 without parameters) by [`DescribedQueryHook`], the
//! last hook, which runs a query as datafusion-postgres would and restates
//! its RowDescription.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::types::format::FormatOptions;

/// Field metadata naming the PostgreSQL type a column is described as
/// (`name`, `char`, ...), set by the catalog on the columns PostgreSQL types
/// so and by the functions that answer a `name`.
pub const PG_TYPE_KEY: &str = "auditlake.pg_type";

/// The prefix datafusion-postgres gives a column it must rename because a
/// `*` next to it repeats its name (`SELECT n.oid, n.*`); PostgreSQL names
/// both `oid`.
const REPEATED_NAME_PREFIX: &str = "__alias_";

/// datafusion-postgres' query parser, with its result descriptions restated.
pub struct DescribedAsPostgres<P> {
    pub inner: Arc<P>,
}

type PlannedStatement = (String, Option<(Statement, LogicalPlan)>);

#[async_trait]
impl<P> QueryParser for DescribedAsPostgres<P>
where
    P: QueryParser<Statement = PlannedStatement> + Send + Sync,
{
    type Statement = PlannedStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.inner.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let described = self.inner.get_result_schema(statement, column_format)?;
        let Some((_, plan)) = &statement.1 else { return Ok(described) };
        // A statement described before its portal is bound has no formats
        // yet; the client may then ask for any.
        Ok(all_as_postgres(described, plan.schema().fields(), column_format.is_some()))
    }
}

/// Queries on the simple protocol, run as datafusion-postgres runs them
/// (planned from the statement's text, results in text), described as
/// PostgreSQL describes them. Registered last: every other hook has passed.
#[derive(Debug)]
pub struct DescribedQueryHook;

#[async_trait]
impl QueryHook for DescribedQueryHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !matches!(statement, Statement::Query(_)) {
            return None;
        }
        Some(run_described(statement, session, client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _session: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

async fn run_described(
    statement: &Statement,
    session: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    let frame = session.sql(&statement.to_string()).await.map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let schema = Arc::clone(frame.schema().inner());
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let mut response = encode_dataframe(frame, &Format::UnifiedText, Some(options)).await?;
    let fields = all_as_postgres(response.row_schema().to_vec(), schema.fields(), true);
    let rows = std::mem::replace(response.data_rows(), Box::pin(futures::stream::empty()));
    Ok(Response::Query(QueryResponse::new(Arc::new(fields), rows)))
}

/// The result columns as PostgreSQL describes them, each from the plan's
/// field at its place (unchanged if the two do not line up).
fn all_as_postgres(described: Vec<FieldInfo>, fields: &Fields, known_format: bool) -> Vec<FieldInfo> {
    if described.len() != fields.len() {
        return described;
    }
    described.into_iter().zip(fields.iter()).map(|(field, arrow)| as_postgres(field, arrow, known_format)).collect()
}

/// One result column as PostgreSQL describes it.
fn as_postgres(described: FieldInfo, arrow: &Field, known_format: bool) -> FieldInfo {
    let name = described.name().strip_prefix(REPEATED_NAME_PREFIX).unwrap_or(described.name()).to_string();
    let may_be_binary = !known_format || described.format() == FieldFormat::Binary;
    let data_type = match (arrow.data_type(), arrow.metadata().get(PG_TYPE_KEY).map(String::as_str)) {
        // PostgreSQL resolves an untyped NULL in a result to text.
        (DataType::Null, _) => Type::TEXT,
        (DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8, Some(named)) => match named {
            "name" => Type::NAME,
            "char" => Type::CHAR,
            "pg_node_tree" => Type::PG_NODE_TREE,
            "pg_lsn" if !may_be_binary => Type::PG_LSN,
            "int2vector" if !may_be_binary => Type::INT2_VECTOR,
            "oidvector" if !may_be_binary => Type::OID_VECTOR,
            _ => described.datatype().clone(),
        },
        (DataType::Int32, Some("xid")) => Type::XID,
        // PostgreSQL has no binary form of `aclitem`: clients read it as text.
        (DataType::List(element), Some("_aclitem")) if element.data_type() == &DataType::Utf8 => Type::ACLITEM_ARRAY,
        // An array's binary form names its element type: text results only.
        (DataType::List(element), Some(named)) if !may_be_binary => match (element.data_type(), named) {
            (DataType::Utf8, "_char") => Type::CHAR_ARRAY,
            (DataType::Int32, "_oid") => Type::OID_ARRAY,
            _ => described.datatype().clone(),
        },
        _ => described.datatype().clone(),
    };
    FieldInfo::new(name, described.table_id(), described.column_id(), data_type, described.format())
        .with_format_options(Arc::clone(described.format_options()))
        .with_type_size(described.type_size())
        .with_type_modifier(described.type_modifier())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn described(name: &str, data_type: Type, format: FieldFormat) -> FieldInfo {
        FieldInfo::new(name.to_string(), None, None, data_type, format)
    }

    fn tagged(name: &str, data_type: DataType, pg_type: &str) -> Field {
        Field::new(name, data_type, true).with_metadata(HashMap::from([(PG_TYPE_KEY.into(), pg_type.into())]))
    }

    fn texts() -> DataType {
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
    }

    #[test]
    fn tagged_columns_are_described_by_postgresqls_type_where_the_bytes_agree() {
        let text = FieldFormat::Text;
        let binary = FieldFormat::Binary;
        let cases = [
            (tagged("relname", DataType::Utf8, "name"), text, true, Type::NAME),
            (tagged("relname", DataType::Utf8, "name"), binary, true, Type::NAME),
            (tagged("relkind", DataType::Utf8, "char"), binary, true, Type::CHAR),
            (tagged("relfrozenxid", DataType::Int32, "xid"), binary, true, Type::XID),
            (tagged("indkey", DataType::Utf8, "int2vector"), text, true, Type::INT2_VECTOR),
            // Binary int2vector is an array; ours would be its text.
            (tagged("indkey", DataType::Utf8, "int2vector"), binary, true, Type::TEXT),
            (tagged("indkey", DataType::Utf8, "int2vector"), text, false, Type::TEXT),
            // A tag on a type it does not fit is ignored.
            (tagged("n", DataType::Int64, "name"), text, true, Type::INT8),
            (Field::new("role", DataType::Null, true), text, true, Type::TEXT),
            (tagged("proacl", texts(), "_aclitem"), text, true, Type::ACLITEM_ARRAY),
            (tagged("proacl", texts(), "_aclitem"), text, false, Type::ACLITEM_ARRAY),
            (tagged("proargmodes", texts(), "_char"), binary, true, Type::TEXT_ARRAY),
        ];
        for (arrow, format, known, expected) in cases {
            let before = match arrow.data_type() {
                DataType::List(_) => Type::TEXT_ARRAY,
                DataType::Int32 => Type::INT4,
                DataType::Int64 => Type::INT8,
                DataType::Null => Type::UNKNOWN,
                _ => Type::TEXT,
            };
            let after = as_postgres(described(arrow.name(), before, format), &arrow, known);
            assert_eq!(after.datatype(), &expected, "{arrow:?} {format:?} {known}");
            assert_eq!(after.format(), format);
        }
    }

    #[test]
    fn a_column_renamed_for_a_repeated_name_is_named_as_postgresql_names_it() {
        let arrow = Field::new("__alias_oid", DataType::Int32, true);
        let after = as_postgres(described("__alias_oid", Type::OID, FieldFormat::Text), &arrow, true);
        assert_eq!((after.name(), after.datatype()), ("oid", &Type::OID));
    }
}
