//! Segment bytes kept in memory between queries: every session of the
//! process shares one cache of Parquet footers (with page indexes) and one of
//! the small byte ranges queries read (bloom filters, the pages a lookup
//! lands on). Segments never change once written, so nothing in them goes
//! stale; a file's path and size identify its bytes.
//!
//! Without it, each lookup re-read and re-parsed the footer, bloom filters and
//! page index of every segment it touched, one object-store request each: of
//! a 38 ms content-id lookup over 10M events, 29 ms were opening files.
//!
//! Both caches are bounded (least recently used entries go first); large
//! reads (scans) bypass the range cache so they never push the hot set out.
//! This module never decides what is read, only whether it is read again.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::TableReference;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetAccessPlan, ParquetFileReaderFactory,
};
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheKey, CacheValue};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::storage::segment::LiveSegment;

/// Default memory for cached segment bytes, footers included.
pub const DEFAULT_SEGMENT_CACHE_BYTES: usize = 256 * 1024 * 1024;
/// Of the cache, the part for footers and page indexes.
const METADATA_SHARE_DIVISOR: usize = 4;
/// Reads larger than this are scans, not lookups: never cached.
const MAX_CACHED_RANGE_BYTES: u64 = 1024 * 1024;

/// The caches every session of one process shares (clones share them).
#[derive(Clone)]
pub struct SegmentCache {
    metadata: Arc<FileMetadataCache>,
    ranges: Arc<DefaultCache<RangeKey, CachedRange>>,
}

impl fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentCache {{ ranges: {} bytes }}", self.ranges.memory_used())
    }
}

impl SegmentCache {
    pub fn new(bytes: usize) -> Self {
        let metadata_bytes = bytes / METADATA_SHARE_DIVISOR;
        SegmentCache {
            metadata: Arc::new(DefaultCache::new(metadata_bytes)),
            ranges: Arc::new(DefaultCache::new(bytes - metadata_bytes)),
        }
    }

    /// Readers of segment files in `store` that go through the caches.
    pub(super) fn reader_factory(&self, store: Arc<dyn ObjectStore>) -> Arc<dyn ParquetFileReaderFactory> {
        Arc::new(CachingReaderFactory {
            inner: CachedParquetFileReaderFactory::new(store, Arc::clone(&self.metadata)),
            cache: self.clone(),
        })
    }

    /// Bytes `range` of `segment`'s file, through the range cache (the
    /// content index's head and buckets are read this way).
    pub(super) async fn read(&self, segment: &LiveSegment, range: Range<u64>) -> object_store::Result<Bytes> {
        let location = segment.object_path();
        let key = RangeKey {
            file: location.as_ref().into(),
            file_size: segment.meta.size_bytes,
            start: range.start,
            end: range.end,
        };
        if let Some(CachedRange(bytes)) = self.ranges.get(&key) {
            return Ok(bytes);
        }
        let bytes = segment.object_store().get_range(&location, range).await?;
        remember(&self.ranges, &key, &bytes);
        Ok(bytes)
    }
}

impl Default for SegmentCache {
    fn default() -> Self {
        SegmentCache::new(DEFAULT_SEGMENT_CACHE_BYTES)
    }
}

/// One byte range of one segment file (of one size: a file written again
/// under the same name is another file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RangeKey {
    file: Arc<str>,
    file_size: u64,
    start: u64,
    end: u64,
}

impl CacheKey for RangeKey {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.file.len()
    }

    fn table_ref(&self) -> Option<&TableReference> {
        None
    }
}

#[derive(Debug, Clone)]
struct CachedRange(Bytes);

impl CacheValue for CachedRange {
    fn size(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug)]
struct CachingReaderFactory {
    /// Reads footers through the metadata cache, counts bytes read.
    inner: CachedParquetFileReaderFactory,
    cache: SegmentCache,
}

impl ParquetFileReaderFactory for CachingReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::common::Result<Box<dyn AsyncFileReader + Send>> {
        let location: Arc<str> = file.object_meta.location.as_ref().into();
        let file_size = file.object_meta.size;
        let selects_rows = file.extension::<ParquetAccessPlan>().is_some();
        let inner = self.inner.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(CachingReader { inner, location, file_size, ranges: Arc::clone(&self.cache.ranges), selects_rows }))
    }
}

struct CachingReader {
    inner: Box<dyn AsyncFileReader + Send>,
    location: Arc<str>,
    file_size: u64,
    ranges: Arc<DefaultCache<RangeKey, CachedRange>>,
    /// The scan reads selected rows only (a content lookup's access plan).
    selects_rows: bool,
}

impl CachingReader {
    fn key(&self, range: &Range<u64>) -> RangeKey {
        RangeKey { file: Arc::clone(&self.location), file_size: self.file_size, start: range.start, end: range.end }
    }

    fn remember(&self, range: &Range<u64>, bytes: &Bytes) {
        remember(&self.ranges, &self.key(range), bytes);
    }
}

/// Keeps `bytes`, read for `key`, unless the read was a scan's.
fn remember(ranges: &DefaultCache<RangeKey, CachedRange>, key: &RangeKey, bytes: &Bytes) {
    if key.end - key.start <= MAX_CACHED_RANGE_BYTES {
        // A copy: the read may be a slice of a larger buffer, which the
        // cache would otherwise keep alive without counting it.
        ranges.put(key, CachedRange(Bytes::copy_from_slice(bytes)));
    }
}

impl AsyncFileReader for CachingReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        if let Some(CachedRange(bytes)) = self.ranges.get(&self.key(&range)) {
            return futures::future::ready(Ok(bytes)).boxed();
        }
        async move {
            let bytes = self.inner.get_bytes(range.clone()).await?;
            self.remember(&range, &bytes);
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        let cached: Vec<Option<Bytes>> =
            ranges.iter().map(|r| self.ranges.get(&self.key(r)).map(|CachedRange(bytes)| bytes)).collect();
        async move {
            let missing: Vec<Range<u64>> =
                ranges.iter().zip(&cached).filter(|(_, hit)| hit.is_none()).map(|(r, _)| r.clone()).collect();
            let mut fetched = if missing.is_empty() {
                Vec::new().into_iter()
            } else {
                self.inner.get_byte_ranges(missing.clone()).await?.into_iter()
            };
            let mut out = Vec::with_capacity(ranges.len());
            for (range, hit) in ranges.iter().zip(cached) {
                match hit {
                    Some(bytes) => out.push(bytes),
                    None => {
                        let bytes = fetched.next().expect("one answer per range asked for");
                        self.remember(range, &bytes);
                        out.push(bytes);
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }

    /// A scan of selected rows gets the footer with its page index.
    /// DataFusion loads it only when page statistics may prune something,
    /// but the reader also needs its offsets to fetch and skip single pages
    /// of a row selection: without them a content lookup (whose time window
    /// covers whole row groups) fetched and decompressed every page of each
    /// column chunk it touched, 20 MB for 95 rows at 100M events. Other scans
    /// keep DataFusion's choice: page indexes of every footer did not fit the
    /// metadata cache at 100M events, and a scan of all segments slowed 3x.
    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        if !self.selects_rows {
            return self.inner.get_metadata(options);
        }
        let options = options.cloned().unwrap_or_default().with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.inner.get_metadata(Some(&options)).await }.boxed()
    }
}
