//! Realistic demo activity: several organisations of Confluence/Jira-like
//! users viewing, editing and deleting content, logging in, and administering,
//! with a few planted incidents to investigate.
//!
//! The same seed and parameters always give the same events (ids included),
//! so demos, tests and benchmarks can refer to exact rows.
//!
//! Planted incidents (all in org `acme`, in the last two days of the window):
//! - `acme-u007` (alice.nguyen) is phished: failed logins from 203.0.113.50,
//!   then a success, then a mass export of pages from that address.
//! - `acme-u013` (mallory.jones) grants herself admin at 03:12.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use std::fmt::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;

use crate::model::{BatchBuilder, Event};
use crate::storage::packed;

/// Per-actor batches smaller than this on average are handed on as one.
const MIN_BATCH_ROWS: usize = 1024;

/// What a background event carries besides its fields: its id and request
/// id (random UUIDs, kept as bytes until someone needs them as text), and its
/// actor's place in segment order.
#[derive(Debug, Default)]
struct Background {
    ids: [[u8; 16]; 2],
    actor_slot: usize,
}

/// The demo's organisations and how many users each has; `acme` is the
/// busiest. Events are spread over users evenly, so over organisations by
/// their number of users. User ids (`acme-u007`) sort in the order they are
/// made.
const ORGS: [(&str, usize); 4] = [("acme", 60), ("globex", 35), ("initech", 20), ("umbrella", 12)];

/// How much activity, and of whom: the demo's small company, or the scale
/// investigation benchmarks are measured at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Organisations besides the demo's four (`org-05`, ...), and how many
    /// users each of them has.
    pub extra_orgs: usize,
    pub users_per_extra_org: usize,
    /// Users of each of the demo's four organisations, as in [`ORGS`] times this.
    pub demo_org_user_scale: usize,
    /// Distinct pages, and distinct issues per project ([`PROJECTS`]).
    pub pages: u32,
    pub issues_per_project: u32,
}

impl Shape {
    /// Four organisations, 127 users, 400 pages, 4,495 issues.
    pub const DEMO: Shape =
        Shape { extra_orgs: 0, users_per_extra_org: 0, demo_org_user_scale: 1, pages: 400, issues_per_project: 899 };
    /// 50 organisations, 20,018 users, 500,000 content ids (250,000 pages and
    /// 250,000 issues): the scale investigation latencies are measured at.
    pub const REALISTIC: Shape = Shape {
        extra_orgs: 46,
        users_per_extra_org: 391,
        demo_org_user_scale: 16,
        pages: 250_000,
        issues_per_project: 50_000,
    };

    /// Every organisation with its number of users, in name order.
    fn orgs(&self) -> Vec<(String, usize)> {
        let mut orgs: Vec<(String, usize)> =
            ORGS.iter().map(|(org, n)| (org.to_string(), n * self.demo_org_user_scale)).collect();
        orgs.extend((0..self.extra_orgs).map(|i| (format!("org-{:02}", i + ORGS.len() + 1), self.users_per_extra_org)));
        orgs.sort();
        orgs
    }
}
const FIRST_NAMES: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj", "olivia",
    "peggy", "rupert", "sybil",
];
const LAST_NAMES: [&str; 8] = ["nguyen", "smith", "garcia", "kim", "jones", "patel", "müller", "rossi"];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "atlassian-mobile/5.12 (iOS 17.5)",
];
const PAGE_WORDS: [&str; 12] = [
    "Roadmap",
    "Incident review",
    "Onboarding",
    "Q3 plan",
    "Architecture",
    "Pricing",
    "Runbook",
    "Hiring",
    "Retrospective",
    "Security policy",
    "Release notes",
    "Budget",
];
const PROJECTS: [&str; 5] = ["OPS", "WEB", "SEC", "FIN", "HR"];

/// The phished account and the address the attacker used.
pub const INCIDENT_ACTOR: &str = "acme-u007";
pub const INCIDENT_IP: &str = "203.0.113.50";

