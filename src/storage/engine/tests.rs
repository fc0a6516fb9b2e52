use datafusion::arrow::array::AsArray;

use super::maintenance::may_hold_expired;
use super::*;
use crate::model::{self, Event};
use crate::storage::manifest::SegmentMeta;
use crate::storage::segment;
use crate::storage::wal::WalWriter;

fn event(i: usize) -> Event {
    Event {
        time_us: 1_795_000_000_000_000 + i as i64,
        id: format!("e{i}"),
        org_id: if i.is_multiple_of(2) { "acme" } else { "globex" }.into(),
        actor_id: format!("u{}", i % 3),
        action: "confluence.page.viewed".into(),
        ..Event::default()
    }
}

fn config(dir: &Path) -> StorageConfig {
    StorageConfig { seal_after_ms: 3_600_000, ..StorageConfig::new(dir) }
}

fn rows(snapshot: &Snapshot) -> usize {
    snapshot.buffer.iter().map(|b| b.num_rows()).sum::<usize>()
        + snapshot.segments.iter().map(|s| s.meta.rows as usize).sum::<usize>()
}

async fn append_n(storage: &Storage, from: usize, n: usize) -> (Seq, Seq) {
    let appended = storage.append((from..from + n).map(event).collect()).await.unwrap();
    assert_eq!(appended.duplicates, 0);
    appended.seqs.expect("new events")
}

/// A gap in the WAL's sequence numbers is named by file and by the byte
/// offset of the record where it shows, for whoever opens the file.
#[test]
fn a_sequence_gap_names_the_record_where_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    fs::create_dir_all(&wal_dir).unwrap();
    let mut writer = WalWriter::create(&wal_dir, 1, Arc::default()).unwrap();
    let mut gap_at = wal::HEADER_BYTES;
    for (i, (first_seq, n)) in [(1, 2), (3, 1), (5, 2)].into_iter().enumerate() {
        let batch = model::events_to_batch(&(0..n).map(event).collect::<Vec<_>>(), 0);
        let mut framed = Vec::new();
        wal::encode_record(first_seq, &wal::encode_batch(&batch), &mut framed);
        writer.append(&framed).unwrap();
        if i < 2 {
            gap_at += framed.len() as u64;
        }
    }
    writer.sync().unwrap();
    match Storage::open(config(dir.path())) {
        Err(StorageError::CorruptWal { file, offset, reason }) => {
            assert_eq!(file, wal::file_path(&wal_dir, 1));
            assert_eq!(offset, gap_at, "{reason}");
            assert!(reason.contains("expected seq 4, found 5"), "{reason}");
        }
        other => panic!("expected a corrupt WAL, got {other:?}"),
    }
}

#[tokio::test]
async fn appends_are_visible_sealed_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(append_n(&storage, 0, 3).await, (1, 3));
        assert_eq!(append_n(&storage, 3, 2).await, (4, 5));
        assert_eq!(rows(&storage.snapshot()), 5);
        let s = storage.clone();
        let meta = tokio::task::spawn_blocking(move || s.seal_now()).await.unwrap().unwrap().unwrap();
        assert_eq!((meta.min_seq, meta.max_seq, meta.rows), (1, 5, 5));
        assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));
        assert_eq!(append_n(&storage, 5, 4).await, (6, 9));
        let snapshot = storage.snapshot();
        assert_eq!((snapshot.segments.len(), rows(&snapshot)), (1, 9));
        storage.shutdown();
    }
    let storage = Storage::open(config(dir.path())).unwrap();
    let stats = storage.stats();
    assert_eq!((stats.sealed_seq, stats.last_seq, stats.buffered_rows), (5, 9, 4));
    assert_eq!(append_n(&storage, 9, 1).await, (10, 10));
    // Only the WAL file written after the seal remains.
    assert_eq!(wal::list_files(&dir.path().join("wal")).unwrap().len(), 1);
}

