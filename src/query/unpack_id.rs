//! `unpack_id`: the function that turns a packed id's two segment columns
//! back into its text. It appears in plans (`EXPLAIN`), never in users' SQL.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, internal_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use crate::storage::packed;

/// Name of the function that turns a packed id's two segment columns back
/// into its text; it appears in plans (`EXPLAIN`), not in SQL.
pub(super) const UNPACK_ID: &str = "unpack_id";

/// `unpack_id(uuid_bytes, text)`: see [`packed::unpack`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct UnpackId {
    signature: Signature,
}

impl UnpackId {
    pub(super) fn new() -> Self {
        let args = vec![DataType::FixedSizeBinary(16), DataType::Utf8];
        UnpackId { signature: Signature::exact(args, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for UnpackId {
    fn name(&self) -> &str {
        UNPACK_ID
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [uuids, others] = arrays.as_slice() else {
            return internal_err!("{UNPACK_ID} takes two arguments");
        };
        Ok(ColumnarValue::Array(Arc::new(packed::unpack(uuids.as_fixed_size_binary(), others.as_string::<i32>()))))
    }
}