/// Weighted actions: (action, product, category, content kind, weight).
const ACTIONS: [(&str, &str, &str, Content, u32); 12] = [
    ("confluence.page.viewed", "confluence", "user_activity", Content::Page, 460),
    ("confluence.page.updated", "confluence", "user_activity", Content::Page, 80),
    ("confluence.page.created", "confluence", "user_activity", Content::Page, 25),
    ("confluence.page.exported", "confluence", "user_activity", Content::Page, 8),
    ("confluence.page.deleted", "confluence", "user_activity", Content::Page, 4),
    ("jira.issue.viewed", "jira", "user_activity", Content::Issue, 230),
    ("jira.issue.updated", "jira", "user_activity", Content::Issue, 90),
    ("jira.issue.created", "jira", "user_activity", Content::Issue, 30),
    ("jira.issue.deleted", "jira", "user_activity", Content::Issue, 5),
    ("auth.login.succeeded", "identity", "auth", Content::None, 55),
    ("auth.login.failed", "identity", "auth", Content::None, 8),
    ("admin.permission.changed", "admin", "admin", Content::Space, 5),
];

#[derive(Debug, Clone, Copy)]
enum Content {
    Page,
    Issue,
    Space,
    None,
}

#[derive(Debug)]
struct User {
    id: String,
    name: String,
    ip: String,
    agent: &'static str,
}

fn users(org_index: usize, org: &str, count: usize) -> Vec<User> {
    // Wide enough for every number, so that ids sort as they are made.
    let width = count.saturating_sub(1).to_string().len().max(3);
    (0..count)
        .map(|i| {
            let first = FIRST_NAMES[i % FIRST_NAMES.len()];
            let last = LAST_NAMES[(i / FIRST_NAMES.len() + org_index) % LAST_NAMES.len()];
            User {
                id: format!("{org}-u{i:0width$}"),
                name: format!("{first}.{last}"),
                ip: format!("10.{}.{}.{}", org_index % 250 + 1, i / 200, i % 200 + 10),
                agent: USER_AGENTS[i % USER_AGENTS.len()],
            }
        })
        .collect()
}

/// Generates `count` events ending at `end_us` (microseconds, UTC) over
/// `days` days, in time order, deterministically from `seed`.
pub fn generate(seed: u64, count: usize, end_us: i64, days: u32) -> Vec<Event> {
    let mut generator = Generator::new(seed, count, end_us, days, Shape::DEMO);
    let mut events = Vec::with_capacity(count);
    while let Some(mut chunk) = generator.next_chunk(64 * 1024) {
        events.append(&mut chunk);
    }
    events
}

/// The same events as [`generate`], produced a chunk at a time, so that
/// hundreds of millions of events never need to be in memory at once.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    start_us: i64,
    span_us: i64,
    shape: Shape,
    orgs: Vec<(String, Vec<User>)>,
    total_users: usize,
    /// Background events made so far, and in all.
    made: usize,
    background: usize,
    /// Planted events not yet emitted, latest first.
    incidents: Vec<Event>,
    /// The event background events are made in, reused so that making one
    /// allocates nothing, and the rest of it.
    scratch: Event,
    scratch_background: Background,
    /// Each actor's place in segment order (by org, then actor id), and
    /// each organisation's first.
    actor_slots: std::collections::HashMap<String, usize>,
    org_first_slots: Vec<usize>,
}