/// Events `range`, received `age_ms` ago.
fn received(range: std::ops::Range<usize>, age_ms: i64) -> Vec<Event> {
    let at = chrono::Utc::now().timestamp_micros() - age_ms * 1_000;
    range.map(|i| Event { received_at_us: at, ..event(i) }).collect()
}

#[tokio::test]
async fn a_retried_batch_is_stored_once_across_sealing_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        let stored = |seqs| Appended { seqs: Some(seqs), duplicates: 0 };
        assert_eq!(storage.append(received(0..10, 0)).await.unwrap(), stored((1, 10)));
        assert_eq!(storage.append(received(0..10, 0)).await.unwrap(), Appended { seqs: None, duplicates: 10 });
        // Five new, five stored already, and one line repeating another.
        let mut overlapping = received(5..15, 0);
        overlapping.push(overlapping[7].clone());
        assert_eq!(storage.append(overlapping).await.unwrap(), Appended { seqs: Some((11, 15)), duplicates: 6 });
        // The same id in another organisation is another event.
        let elsewhere = Event { org_id: "initech".into(), ..received(0..1, 0).remove(0) };
        assert_eq!(storage.append(vec![elsewhere]).await.unwrap(), stored((16, 16)));

        seal(&storage).expect("a segment");
        assert_eq!(storage.append(received(0..15, 0)).await.unwrap().duplicates, 15, "sealed ids are remembered");
        assert_eq!(storage.append(received(15..20, 0)).await.unwrap(), stored((17, 21)));
        // Shutdown seals nothing: the WAL and the manifest are all the next start has.
        storage.shutdown();
    }
    let storage = Storage::open(config(dir.path())).unwrap();
    assert_eq!(storage.stats().sealed_seq, 16);
    let retried = storage.append(received(0..25, 0)).await.unwrap();
    assert_eq!(retried, Appended { seqs: Some((22, 26)), duplicates: 20 }, "segment and WAL ids recalled");
    assert_eq!(rows(&storage.snapshot()), 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_store_a_batch_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(config(dir.path())).unwrap();
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move { storage.append(received(0..100, 0)).await.unwrap() })
        })
        .collect();
    let mut duplicates = 0;
    for attempt in tries {
        duplicates += attempt.await.unwrap().duplicates;
    }
    assert_eq!(duplicates, 700);
    assert_eq!(rows(&storage.snapshot()), 100);
}

#[tokio::test]
async fn ids_older_than_the_window_are_not_recalled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { idempotency_window_ms: 3_600_000, ..config(dir.path()) };
    {
        let storage = Storage::open(config.clone()).unwrap();
        storage.append(received(0..3, 2 * 3_600_000)).await.unwrap();
        storage.append(received(3..6, 0)).await.unwrap();
        storage.shutdown();
    }
    let storage = Storage::open(config).unwrap();
    let again = storage.append(received(0..6, 0)).await.unwrap();
    assert_eq!(again, Appended { seqs: Some((7, 9)), duplicates: 3 }, "only the recent three are remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_appends_share_buffer_batches_and_seals_taken_meanwhile_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(config(dir.path())).unwrap();
    for i in 0..200 {
        append_n(&storage, i, 1).await;
    }
    let snapshot = storage.snapshot();
    let sizes = |snapshot: &Snapshot| snapshot.buffer.iter().map(|b| b.num_rows()).collect::<Vec<_>>();
    assert_eq!(sizes(&snapshot), [128, 64, 8], "200 one-event appends, merged as a binary counter carries");
    // And so after a restart, replayed from 200 WAL records.
    storage.shutdown();
    drop((snapshot, storage));
    let storage = Storage::open(config(dir.path())).unwrap();
    let snapshot = storage.snapshot();
    assert_eq!(sizes(&snapshot), [128, 64, 8], "replayed into the same batches");
    let seqs: Vec<i64> = {
        use datafusion::arrow::datatypes::Int64Type;
        let seq = |b: &RecordBatch| b.column_by_name("seq").unwrap().as_primitive::<Int64Type>().values().to_vec();
        snapshot.buffer.iter().flat_map(seq).collect()
    };
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());

    // One-event appends from many tasks while seals run: every seq once.
    let appends: Vec<_> = (0..400)
        .map(|i| {
            let s = storage.clone();
            tokio::spawn(async move { append_n(&s, 200 + i, 1).await })
        })
        .collect();
    let sealer = storage.clone();
    let seals = tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            sealer.seal_now().unwrap();
        }
    });
    for append in appends {
        append.await.unwrap();
    }
    seals.await.unwrap();
    let s = storage.clone();
    tokio::task::spawn_blocking(move || s.seal_now()).await.unwrap().unwrap();
    let snapshot = storage.snapshot();
    assert_eq!(rows(&snapshot), 600);
    let covered: u64 = snapshot.segments.iter().map(|s| s.meta.max_seq - s.meta.min_seq + 1).sum();
    assert_eq!(covered, 600, "segments cover every seq once");
    assert_eq!(snapshot.segments.iter().map(|s| s.meta.rows).sum::<u64>(), 600);
}

