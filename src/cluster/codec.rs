//! How a scan fragment crosses the network: encoded with its scope, signed
//! with the cluster's signing key, and refused on arrival unless the
//! signature holds and every name in it is what a fragment may name.
//!
//! The encoding is JSON with the filters in DataFusion's own protobuf form
//! and the buffered rows in Arrow IPC; the 32 bytes before it are its
//! HMAC-SHA256. Nothing outside the signed bytes is read.

use std::io::Cursor;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::Serializeable;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::model;
use crate::query::Scope;
use crate::query::engine::Choice;
use crate::query::fragment::{FragmentScanExec, ScanFragment, SegmentFile};

use super::ClusterKey;

/// Bytes of the signature in front of an encoded fragment.
const SIGNATURE_BYTES: usize = 32;
/// The most partitions a fragment may ask a worker to run it in.
const MAX_FRAGMENT_PARTITIONS: usize = 256;

/// Encodes and decodes [`FragmentScanExec`] for datafusion-distributed.
#[derive(Debug)]
pub struct FragmentCodec {
    key: ClusterKey,
}

impl FragmentCodec {
    pub fn new(key: ClusterKey) -> Self {
        FragmentCodec { key }
    }
}

/// A fragment as it travels.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFragment {
    scope: WireScope,
    segments: Vec<(String, u64)>,
    projection: Option<Vec<usize>>,
    /// Each filter in DataFusion's protobuf form, base64.
    filters: Vec<String>,
    limit: Option<usize>,
    /// Arrow IPC stream, base64; absent when there are none.
    buffered: Option<String>,
    partitions: usize,
    distributed: bool,
    why: String,
}

#[derive(Serialize, Deserialize)]
enum WireScope {
    All,
    Org(String),
}

impl PhysicalExtensionCodec for FragmentCodec {
    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<FragmentScanExec>() else {
            return Err(DataFusionError::Internal(format!("{} cannot be sent to a worker", node.name())));
        };
        let json = serde_json::to_vec(&to_wire(scan.fragment())?).map_err(|e| external("encode", e))?;
        buf.extend_from_slice(hmac::sign(&self.key.signing, &json).as_ref());
        buf.extend_from_slice(&json);
        Ok(())
    }

    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() || buf.len() < SIGNATURE_BYTES {
            return Err(refused("not a scan fragment"));
        }
        let (signature, json) = buf.split_at(SIGNATURE_BYTES);
        hmac::verify(&self.key.signing, json, signature).map_err(|_| refused("its signature does not hold"))?;
        let wire: WireFragment = serde_json::from_slice(json).map_err(|e| refused(&e.to_string()))?;
        Ok(Arc::new(FragmentScanExec::new(from_wire(wire)?)?))
    }
}

fn refused(why: &str) -> DataFusionError {
    DataFusionError::Plan(format!("scan fragment refused: {why}"))
}

fn external(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("scan fragment {what}: {e}"))
}

fn to_wire(fragment: &ScanFragment) -> Result<WireFragment> {
    let filters = fragment.filters.iter().map(|f| Ok(BASE64.encode(f.to_bytes()?))).collect::<Result<Vec<_>>>()?;
    let buffered = match fragment.buffered.as_slice() {
        [] => None,
        batches => {
            let mut writer = StreamWriter::try_new(Vec::new(), &model::schema())?;
            for batch in batches {
                writer.write(batch)?;
            }
            Some(BASE64.encode(writer.into_inner()?))
        }
    };
    Ok(WireFragment {
        scope: match &fragment.scope {
            Scope::All => WireScope::All,
            Scope::Org(org) => WireScope::Org(org.clone()),
        },
        segments: fragment.segments.iter().map(|s| (s.file.clone(), s.size_bytes)).collect(),
        projection: fragment.projection.clone(),
        filters,
        limit: fragment.limit,
        buffered,
        partitions: fragment.partitions,
        distributed: fragment.engine.distributed,
        why: fragment.engine.why.clone(),
    })
}