impl Generator {
    pub fn new(seed: u64, count: usize, end_us: i64, days: u32, shape: Shape) -> Self {
        let span_us = i64::from(days) * 86_400_000_000;
        let mut incidents = planted_incidents(end_us);
        for (n, event) in incidents.iter_mut().enumerate() {
            event.id = format!("demo-{seed}-incident-{n}");
        }
        // Stable sort by time, then reversed so `pop` yields the earliest.
        incidents.sort_by_key(|e| e.time_us);
        incidents.reverse();
        let orgs: Vec<(String, Vec<User>)> =
            shape.orgs().into_iter().enumerate().map(|(i, (org, n))| (org.clone(), users(i, &org, n))).collect();
        let actor_slots = orgs.iter().flat_map(|(_, users)| users).enumerate().map(|(slot, u)| (u.id.clone(), slot));
        let org_first_slots =
            orgs.iter().scan(0, |next, (_, users)| Some(std::mem::replace(next, *next + users.len()))).collect();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            start_us: end_us - span_us,
            span_us,
            shape,
            total_users: orgs.iter().map(|(_, users)| users.len()).sum(),
            actor_slots: actor_slots.collect(),
            org_first_slots,
            orgs,
            made: 0,
            background: count.saturating_sub(incidents.len()),
            incidents,
            scratch: Event::default(),
            scratch_background: Background::default(),
        }
    }

    /// Up to `max_events` more background events (plus the planted ones that
    /// fall among them), in time order; `None` when all are made.
    pub fn next_chunk(&mut self, max_events: usize) -> Option<Vec<Event>> {
        let mut chunk = Vec::new();
        let made = self.next_each(max_events, |event, background| {
            let mut event = event.clone();
            if let Some(Background { ids: [id, request_id], .. }) = background {
                event.id = uuid::Uuid::from_bytes(*id).to_string();
                event.request_id = Some(uuid::Uuid::from_bytes(*request_id).to_string());
            }
            chunk.push(event)
        });
        made.then_some(chunk)
    }

    /// The events [`Generator::next_chunk`] would give, as Arrow batches in
    /// the order segments keep (one batch per actor, by organisation and
    /// actor id, each in time order), so a bulk load can write them without
    /// sorting. The batches are in the segment schema, UUIDs as bytes, which
    /// spares formatting ids only for the loader to parse them back. Seqs
    /// start at 0: whoever stores them assigns the real ones. Nothing is
    /// allocated per event.
    pub fn next_segment(&mut self, max_events: usize) -> Option<Vec<RecordBatch>> {
        let expected = max_events.min(self.background - self.made) / self.total_users + 1;
        // Per actor: the batch, and the ids of its rows as bytes where known.
        type ActorBatch = (BatchBuilder, [Vec<Option<[u8; 16]>>; 2]);
        let mut actors: Vec<ActorBatch> = (0..self.total_users)
            .map(|_| {
                (BatchBuilder::with_capacity(expected), [Vec::with_capacity(expected), Vec::with_capacity(expected)])
            })
            .collect();
        let slots = std::mem::take(&mut self.actor_slots);
        let made = self.next_each(max_events, |event, background| {
            let slot = background.map_or_else(|| slots[event.actor_id.as_str()], |b| b.actor_slot);
            let (batch, uuids) = &mut actors[slot];
            batch.append(event);
            for (column, id) in uuids.iter_mut().zip(background.map_or([None, None], |b| b.ids.map(Some))) {
                column.push(id);
            }
        });
        self.actor_slots = slots;
        made.then(|| {
            let batches: Vec<RecordBatch> = actors
                .into_iter()
                .filter(|(batch, _)| !batch.is_empty())
                .map(|(batch, [ids, request_ids])| packed::pack_with_uuids(&batch.finish(0), [&ids, &request_ids]))
                .collect();
            // Thousands of actors make batches of a few rows each, and the
            // Parquet writer pays per batch: one copy into a single batch is
            // cheaper (and frees the builders' many small buffers at once).
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if batches.len() > 1 && rows / batches.len() < MIN_BATCH_ROWS {
                let one = concat_batches(&packed::segment_schema(), &batches).expect("batches of the segment schema");
                vec![one]
            } else {
                batches
            }
        })
    }

    /// Hands the next events to `emit` one by one, with their ids as bytes
    /// for background events; `false` when all are made.
    fn next_each(&mut self, max_events: usize, mut emit: impl FnMut(&Event, Option<&Background>)) -> bool {
        if self.made == self.background && self.incidents.is_empty() {
            return false;
        }
        let until = (self.made + max_events).min(self.background);
        let mut event = std::mem::take(&mut self.scratch);
        while self.made < until {
            self.background_event(self.made, &mut event);
            // A planted event goes before the first background event later than it.
            while self.incidents.last().is_some_and(|e| e.time_us < event.time_us) {
                emit(&self.incidents.pop().expect("checked"), None);
            }
            emit(&event, Some(&self.scratch_background));
            self.made += 1;
        }
        self.scratch = event;
        if self.made == self.background {
            self.incidents.drain(..).rev().for_each(|e| emit(&e, None));
        }
        true
    }

    /// Overwrites `event` with background event `i`, reusing its strings, and
    /// `scratch_background` with the rest of it.
    fn background_event(&mut self, i: usize, event: &mut Event) {
        let rng = &mut self.rng;
        // Jitter within the event's own slot keeps events in time order
        // (bulk loads rely on it), however dense they are.
        let background = self.background.max(1) as i128;
        let slot_us = (self.span_us as i128 / background).clamp(1, 1_000_000) as i64;
        let time_us =
            self.start_us + (self.span_us as i128 * i as i128 / background) as i64 + rng.random_range(0..slot_us);
        let slot = rng.random_range(0..self.total_users);
        let org_index = self.org_first_slots.partition_point(|&first| first <= slot) - 1;
        let (org, users) = &self.orgs[org_index];
        let user = &users[slot - self.org_first_slots[org_index]];
        self.scratch_background.actor_slot = slot;
        let (action, product, category, content, _) = ACTIONS[pick_weighted(rng, ACTIONS.iter().map(|a| a.4))];
        event.time_us = time_us;
        self.scratch_background.ids[0] = random_uuid(rng);
        event.id.clear();
        put(&mut event.org_id, org);
        put(&mut event.actor_id, &user.id);
        put_some(&mut event.actor_name, &user.name);
        put_some(&mut event.actor_type, "user");
        put(&mut event.action, action);
        put_some(&mut event.category, category);
        put_some(&mut event.outcome, if action == "auth.login.failed" { "failure" } else { "success" });
        put_some(&mut event.product, product);
        put_some(&mut event.source_ip, &user.ip);
        put_some(&mut event.user_agent, user.agent);
        put_some(&mut event.location, ["US", "DE", "GB", "FR"][org_index % 4]);
        put_fmt(&mut event.session_id, format_args!("s-{}-{}", user.id, time_us / 3_600_000_000));
        self.scratch_background.ids[1] = random_uuid(rng);
        event.request_id = None;
        set_content(event, content, self.shape, rng);
    }
}