#[tokio::test]
async fn concurrent_appends_get_distinct_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(config(dir.path())).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = storage.clone();
            tokio::spawn(async move { append_n(&s, i * 10, 10).await })
        })
        .collect();
    let mut ranges = Vec::new();
    for t in tasks {
        ranges.push(t.await.unwrap());
    }
    ranges.sort();
    for (i, (first, last)) in ranges.iter().enumerate() {
        assert_eq!((*first, *last), (i as Seq * 10 + 1, i as Seq * 10 + 10));
    }
}

#[tokio::test]
async fn half_written_segment_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        append_n(&storage, 0, 5).await;
        storage.shutdown();
    }
    let debris = dir.path().join("segments").join("00000000000000000001-00000000000000000005.parquet");
    fs::write(&debris, b"PAR1 half a segment").unwrap();
    let storage = Storage::open(config(dir.path())).unwrap();
    assert!(!debris.exists(), "unpublished segment file is removed");
    assert_eq!(rows(&storage.snapshot()), 5, "its events come back from the WAL");
}

/// Two acknowledged batches of five events in `data`'s first WAL file, with
/// the storage shut down; returns that file, for a test to damage.
async fn two_batches_in_one_wal_file(data: &Path) -> PathBuf {
    {
        let storage = Storage::open(config(data)).unwrap();
        append_n(&storage, 0, 5).await;
        append_n(&storage, 5, 5).await;
        storage.shutdown();
    }
    wal::list_files(&data.join("wal")).unwrap().remove(0).1
}

#[tokio::test]
async fn corrupt_wal_record_before_the_tail_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let path = two_batches_in_one_wal_file(dir.path()).await;
    let mut bytes = fs::read(&path).unwrap();
    bytes[30] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = Storage::open(config(dir.path())).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("offset 8"), "{err}");
}

#[tokio::test]
async fn torn_tail_is_truncated_and_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = two_batches_in_one_wal_file(dir.path()).await;
    let len = fs::metadata(&path).unwrap().len();
    File::options().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        assert_eq!(storage.stats().last_seq, 5, "the torn second batch was never acknowledged");
        assert_eq!(append_n(&storage, 5, 2).await, (6, 7));
        storage.shutdown();
    }
    let storage = Storage::open(config(dir.path())).unwrap();
    assert_eq!(rows(&storage.snapshot()), 7);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Storage::open(config(dir.path())).unwrap();
    assert!(matches!(Storage::open(config(dir.path())), Err(StorageError::Locked { .. })));
}

fn seal(storage: &Storage) -> Option<SegmentMeta> {
    let s = storage.clone();
    std::thread::spawn(move || s.seal_now()).join().unwrap().unwrap()
}

fn compact(storage: &Storage) -> Result<Option<SegmentMeta>, StorageError> {
    let s = storage.clone();
    std::thread::spawn(move || s.compact_now()).join().unwrap()
}

fn segment_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("segments")).unwrap().count()
}

