//! Idempotency: an event whose organisation already sent its `id` within the
//! idempotency window is acknowledged again, and not stored again. A client
//! that retries a batch after a timeout, a dropped connection or a server
//! crash therefore never duplicates what was already accepted.
//!
//! Owns the set of recently stored `(org_id, id)` keys and how it is rebuilt
//! at start-up from the segments and the WAL. It must never report a key as
//! seen before the event holding it is durable (the WAL writer adds keys only
//! after its fsync), and never forget a key younger than the window.
//!
//! A key is the first 128 bits of SHA-256 over the length-prefixed org id and
//! id: 16 bytes per remembered event whatever the ids' length, and no
//! organisation can craft an id that collides with another's, which a fast
//! non-cryptographic hash would allow.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use ring::digest::{Context, SHA256};

use super::packed;

/// Default idempotency window: ids of events received in the last 24 hours.
pub const DEFAULT_IDEMPOTENCY_WINDOW_HOURS: u64 = 24;

/// What identifies an event for idempotency: its organisation and id.
pub type EventKey = [u8; 16];

/// The key of the event `id` of organisation `org_id`.
pub fn event_key(org_id: &str, id: &str) -> EventKey {
    let mut digest = Context::new(&SHA256);
    digest.update(&(org_id.len() as u64).to_le_bytes());
    digest.update(org_id.as_bytes());
    digest.update(id.as_bytes());
    let mut key = EventKey::default();
    key.copy_from_slice(&digest.finish().as_ref()[..16]);
    key
}

/// The keys of the events in a batch, in row order. Accepts a batch in the
/// table's schema (`id` as text) or in the segment schema (`id` packed).
pub fn batch_keys(batch: &RecordBatch) -> Vec<EventKey> {
    let orgs = batch.column_by_name("org_id").expect("org_id column").as_string::<i32>();
    let unpacked;
    let ids: &StringArray = match batch.column_by_name("id") {
        Some(ids) => ids.as_string::<i32>(),
        None => {
            let uuids = batch.column_by_name(&packed::uuid_column("id")).expect("packed id").as_fixed_size_binary();
            let texts = batch.column_by_name(&packed::text_column("id")).expect("packed id").as_string::<i32>();
            unpacked = packed::unpack(uuids, texts);
            &unpacked
        }
    };
    (0..batch.num_rows()).map(|row| event_key(orgs.value(row), ids.value(row))).collect()
}

/// Which rows of one append are new, given what is stored and what earlier
/// appends of the same group commit hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Fresh {
    /// Indices of the rows to store, ascending.
    pub rows: Vec<usize>,
    pub duplicates: usize,
}

/// The keys of events stored within the window, with when each was received.
#[derive(Debug)]
pub struct RecentIds {
    window_us: i64,
    received_at_us: HashMap<EventKey, i64>,
}

impl RecentIds {
    pub fn new(window_us: i64) -> Self {
        RecentIds { window_us, received_at_us: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.received_at_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received_at_us.is_empty()
    }

    /// The oldest receive time still inside the window at `now_us`.
    pub fn cutoff_us(&self, now_us: i64) -> i64 {
        now_us.saturating_sub(self.window_us)
    }

    /// Splits `keys` into new rows and duplicates: a key is a duplicate if it
    /// is stored, held by an earlier append of the group (`pending`), or
    /// repeats an earlier row of the same append. New keys join `pending`.
    pub fn fresh(&self, keys: &[EventKey], pending: &mut HashSet<EventKey>) -> Fresh {
        let mut rows = Vec::with_capacity(keys.len());
        for (row, key) in keys.iter().enumerate() {
            if !self.received_at_us.contains_key(key) && pending.insert(*key) {
                rows.push(row);
            }
        }
        let duplicates = keys.len() - rows.len();
        Fresh { rows, duplicates }
    }

    /// Remembers stored events (call only once they are durable).
    pub fn remember(&mut self, keys: impl IntoIterator<Item = EventKey>, received_at_us: i64) {
        for key in keys {
            self.received_at_us.insert(key, received_at_us);
        }
    }

    /// Remembers the events of a stored batch received at or after `cutoff_us`.
    pub fn remember_batch(&mut self, batch: &RecordBatch, cutoff_us: i64) {
        let received =
            batch.column_by_name("received_at").expect("received_at column").as_primitive::<TimestampMicrosecondType>();
        for (row, key) in batch_keys(batch).into_iter().enumerate() {
            let at = received.value(row);
            if at >= cutoff_us {
                self.received_at_us.insert(key, at);
            }
        }
    }

    /// Forgets events received before the window that ends at `now_us`.
    pub fn forget_expired(&mut self, now_us: i64) -> usize {
        let cutoff = self.cutoff_us(now_us);
        let before = self.received_at_us.len();
        self.received_at_us.retain(|_, at| *at >= cutoff);
        before - self.received_at_us.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_organisations_apart_and_cannot_be_shifted_across_the_boundary() {
        assert_eq!(event_key("acme", "e1"), event_key("acme", "e1"));
        assert_ne!(event_key("acme", "e1"), event_key("globex", "e1"));
        assert_ne!(event_key("ab", "c"), event_key("a", "bc"), "the org id is length-prefixed");
    }

    #[test]
    fn fresh_rows_skip_stored_pending_and_repeated_keys() {
        let mut recent = RecentIds::new(1_000);
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|id| event_key("o", id));
        recent.remember([a], 500);
        let mut pending = HashSet::from([b]);
        let fresh = recent.fresh(&[a, b, c, c, d], &mut pending);
        assert_eq!(fresh, Fresh { rows: vec![2, 4], duplicates: 3 });
        assert!(pending.contains(&c) && pending.contains(&d));
    }

    #[test]
    fn keys_expire_after_the_window_and_not_before() {
        let mut recent = RecentIds::new(1_000);
        recent.remember([event_key("o", "old")], 100);
        recent.remember([event_key("o", "new")], 600);
        assert_eq!(recent.forget_expired(1_100), 0, "received exactly at the cutoff: kept");
        assert_eq!(recent.forget_expired(1_101), 1);
        assert_eq!(recent.len(), 1);
        let fresh = recent.fresh(&[event_key("o", "old"), event_key("o", "new")], &mut HashSet::new());
        assert_eq!(fresh.rows, vec![0]);
    }
}