/// Sets a string to `value`, keeping its allocation.
fn put(slot: &mut String, value: &str) {
    slot.clear();
    slot.push_str(value);
}

fn put_some(slot: &mut Option<String>, value: &str) {
    put(slot.get_or_insert_default(), value);
}

fn put_fmt(slot: &mut Option<String>, value: std::fmt::Arguments<'_>) {
    let slot = slot.get_or_insert_default();
    slot.clear();
    slot.write_fmt(value).expect("writing to a String cannot fail");
}

/// A random (version 4) UUID from the generator's own random stream: ids
/// look like real products' and compress like them (barely), yet the same
/// seed gives the same ids.
fn random_uuid(rng: &mut ChaCha8Rng) -> [u8; 16] {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().into_bytes()
}

/// Index of an item chosen with probability proportional to its weight.
fn pick_weighted(rng: &mut ChaCha8Rng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut pick = rng.random_range(0..total);
    for (i, w) in weights.enumerate() {
        if pick < w {
            return i;
        }
        pick -= w;
    }
    unreachable!("pick is below the total weight")
}

fn set_content(event: &mut Event, content: Content, shape: Shape, rng: &mut ChaCha8Rng) {
    event.attributes = None;
    match content {
        Content::Page => {
            let page = rng.random_range(10_000..10_000 + shape.pages);
            put_some(&mut event.content_type, "page");
            put_fmt(&mut event.content_id, format_args!("{page}"));
            put_fmt(
                &mut event.content_title,
                format_args!("{} {}", PAGE_WORDS[page as usize % PAGE_WORDS.len()], page % 37),
            );
            put_fmt(&mut event.container_id, format_args!("SPACE-{}", page % 9));
        }
        Content::Issue => {
            let project = PROJECTS[rng.random_range(0..PROJECTS.len())];
            let number = rng.random_range(1..=shape.issues_per_project);
            put_some(&mut event.content_type, "issue");
            put_fmt(&mut event.content_id, format_args!("{project}-{number}"));
            put_fmt(&mut event.content_title, format_args!("{project} task {number}"));
            put_some(&mut event.container_id, project);
        }
        Content::Space => {
            let space = rng.random_range(0..9);
            put_some(&mut event.content_type, "space");
            put_fmt(&mut event.content_id, format_args!("SPACE-{space}"));
            event.content_title = None;
            event.container_id = None;
            event.attributes = Some(json!({"permission": "edit", "granted_to": "group:contractors"}).to_string());
        }
        Content::None => {
            event.content_type = None;
            event.content_id = None;
            event.content_title = None;
            event.container_id = None;
        }
    }
}

