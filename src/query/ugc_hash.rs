//! `ugc_hash(value)`: the form a UGC value takes on disk in an organisation
//! whose policy hashes UGC, so that `where content_id = ugc_hash('PAGE-1')`
//! finds the events about that page without the page id being stored.
//!
//! It hashes with the key of the session's organisation. A session that
//! reads every organisation names one: `ugc_hash(value, org)`; an
//! organisation's session may not hash under another organisation's key.
//! Stable within a statement, so DataFusion folds it into a constant and the
//! comparison is pushed down to the segments like any literal.
//!
//! It never reads events, and never reveals a key.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

use super::{Scope, SessionScope};
use crate::policy::UgcKey;

#[derive(Debug)]
struct UgcHash {
    signature: Signature,
    scope: SessionScope,
    key: Option<Arc<UgcKey>>,
}

impl PartialEq for UgcHash {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.scope, &other.scope)
    }
}

impl Eq for UgcHash {}

impl std::hash::Hash for UgcHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.scope).hash(state);
    }
}

/// `ugc_hash` for a session of `scope`, hashing with `key` (none: the server
/// has no UGC key, and the function says so).
pub fn ugc_hash(scope: SessionScope, key: Option<Arc<UgcKey>>) -> ScalarUDF {
    let signature = Signature::one_of(
        vec![TypeSignature::Exact(vec![DataType::Utf8]), TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8])],
        Volatility::Stable,
    );
    ScalarUDF::from(UgcHash { signature, scope, key })
}

impl UgcHash {
    /// The organisation whose key hashes row `row`'s value.
    fn org_of<'a>(&'a self, named: Option<&'a str>) -> Result<&'a str> {
        match (self.scope.get(), named) {
            (None, _) => plan_err!("ugc_hash: the session has no organisation yet"),
            (Some(Scope::Org(own)), None) => Ok(own),
            (Some(Scope::Org(own)), Some(org)) if org == own => Ok(own),
            (Some(Scope::Org(_)), Some(org)) => {
                plan_err!("ugc_hash: permission denied for organisation {org:?}; this session reads only its own")
            }
            (Some(Scope::All), Some(org)) => Ok(org),
            (Some(Scope::All), None) => {
                plan_err!(
                    "ugc_hash(value) needs an organisation in a session that reads every organisation: ugc_hash(value, org)"
                )
            }
        }
    }
}

impl ScalarUDFImpl for UgcHash {
    fn name(&self) -> &str {
        "ugc_hash"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(key) = &self.key else {
            return plan_err!("ugc_hash: this server has no UGC key (start it with --ugc-key-file)");
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let values = as_string_array(&arrays[0])?;
        let orgs = arrays.get(1).map(|a| as_string_array(a)).transpose()?;
        let hashed = (0..args.number_rows)
            .map(|row| {
                if values.is_null(row) || orgs.is_some_and(|o| o.is_null(row)) {
                    return Ok(None);
                }
                let org = self.org_of(orgs.map(|o| o.value(row)))?;
                Ok(Some(key.hash(org, values.value(row))))
            })
            .collect::<Result<StringArray>>()?;
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let hashed: ArrayRef = Arc::new(hashed);
        if all_scalar {
            return Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&hashed, 0)?));
        }
        Ok(ColumnarValue::Array(hashed))
    }
}