/// Appends `n` batches of ten events, sealing each into its own segment.
async fn small_segments(storage: &Storage, n: usize) {
    for i in 0..n {
        append_n(storage, i * 10, 10).await;
        seal(storage);
    }
}

fn compacting(dir: &Path) -> StorageConfig {
    StorageConfig { compaction: CompactionPolicy { target_rows: 1_000, min_inputs: 3 }, ..config(dir) }
}

/// An engine whose merges only the test makes: its sealer and compactor
/// threads are stopped (appends, seals and merges called directly still
/// work), so that none merges a run between the test's steps.
fn without_background_merges(storage: Storage) -> Storage {
    storage.shutdown();
    storage
}

#[tokio::test]
async fn compaction_merges_small_segments_sorted_and_keeps_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = without_background_merges(Storage::open(compacting(dir.path())).unwrap());
    small_segments(&storage, 6).await;
    append_n(&storage, 60, 5).await; // stays buffered
    assert_eq!(compact(&storage).unwrap().map(|m| (m.min_seq, m.max_seq, m.rows)), Some((1, 60, 60)));
    assert_eq!(compact(&storage).unwrap(), None, "one segment left: nothing to merge");
    assert_eq!(segment_files(dir.path()), 1, "inputs are deleted once nobody reads them");
    let snapshot = storage.snapshot();
    assert_eq!((snapshot.segments.len(), rows(&snapshot)), (1, 65));

    let file = File::open(snapshot.segments[0].local_path().unwrap()).unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let all = datafusion::arrow::compute::concat_batches(&crate::storage::packed::segment_schema(), &batches).unwrap();
    let text = |name| datafusion::arrow::array::AsArray::as_string::<i32>(all.column_by_name(name).unwrap());
    let (orgs, actors) = (text("org_id"), text("actor_id"));
    let times = datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>(
        all.column_by_name("time").unwrap(),
    );
    let keys: Vec<(&str, &str, i64)> =
        (0..all.num_rows()).map(|i| (orgs.value(i), actors.value(i), times.value(i))).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "merged segment is sorted by (org_id, actor_id, time)");
    let mut ids: Vec<String> =
        datafusion::arrow::array::AsArray::as_string::<i32>(all.column_by_name("id_text").unwrap())
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60);
    drop(snapshot);
    storage.shutdown();
    drop(storage);
    let storage = Storage::open(compacting(dir.path())).unwrap();
    assert_eq!((storage.stats().segments, storage.stats().sealed_seq, rows(&storage.snapshot())), (1, 60, 65));
}

#[tokio::test]
async fn a_reader_keeps_retired_segments_until_it_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let storage = without_background_merges(Storage::open(compacting(dir.path())).unwrap());
    small_segments(&storage, 3).await;
    let reader = storage.snapshot();
    compact(&storage).unwrap().unwrap();
    assert_eq!(segment_files(dir.path()), 4, "the reader's three files and the merged one");
    assert!(reader.segments.iter().all(|s| s.local_path().unwrap().exists()));
    drop(reader);
    assert_eq!(segment_files(dir.path()), 1);
}

#[tokio::test]
async fn failed_compaction_changes_nothing() {
    for op in [crate::storage::faults::IoOp::SegmentWrite, crate::storage::faults::IoOp::ManifestWrite] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let storage =
            without_background_merges(Storage::open_with_faults(compacting(dir.path()), Arc::clone(&faults)).unwrap());
        small_segments(&storage, 3).await;
        faults.inject(op, crate::storage::faults::FaultKind::Eio, Some(1));
        assert!(compact(&storage).is_err(), "{op:?}");
        assert_eq!((storage.stats().segments, segment_files(dir.path())), (3, 3), "{op:?}");
        assert_eq!(compact(&storage).unwrap().map(|m| m.rows), Some(30), "{op:?}: retried");
        storage.shutdown();
        drop(storage);
        let storage = Storage::open(compacting(dir.path())).unwrap();
        assert_eq!((storage.stats().segments, rows(&storage.snapshot())), (1, 30), "{op:?}");
    }
}