/// The incidents described in the module docs.
fn planted_incidents(end_us: i64) -> Vec<Event> {
    const HOUR_US: i64 = 3_600_000_000;
    let day_start = end_us - end_us.rem_euclid(86_400_000_000) - 86_400_000_000;
    let base = |time_us: i64, actor: &str, name: &str, action: &str, category: &str, outcome: &str| Event {
        time_us,
        org_id: "acme".into(),
        actor_id: actor.into(),
        actor_name: Some(name.into()),
        actor_type: Some("user".into()),
        action: action.into(),
        category: Some(category.into()),
        outcome: Some(outcome.into()),
        product: Some(if category == "auth" { "identity" } else { "confluence" }.into()),
        source_ip: Some(INCIDENT_IP.into()),
        user_agent: Some("python-requests/2.31".into()),
        location: Some("RU".into()),
        ..Event::default()
    };
    let phish_at = day_start + 2 * HOUR_US;
    let mut events = Vec::new();
    for k in 0..5 {
        events.push(base(
            phish_at + k * 20_000_000,
            INCIDENT_ACTOR,
            "alice.nguyen",
            "auth.login.failed",
            "auth",
            "failure",
        ));
    }
    events.push(base(
        phish_at + 120_000_000,
        INCIDENT_ACTOR,
        "alice.nguyen",
        "auth.login.succeeded",
        "auth",
        "success",
    ));
    for k in 0..40 {
        let mut export = base(
            phish_at + 180_000_000 + k * 7_000_000,
            INCIDENT_ACTOR,
            "alice.nguyen",
            "confluence.page.exported",
            "user_activity",
            "success",
        );
        export.content_type = Some("page".into());
        export.content_id = Some((10_000 + k * 3).to_string());
        export.content_title = Some(format!("{} {}", PAGE_WORDS[k as usize % PAGE_WORDS.len()], k));
        export.container_id = Some(format!("SPACE-{}", k % 9));
        events.push(export);
    }
    let mut grant = base(
        day_start + 3 * HOUR_US + 12 * 60_000_000,
        "acme-u013",
        "mallory.jones",
        "admin.role.granted",
        "admin",
        "success",
    );
    grant.product = Some("admin".into());
    grant.source_ip = Some("10.1.0.23".into());
    grant.location = Some("US".into());
    grant.user_agent = Some(USER_AGENTS[1].into());
    grant.content_type = Some("user".into());
    grant.content_id = Some("acme-u013".into());
    grant.attributes = Some(json!({"role": "org-admin", "granted_to": "acme-u013"}).to_string());
    events.push(grant);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const END_US: i64 = 1_795_600_000_000_000;

    #[test]
    fn same_seed_same_events() {
        assert_eq!(generate(7, 2_000, END_US, 30), generate(7, 2_000, END_US, 30));
        assert_ne!(generate(7, 2_000, END_US, 30), generate(8, 2_000, END_US, 30));
    }

    #[test]
    fn chunks_make_the_same_events_whatever_their_size() {
        let all = generate(5, 3_000, END_US, 3);
        for size in [1, 7, 1_000, 5_000] {
            let mut generator = Generator::new(5, 3_000, END_US, 3, Shape::DEMO);
            let mut chunked = Vec::new();
            while let Some(mut chunk) = generator.next_chunk(size) {
                chunked.append(&mut chunk);
            }
            assert_eq!(chunked, all, "chunks of {size}");
        }
    }

    #[test]
    fn segments_hold_the_same_events_as_chunks_in_segment_order() {
        for shape in [Shape::DEMO, Shape::REALISTIC] {
            let generator = Generator::new(9, 1, END_US, 3, shape);
            let orgs = shape.orgs();
            assert!(orgs.windows(2).all(|w| w[0].0 < w[1].0), "organisations are in name order");
            assert_eq!(generator.total_users, orgs.iter().map(|(_, n)| n).sum::<usize>());
            let mut slots: Vec<(&String, &usize)> = generator.actor_slots.iter().collect();
            slots.sort();
            assert!(slots.iter().enumerate().all(|(i, (_, slot))| **slot == i), "slots follow actor id order");

            let all = Generator::new(9, 3_000, END_US, 3, shape).next_chunk(usize::MAX).unwrap();
            let mut generator = Generator::new(9, 3_000, END_US, 3, shape);
            let (mut made, mut segments) = (0, 0);
            while let Some(batches) = generator.next_segment(700) {
                segments += 1;
                // Small per-actor batches are handed on as one.
                assert_eq!(batches.len(), 1);
                let segment = datafusion::arrow::compute::concat_batches(&packed::segment_schema(), &batches).unwrap();
                let segment = packed::unpack_batch(&segment);
                let mut expected = all[made..made + segment.num_rows()].to_vec();
                // Stable: time order within each actor.
                expected.sort_by(|a, b| (&a.org_id, &a.actor_id).cmp(&(&b.org_id, &b.actor_id)));
                let without_seq: Vec<usize> = (0..segment.num_columns() - 1).collect(); // numbered by the loader
                assert_eq!(
                    segment.project(&without_seq).unwrap(),
                    crate::model::events_to_batch(&expected, 0).project(&without_seq).unwrap(),
                    "segment starting at event {made}"
                );
                made += segment.num_rows();
            }
            assert_eq!((made, segments), (all.len(), 5));
        }
    }

    #[test]
    fn the_realistic_shape_has_the_benchmark_scale() {
        let orgs = Shape::REALISTIC.orgs();
        assert_eq!(orgs.len(), 50);
        assert_eq!(orgs.iter().map(|(_, n)| n).sum::<usize>(), 20_018);
        let events = Generator::new(3, 200_000, END_US, 180, Shape::REALISTIC).next_chunk(usize::MAX).unwrap();
        let content: std::collections::HashSet<_> = events.iter().filter_map(|e| e.content_id.as_deref()).collect();
        // 200,000 draws over 500,009 ids (pages, issues, spaces): about a third of them.
        assert!((120_000..200_000).contains(&content.len()), "{} content ids", content.len());
        let actors: std::collections::HashSet<_> = events.iter().map(|e| e.actor_id.as_str()).collect();
        assert!(actors.len() > 19_900, "{} actors", actors.len());
        assert!(actors.contains(INCIDENT_ACTOR));
    }

    #[test]
    fn dense_events_stay_in_time_order() {
        // 100,000 events in a day: closer together than a second.
        let events = generate(2, 100_000, END_US, 1);
        assert!(events.windows(2).all(|w| w[0].time_us <= w[1].time_us));
    }

    #[test]
    fn events_are_in_time_order_with_the_incidents_planted() {
        let events = generate(1, 5_000, END_US, 30);
        assert_eq!(events.len(), 5_000);
        assert!(events.windows(2).all(|w| w[0].time_us <= w[1].time_us));
        assert!(events.iter().all(|e| e.time_us <= END_US + 1_000_000 && e.time_us >= END_US - 30 * 86_400_000_000));
        let from_attacker = events.iter().filter(|e| e.source_ip.as_deref() == Some(INCIDENT_IP)).count();
        assert_eq!(from_attacker, 46);
        let orgs: std::collections::BTreeSet<_> = events.iter().map(|e| e.org_id.as_str()).collect();
        assert_eq!(orgs.into_iter().collect::<Vec<_>>(), ["acme", "globex", "initech", "umbrella"]);
        let ids: std::collections::HashSet<_> = events.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), events.len(), "ids are unique");
    }
}