fn from_wire(wire: WireFragment) -> Result<ScanFragment> {
    let columns = model::schema().fields().len();
    if wire.projection.as_ref().is_some_and(|p| p.iter().any(|&c| c >= columns)) {
        return Err(refused("a column it names is not in the table"));
    }
    if !(1..=MAX_FRAGMENT_PARTITIONS).contains(&wire.partitions) {
        return Err(refused(&format!("{} partitions", wire.partitions)));
    }
    let segments =
        wire.segments.into_iter().map(|(file, size)| SegmentFile::named(file, size)).collect::<Result<Vec<_>>>()?;
    let filters = wire
        .filters
        .iter()
        .map(|f| Expr::from_bytes(&BASE64.decode(f).map_err(|e| refused(&e.to_string()))?))
        .collect::<Result<Vec<_>>>()?;
    let buffered = match wire.buffered {
        None => Vec::new(),
        Some(ipc) => {
            let bytes = BASE64.decode(ipc).map_err(|e| refused(&e.to_string()))?;
            let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
            if reader.schema() != model::schema() {
                return Err(refused("its buffered rows are not of the table's schema"));
            }
            reader.collect::<Result<Vec<RecordBatch>, _>>()?
        }
    };
    Ok(ScanFragment {
        scope: match wire.scope {
            WireScope::All => Scope::All,
            WireScope::Org(org) => Scope::Org(org),
        },
        segments,
        projection: wire.projection,
        filters,
        limit: wire.limit,
        buffered,
        partitions: wire.partitions,
        engine: Choice { distributed: wire.distributed, why: wire.why },
        _buffered_memory: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn fragment(scope: Scope) -> ScanFragment {
        ScanFragment {
            scope,
            segments: vec![
                SegmentFile::named("00000000000000000001-00000000000000000009.parquet".into(), 100).unwrap(),
            ],
            projection: Some(vec![0, 1]),
            filters: vec![col("actor_id").eq(lit("u1"))],
            limit: None,
            buffered: Vec::new(),
            partitions: 2,
            engine: Choice { distributed: true, why: "set by the session".into() },
            _buffered_memory: None,
        }
    }

    fn encode(codec: &FragmentCodec, fragment: ScanFragment) -> Vec<u8> {
        let mut buf = Vec::new();
        let node: Arc<dyn ExecutionPlan> = Arc::new(FragmentScanExec::new(fragment).unwrap());
        codec.try_encode(node, &mut buf, &datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {}).unwrap();
        buf
    }

    fn decode(codec: &FragmentCodec, buf: &[u8]) -> Result<ScanFragment> {
        let ctx = TaskContext::default();
        let node =
            codec.try_decode(buf, &[], &ctx, &datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {})?;
        Ok(node.downcast_ref::<FragmentScanExec>().unwrap().fragment().clone())
    }

    #[test]
    fn a_fragment_arrives_with_its_scope_and_filters() {
        let codec = FragmentCodec::new(ClusterKey::from_secret(b"a key of the cluster, long enough"));
        let back = decode(&codec, &encode(&codec, fragment(Scope::Org("acme".into())))).unwrap();
        assert_eq!(back.scope, Scope::Org("acme".into()));
        assert_eq!(back.filters, vec![col("actor_id").eq(lit("u1"))]);
        assert_eq!(back.segments[0].file, "00000000000000000001-00000000000000000009.parquet");
    }

    #[test]
    fn a_forged_or_foreign_fragment_is_refused() {
        let codec = FragmentCodec::new(ClusterKey::from_secret(b"a key of the cluster, long enough"));
        let signed = encode(&codec, fragment(Scope::Org("acme".into())));
        // Another organisation's name in place of the signed one.
        let forged = String::from_utf8_lossy(&signed[SIGNATURE_BYTES..]).replace("acme", "glob");
        let mut tampered = signed[..SIGNATURE_BYTES].to_vec();
        tampered.extend_from_slice(forged.as_bytes());
        let error = decode(&codec, &tampered).unwrap_err().to_string();
        assert!(error.contains("signature does not hold"), "{error}");
        // Signed under another cluster's key.
        let other = FragmentCodec::new(ClusterKey::from_secret(b"another cluster's key, long enough"));
        let error = decode(&codec, &encode(&other, fragment(Scope::All))).unwrap_err().to_string();
        assert!(error.contains("signature does not hold"), "{error}");
        // No scope at all, signed with the right key.
        let json = br#"{"segments":[],"projection":null,"filters":[],"limit":null,"buffered":null,"partitions":1,"distributed":true,"why":""}"#;
        let mut unscoped = hmac::sign(&codec.key.signing, json).as_ref().to_vec();
        unscoped.extend_from_slice(json);
        let error = decode(&codec, &unscoped).unwrap_err().to_string();
        assert!(error.contains("missing field `scope`"), "{error}");
        // A path in place of a segment file name.
        let mut escaping = fragment(Scope::All);
        escaping.segments = vec![SegmentFile::named("a.parquet".into(), 1).unwrap()];
        let json = String::from_utf8_lossy(&encode(&codec, escaping)[SIGNATURE_BYTES..])
            .replace("a.parquet", "../../etc.parquet");
        let mut path = hmac::sign(&codec.key.signing, json.as_bytes()).as_ref().to_vec();
        path.extend_from_slice(json.as_bytes());
        let error = decode(&codec, &path).unwrap_err().to_string();
        assert!(error.contains("is not a segment file name"), "{error}");
    }
}