#[tokio::test]
async fn bulk_load_writes_segments_after_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        append_n(&storage, 0, 5).await;
        let loader = storage.clone();
        let chunk = |ids: std::ops::Range<usize>| model::events_to_batch(&ids.map(event).collect::<Vec<_>>(), 0);
        let chunks = vec![vec![chunk(100..110)], vec![chunk(0..0)], vec![chunk(110..120), chunk(120..130)]];
        let loaded = std::thread::spawn(move || loader.bulk_load(chunks.into_iter())).join().unwrap().unwrap();
        assert_eq!(loaded, Some((6, 35)));
        assert_eq!(append_n(&storage, 200, 2).await, (36, 37));
        let stats = storage.stats();
        assert_eq!((stats.segments, stats.sealed_seq, stats.buffered_rows, rows(&storage.snapshot())), (3, 35, 2, 37));
        storage.shutdown();
    }
    let storage = Storage::open(config(dir.path())).unwrap();
    let stats = storage.stats();
    assert_eq!((stats.segments, stats.sealed_seq, stats.last_seq, rows(&storage.snapshot())), (3, 35, 37, 37));
    assert_eq!(wal::list_files(&dir.path().join("wal")).unwrap().len(), 1);
}

#[tokio::test]
async fn seqs_reserved_by_an_unfinished_bulk_load_are_given_out_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(config(dir.path())).unwrap();
        append_n(&storage, 0, 5).await;
        let s = storage.clone();
        std::thread::spawn(move || {
            s.seal_now().unwrap();
            s.rotate_wal(1_000).unwrap() // then "crash" before any segment is published
        })
        .join()
        .unwrap();
        storage.shutdown();
    }
    let storage = Storage::open(config(dir.path())).unwrap();
    assert_eq!(append_n(&storage, 5, 1).await, (6, 6));
    storage.shutdown();
    drop(storage);
    let storage = Storage::open(config(dir.path())).unwrap();
    assert_eq!((storage.stats().last_seq, rows(&storage.snapshot())), (6, 6));
}

#[allow(clippy::single_range_in_vec_init)] // id ranges read best as `&[0..5]`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_leaves_segments_that_say_what_they_hold_and_merges_them_after() {
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionPolicy { target_rows: 1_000, min_inputs: 2 };
    let storage = Storage::open(StorageConfig { compaction, ..config(dir.path()) }).unwrap();
    // Two segments of acme and globex (events alternate), ten each.
    for from in [0, 10] {
        append_n(&storage, from, 10).await;
        let sealer = storage.clone();
        tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
    }
    let cutoff = event(0).time_us + 4;
    let expiry = Expiry { org: "acme".into(), before_us: cutoff };
    let expirer = storage.clone();
    let removed = tokio::task::spawn_blocking(move || expirer.expire(&[expiry])).await.unwrap().unwrap();
    assert_eq!(removed, 2, "acme's events 0 and 2");
    let first = storage.snapshot().segments[0].meta.clone();
    assert_eq!((first.rows, first.min_time_us), (8, event(1).time_us), "the oldest row left");
    assert_eq!(first.orgs, Some(vec![("acme".to_string(), 3), ("globex".to_string(), 5)]));
    // Merging a thinned segment with its neighbour keeps every row left.
    let merger = storage.clone();
    tokio::task::spawn_blocking(move || merger.compact_now().unwrap()).await.unwrap();
    assert_eq!((storage.stats().segments, storage.stats().segment_rows), (1, 18));
    storage.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_emptied_of_an_organisation_is_not_copied_again_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(config(dir.path())).unwrap();
    // acme, beta and globex in one segment: beta lies inside the range
    // of org ids whatever retention removes of it.
    let orgs = ["acme", "beta", "globex"];
    let events: Vec<Event> = (0..9).map(|i| Event { org_id: orgs[i % 3].into(), ..event(i) }).collect();
    storage.append(events).await.unwrap();
    let sealer = storage.clone();
    tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
    let expiry = Expiry { org: "beta".into(), before_us: event(100).time_us };
    let expirer = storage.clone();
    let first = expiry.clone();
    let removed = tokio::task::spawn_blocking(move || expirer.expire(&[first])).await.unwrap().unwrap();
    assert_eq!(removed, 3);
    let segments = storage.snapshot().segments.clone();
    let meta = &segments[0].meta;
    assert_eq!((meta.min_org_id.as_str(), meta.max_org_id.as_str()), ("acme", "globex"));
    assert!(meta.min_time_us < expiry.before_us, "acme's and globex's old events keep it old");
    assert!(!may_hold_expired(meta, &expiry), "the next pass leaves it alone");
    storage.shutdown();
}

