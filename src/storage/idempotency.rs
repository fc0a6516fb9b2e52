//! Idempotency: an event whose organisation already sent its `id` within the
//! idempotency window is acknowledged again, and not stored again. A client
//! that retries a batch after a timeout, a dropped connection or a server
//! crash therefore never duplicates what was already accepted.
//!
//! Owns the set of recently stored `(org_id, id)` keys and how it is rebuilt
//! at start-up from the segments and the WAL. It must never report a key as
//! seen before the event holding it is durable (the WAL writer adds keys only
//! after its fsync), and never forget a key younger than the window while it
//! holds fewer than its most keys.
//!
//! Memory is bounded: past [`DEFAULT_MAX_IDEMPOTENCY_KEYS`] keys (about
//! 50 bytes each), the oldest are forgotten early and counted, so a day of
//! heavy ingest shortens the window instead of taking the server's memory.
//! Keys are also kept in the order they came, so expiry takes them off the
//! front a slice at a time ([`MAX_FORGOTTEN_PER_CALL`]) instead of scanning
//! every key while the WAL writer waits for the lock.
//!
//! A key is the first 128 bits of SHA-256 over the length-prefixed org id and
//! id: 16 bytes per remembered event whatever the ids' length, and no
//! organisation can craft an id that collides with another's, which a fast
//! non-cryptographic hash would allow.

use std::collections::{HashMap, HashSet, VecDeque};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use ring::digest::{Context, SHA256};

use super::packed;

/// Default idempotency window: ids of events received in the last 24 hours.
pub const DEFAULT_IDEMPOTENCY_WINDOW_HOURS: u64 = 24;

/// Default most keys remembered: a day of 185 events a second, in about
/// 800 MB.
pub const DEFAULT_MAX_IDEMPOTENCY_KEYS: usize = 16 * 1024 * 1024;

/// The most keys one call of [`RecentIds::forget_expired`] forgets: how
/// long the WAL writer may wait for the lock behind it.
pub const MAX_FORGOTTEN_PER_CALL: usize = 64 * 1024;

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
    max_keys: usize,
    received_at_us: HashMap<EventKey, i64>,
    /// The keys in the order they were remembered, with their receive time.
    arrival: VecDeque<(i64, EventKey)>,
    forgotten_early: u64,
}

impl RecentIds {
    pub fn new(window_us: i64, max_keys: usize) -> Self {
        RecentIds {
            window_us,
            max_keys: max_keys.max(1),
            received_at_us: HashMap::new(),
            arrival: VecDeque::new(),
            forgotten_early: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.received_at_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received_at_us.is_empty()
    }

    /// Keys forgotten before their window ended, to stay within the most keys.
    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early
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

    fn insert(&mut self, key: EventKey, received_at_us: i64) {
        self.received_at_us.insert(key, received_at_us);
        self.arrival.push_back((received_at_us, key));
        while self.received_at_us.len() > self.max_keys {
            if self.forget_front().is_none() {
                break;
            }
            self.forgotten_early += 1;
        }
    }

    /// Forgets the key that came first, unless it was remembered again
    /// since; returns when it was received.
    fn forget_front(&mut self) -> Option<i64> {
        let (at, key) = self.arrival.pop_front()?;
        if self.received_at_us.get(&key) == Some(&at) {
            self.received_at_us.remove(&key);
        }
        Some(at)
    }

    /// Remembers stored events (call only once they are durable).
    pub fn remember(&mut self, keys: impl IntoIterator<Item = EventKey>, received_at_us: i64) {
        for key in keys {
            self.insert(key, received_at_us);
        }
    }

    /// Remembers the events of a stored batch received at or after `cutoff_us`.
    pub fn remember_batch(&mut self, batch: &RecordBatch, cutoff_us: i64) {
        let received =
            batch.column_by_name("received_at").expect("received_at column").as_primitive::<TimestampMicrosecondType>();
        for (row, key) in batch_keys(batch).into_iter().enumerate() {
            let at = received.value(row);
            if at >= cutoff_us {
                self.insert(key, at);
            }
        }
    }

    /// Forgets up to [`MAX_FORGOTTEN_PER_CALL`] keys received before the
    /// window that ends at `now_us`, oldest first; call again while it
    /// returns that many. A key that came out of order (an import of old
    /// events) waits behind younger ones: kept longer, never shorter.
    pub fn forget_expired(&mut self, now_us: i64) -> usize {
        let cutoff = self.cutoff_us(now_us);
        let mut forgotten = 0;
        while forgotten < MAX_FORGOTTEN_PER_CALL && self.arrival.front().is_some_and(|(at, _)| *at < cutoff) {
            self.forget_front();
            forgotten += 1;
        }
        forgotten
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
        let mut recent = RecentIds::new(1_000, DEFAULT_MAX_IDEMPOTENCY_KEYS);
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|id| event_key("o", id));
        recent.remember([a], 500);
        let mut pending = HashSet::from([b]);
        let fresh = recent.fresh(&[a, b, c, c, d], &mut pending);
        assert_eq!(fresh, Fresh { rows: vec![2, 4], duplicates: 3 });
        assert!(pending.contains(&c) && pending.contains(&d));
    }

    #[test]
    fn keys_expire_after_the_window_and_not_before() {
        let mut recent = RecentIds::new(1_000, DEFAULT_MAX_IDEMPOTENCY_KEYS);
        recent.remember([event_key("o", "old")], 100);
        recent.remember([event_key("o", "new")], 600);
        assert_eq!(recent.forget_expired(1_100), 0, "received exactly at the cutoff: kept");
        assert_eq!(recent.forget_expired(1_101), 1);
        assert_eq!(recent.len(), 1);
        let fresh = recent.fresh(&[event_key("o", "old"), event_key("o", "new")], &mut HashSet::new());
        assert_eq!(fresh.rows, vec![0]);
    }

    #[test]
    fn past_the_most_keys_the_oldest_are_forgotten_early() {
        let mut recent = RecentIds::new(1_000_000, 3);
        let keys: Vec<EventKey> = (0..5).map(|i| event_key("o", &i.to_string())).collect();
        for (i, key) in keys.iter().enumerate() {
            recent.remember([*key], i as i64);
        }
        assert_eq!((recent.len(), recent.forgotten_early()), (3, 2));
        let fresh = recent.fresh(&keys, &mut HashSet::new());
        assert_eq!(fresh.rows, vec![0, 1], "the two oldest were forgotten");
    }

    #[test]
    fn expiry_forgets_a_slice_at_a_time() {
        let mut recent = RecentIds::new(10, usize::MAX);
        let many = MAX_FORGOTTEN_PER_CALL + 5;
        recent.remember((0..many).map(|i| event_key("o", &i.to_string())), 0);
        recent.remember([event_key("o", "young")], 100);
        assert_eq!(recent.forget_expired(100), MAX_FORGOTTEN_PER_CALL);
        assert_eq!(recent.forget_expired(100), 5);
        assert_eq!(recent.forget_expired(100), 0);
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn a_key_remembered_again_is_kept_for_its_later_time() {
        let mut recent = RecentIds::new(10, usize::MAX);
        let key = event_key("o", "k");
        recent.remember([key], 0);
        recent.remember([key], 50);
        assert_eq!(recent.forget_expired(55), 1, "the early arrival leaves the queue");
        assert_eq!(recent.len(), 1, "the key stays for its later receive time");
        assert_eq!(recent.forget_expired(61), 1);
        assert!(recent.is_empty());
    }
}