/// The ids stored in `storage`'s segments, each once, or a panic.
fn sealed_ids(storage: &Storage) -> std::collections::BTreeSet<String> {
    let mut ids = std::collections::BTreeSet::new();
    for segment in storage.snapshot().segments.iter() {
        let scan = segment.scan_columns(&["id_text"]).unwrap(); // the ids here are not UUIDs
        segment::for_each_batch(storage.segment_store(), scan, |batch| {
            for id in batch.column(0).as_string::<i32>().iter().flatten() {
                assert!(ids.insert(id.to_owned()), "{id} stored twice");
            }
            Ok(())
        })
        .unwrap();
    }
    ids
}

#[test]
fn retention_while_segments_are_sealed_and_merged_removes_exactly_what_expired() {
    const BATCHES: usize = 24;
    const PER_BATCH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let compaction = CompactionPolicy { target_rows: 400, min_inputs: 2 };
    let storage = Storage::open(StorageConfig { compaction, ..config(dir.path()) }).unwrap();
    // acme's events before the cutoff (the first half) expire.
    let cutoff = event(BATCHES * PER_BATCH / 2).time_us;
    let expiry = Expiry { org: "acme".into(), before_us: cutoff };
    let writing = std::sync::atomic::AtomicBool::new(true);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let removed = std::thread::scope(|s| {
        s.spawn(|| {
            for batch in 0..BATCHES {
                runtime.block_on(append_n(&storage, batch * PER_BATCH, PER_BATCH));
                storage.seal_now().unwrap();
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        s.spawn(|| {
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                storage.compact_now().unwrap();
            }
        });
        let expirer = s.spawn(|| {
            let mut removed = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                removed += storage.expire(std::slice::from_ref(&expiry)).unwrap();
            }
            removed
        });
        expirer.join().unwrap()
    });
    let removed = removed + storage.expire(std::slice::from_ref(&expiry)).unwrap();
    // Every run merged: otherwise the compactor thread may merge the next
    // one while the files are compared below.
    while storage.compact_now().unwrap().is_some() {}

    let expected: std::collections::BTreeSet<String> = (0..BATCHES * PER_BATCH)
        .filter(|i| !(i % 2 == 0 && event(*i).time_us < cutoff))
        .map(|i| format!("e{i}"))
        .collect();
    assert_eq!(removed as usize, BATCHES * PER_BATCH / 4, "each expired event removed once");
    assert_eq!(sealed_ids(&storage), expected);
    let files = |storage: &Storage| storage.snapshot().segments.iter().map(|s| s.meta.file.clone()).collect();
    let before: Vec<String> = files(&storage);
    assert_eq!(storage.expire(std::slice::from_ref(&expiry)).unwrap(), 0);
    assert_eq!(files(&storage), before, "no segment rewritten twice for the same cutoff");
    storage.shutdown();
    drop(storage);
    // And so it stays once reopened.
    let storage = Storage::open(config(dir.path())).unwrap();
    assert_eq!(sealed_ids(&storage), expected);
    storage.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_whose_organisation_rows_are_all_young_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(crate::storage::faults::Faults::default());
    let storage = Storage::open_with_faults(config(dir.path()), Arc::clone(&faults)).unwrap();
    // globex's events are old, acme's young: the segment is as old as
    // globex's, and lists acme.
    let events: Vec<Event> = (0..10)
        .map(|i| match i % 2 {
            0 => Event { org_id: "globex".into(), ..event(i) },
            _ => Event { org_id: "acme".into(), ..event(100 + i) },
        })
        .collect();
    storage.append(events).await.unwrap();
    let sealer = storage.clone();
    tokio::task::spawn_blocking(move || sealer.seal_now().unwrap()).await.unwrap();
    let expiry = Expiry { org: "acme".into(), before_us: event(50).time_us };
    assert!(may_hold_expired(&storage.snapshot().segments[0].meta, &expiry));
    // Any segment write now fails: an expiry that copies the segment
    // reports it.
    faults.inject(crate::storage::faults::IoOp::SegmentWrite, crate::storage::faults::FaultKind::Eio, None);
    let expirer = storage.clone();
    let removed = tokio::task::spawn_blocking(move || expirer.expire(&[expiry])).await.unwrap();
    assert_eq!(removed.unwrap(), 0, "nothing to remove, nothing copied");
    faults.clear();
    storage.shutdown();
}

// `expected_ids(&[0..5])` is a list of id ranges that happens to hold one.
#[allow(clippy::single_range_in_vec_init)]
mod faults {
    use super::*;
    use crate::storage::faults::{FaultKind, Faults, IoOp};

    fn open(dir: &Path, faults: &Arc<Faults>) -> Storage {
        Storage::open_with_faults(config(dir), Arc::clone(faults)).unwrap()
    }

    fn ids(storage: &Storage) -> Vec<String> {
        let mut ids = Vec::new();
        let snapshot = storage.snapshot();
        assert!(snapshot.segments.is_empty(), "these tests read the buffer only");
        for batch in &snapshot.buffer {
            let column = batch.column_by_name("id").unwrap();
            let strings = datafusion::arrow::array::AsArray::as_string::<i32>(column);
            ids.extend(strings.iter().map(|s| s.unwrap().to_owned()));
        }
        ids
    }

    fn expected_ids(ranges: &[std::ops::Range<usize>]) -> Vec<String> {
        ranges.iter().flat_map(|r| r.clone().map(|i| format!("e{i}"))).collect()
    }

    async fn reopen(dir: &Path, storage: Storage) -> Storage {
        storage.shutdown();
        drop(storage);
        open(dir, &Arc::default())
    }

    #[tokio::test]
    async fn a_batch_past_the_record_limit_is_refused_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig { max_record_bytes: 64 * 1024, ..config(dir.path()) };
        let storage = Storage::open(config.clone()).unwrap();
        let large: Vec<Event> =
            (0..10).map(|i| Event { attributes: Some(format!("\"{}\"", "x".repeat(10_000))), ..event(i) }).collect();
        let err = storage.append(large).await.unwrap_err();
        assert!(matches!(err, StorageError::RecordTooLarge { limit_bytes: 65_536, .. }), "{err}");
        assert_eq!(storage.stats().last_seq, 0, "nothing written, no seq taken");
        assert_eq!(append_n(&storage, 10, 2).await, (1, 2));
        storage.shutdown();
        drop(storage);
        // The next start reads back what was acknowledged.
        let storage = Storage::open(config).unwrap();
        assert_eq!(ids(&storage), expected_ids(&[10..12]));
    }

    #[tokio::test]
    async fn disk_full_refuses_then_recovers_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let storage = open(dir.path(), &faults);
        assert_eq!(append_n(&storage, 0, 5).await, (1, 5));
        faults.inject(IoOp::WalWrite, FaultKind::NoSpace, None);
        for attempt in 0..3 {
            let err = storage.append((5..8).map(event).collect()).await.unwrap_err();
            assert!(matches!(err, StorageError::DiskFull(_)), "attempt {attempt}: {err}");
        }
        assert_eq!(storage.stats().last_seq, 5, "a refused batch takes no seqs");
        let health = storage.health();
        assert!(health.len() == 1 && health[0].contains("disk is full"), "{health:?}");
        faults.clear();
        assert_eq!(append_n(&storage, 8, 2).await, (6, 7), "writing resumes by itself");
        assert_eq!(storage.health(), Vec::<String>::new());
        assert_eq!(ids(&storage), expected_ids(&[0..5, 8..10]));
        let storage = reopen(dir.path(), storage).await;
        assert_eq!(ids(&storage), expected_ids(&[0..5, 8..10]));
    }

    #[tokio::test]
    async fn short_write_or_eio_is_cut_away_and_never_read_back() {
        for kind in [FaultKind::ShortWrite, FaultKind::Eio] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            let storage = open(dir.path(), &faults);
            append_n(&storage, 0, 5).await;
            faults.inject(IoOp::WalWrite, kind, Some(1));
            let err = storage.append((5..50).map(event).collect()).await.unwrap_err();
            assert!(matches!(err, StorageError::WalWrite(_)), "{kind:?}: {err}");
            assert_eq!(append_n(&storage, 50, 3).await, (6, 8));
            let storage = reopen(dir.path(), storage).await;
            assert_eq!(ids(&storage), expected_ids(&[0..5, 50..53]), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn failed_fsync_stops_writing_until_restart_and_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let storage = open(dir.path(), &faults);
        append_n(&storage, 0, 5).await;
        faults.inject(IoOp::WalSync, FaultKind::Eio, Some(1));
        let err = storage.append((5..7).map(event).collect()).await.unwrap_err();
        assert!(matches!(err, StorageError::WalPoisoned(_)), "{err}");
        // The fault is gone, but this WAL file is not trusted again.
        let err = storage.append((7..9).map(event).collect()).await.unwrap_err();
        assert!(matches!(err, StorageError::WalPoisoned(_)), "{err}");
        let health = storage.health();
        assert!(health.len() == 1 && health[0].contains("until restart"), "{health:?}");
        assert_eq!(ids(&storage), expected_ids(&[0..5]), "nothing unacknowledged is visible");
        let storage = reopen(dir.path(), storage).await;
        // The unacknowledged batch may or may not have reached the disk;
        // the acknowledged ones must have, and nothing else may appear.
        let after = ids(&storage);
        assert!(after == expected_ids(&[0..5]) || after == expected_ids(&[0..7]), "{after:?}");
        let (first, _) = append_n(&storage, 100, 1).await;
        assert_eq!(first, after.len() as Seq + 1);
    }

    #[tokio::test]
    async fn failed_seal_keeps_events_buffered_and_leaves_no_debris() {
        for op in [IoOp::SegmentWrite, IoOp::ManifestWrite] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            let storage = open(dir.path(), &faults);
            append_n(&storage, 0, 5).await;
            faults.inject(op, FaultKind::NoSpace, Some(1));
            let sealer = storage.clone();
            let err = tokio::task::spawn_blocking(move || sealer.seal_now()).await.unwrap().unwrap_err();
            assert!(err.to_string().contains("No space left"), "{op:?}: {err}");
            let health = storage.health();
            assert!(health.len() == 1 && health[0].contains("sealing fails"), "{op:?}: {health:?}");
            assert_eq!(fs::read_dir(dir.path().join("segments")).unwrap().count(), 0, "{op:?}");
            assert_eq!(ids(&storage), expected_ids(&[0..5]), "{op:?}");
            append_n(&storage, 5, 1).await;
            let sealer = storage.clone();
            let meta = tokio::task::spawn_blocking(move || sealer.seal_now()).await.unwrap().unwrap().unwrap();
            assert_eq!((meta.min_seq, meta.max_seq), (1, 6), "{op:?}");
            assert_eq!(storage.health(), Vec::<String>::new(), "{op:?}: a seal that works clears it");
            let storage = reopen(dir.path(), storage).await;
            assert_eq!((storage.stats().sealed_seq, storage.stats().buffered_rows), (6, 0), "{op:?}");
        }
    }
}
