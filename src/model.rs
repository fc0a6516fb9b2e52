//! The audit event: what one row of `audit_events` is, its Arrow schema, and how
//! incoming JSON becomes an event.
//!
//! This module owns the column list. Every other layer (WAL encoding, Parquet
//! segments, the SQL table) derives its shape from [`schema`], so a column is
//! added or renamed here and nowhere else. It never does I/O: validation is a
//! pure function from bytes to events or to a list of precise errors.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The earliest event time accepted: the Unix epoch. An earlier one is a
/// client's zero value (Go's `0001-01-01`, a year `0000`), not something
/// that happened to an audited system.
pub const EARLIEST_EVENT_TIME_US: i64 = 0;

/// How far past its receive time an event's time may be: clocks drift, but
/// an event dated next year (or `9999-12-31`, meaning "never") would sort
/// after everything and never leave by retention.
pub const MAX_EVENT_TIME_AHEAD_US: i64 = 24 * 3_600 * 1_000_000;

/// An event's time from its RFC 3339 text, in microseconds: between
/// [`EARLIEST_EVENT_TIME_US`] and [`MAX_EVENT_TIME_AHEAD_US`] past
/// `received_at_us`. A leap second (`23:59:60`) is the first microsecond of
/// the next second, as PostgreSQL reads it.
pub fn event_time_us(text: &str, received_at_us: i64) -> Result<i64, String> {
    let parsed =
        DateTime::parse_from_rfc3339(text).map_err(|e| format!("not an RFC 3339 timestamp ({e}): {text:?}"))?;
    let time_us = parsed.with_timezone(&Utc).timestamp_micros();
    if time_us < EARLIEST_EVENT_TIME_US {
        return Err(format!("{text:?} is before 1970-01-01T00:00:00Z: a zero or placeholder time, not an event's"));
    }
    if time_us > received_at_us.saturating_add(MAX_EVENT_TIME_AHEAD_US) {
        return Err(format!("{text:?} is more than a day after the server's clock: send when it happened"));
    }
    Ok(time_us)
}

/// Longest accepted identifier-like field (`id`, `org_id`, `actor_id`, `action`), in bytes.
pub const MAX_KEY_FIELD_BYTES: usize = 256;
/// Longest accepted free-text field (`user_agent`, `content_title`, ...), in bytes.
pub const MAX_TEXT_FIELD_BYTES: usize = 4096;
/// Deepest nesting of objects and arrays accepted in `attributes` (the
/// object itself is level 1): deeper JSON is a hazard for every reader that
/// recurses, and no audit attribute needs it.
pub const MAX_ATTRIBUTES_DEPTH: usize = 32;

/// How deeply a JSON value nests objects and arrays (a scalar: 0).
fn json_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Largest accepted `attributes` object, serialized as compact JSON, in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 64 * 1024;

/// The category of the server's own records of who used the audit log
/// (queries over the wire, logins). Ingest refuses it, so such a record
/// cannot be forged by an application.
pub const AUDIT_ACCESS_CATEGORY: &str = "audit_access";
/// The organisation of the server's own records that belong to no tenant:
/// what admins did, and logins by names no user has. Ingest refuses it.
pub const SYSTEM_ORG_ID: &str = "_auditlake";

/// Why ingest refuses a value of `field`, if it does: the server's own
/// org or category, or one that reads like it to a person (other case,
/// surrounding spaces), and organisation ids with control characters (a
/// NUL or a newline in a tenant's name breaks every tool that shows it).
fn reserved(field: &str, value: &str) -> Option<String> {
    let reserved = match field {
        "org_id" if value.chars().any(char::is_control) => {
            return Some(format!("{value:?} holds a control character"));
        }
        "org_id" => SYSTEM_ORG_ID,
        "category" => AUDIT_ACCESS_CATEGORY,
        _ => return None,
    };
    value
        .trim()
        .eq_ignore_ascii_case(reserved)
        .then(|| format!("{value:?} is, or reads like, {reserved:?}, reserved for auditlake's own records"))
}

/// Server-assigned, strictly increasing position of an event in the log.
pub type Seq = u64;

/// One audit event as accepted by the server, before it has a `seq`.
///
/// Timestamps are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub time_us: i64,
    pub received_at_us: i64,
    pub id: String,
    pub org_id: String,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub actor_type: Option<String>,
    pub action: String,
    pub category: Option<String>,
    pub outcome: Option<String>,
    pub product: Option<String>,
    pub content_type: Option<String>,
    pub content_id: Option<String>,
    pub content_title: Option<String>,
    pub container_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub location: Option<String>,
    pub session_id: Option<String>,
    pub request_id: Option<String>,
    /// Compact JSON text of a JSON object.
    pub attributes: Option<String>,
}

/// The optional text columns, in schema order, with their accessors. Keeping
/// them in one table means the JSON parser, the Arrow encoder and the schema
/// cannot disagree about which fields exist.
type OptionalField = (&'static str, fn(&Event) -> &Option<String>, fn(&mut Event) -> &mut Option<String>);

macro_rules! optional_fields {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |e: &Event| &e.$name, |e: &mut Event| &mut e.$name)),*]
    };
}

/// Hands the list of optional text fields to macro `$m`: the one list both
/// the accessor table and the fast-path wire struct are generated from.
macro_rules! with_optional_fields {
    ($m:ident) => {
        $m! {
            actor_name,
            actor_type,
            category,
            outcome,
            product,
            content_type,
            content_id,
            content_title,
            container_id,
            source_ip,
            user_agent,
            location,
            session_id,
            request_id,
        }
    };
}

const OPTIONAL_TEXT_FIELDS: &[OptionalField] = with_optional_fields!(optional_fields);

impl Event {
    /// About how many bytes the event takes in a batch (its text, and a
    /// little per column): enough to keep a batch within a size.
    pub fn approx_bytes(&self) -> usize {
        const PER_COLUMN_BYTES: usize = 5;
        let required = self.id.len() + self.org_id.len() + self.actor_id.len() + self.action.len();
        let optional: usize =
            OPTIONAL_TEXT_FIELDS.iter().map(|(_, get, _)| get(self).as_ref().map_or(0, String::len)).sum();
        let attributes = self.attributes.as_ref().map_or(0, String::len);
        required + optional + attributes + (OPTIONAL_TEXT_FIELDS.len() + 10) * PER_COLUMN_BYTES
    }
}

/// An event as typed JSON, for the fast path of [`parse_batch`]: strings are
/// borrowed from the body when they hold no escapes, and unknown fields, wrong
/// types and duplicates fail deserialization (the slow path then names them).
macro_rules! wire_event {
    ($($name:ident),* $(,)?) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WireEvent<'a> {
            #[serde(borrow)]
            time: Option<Cow<'a, str>>,
            #[serde(borrow)]
            id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            org_id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            actor_id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            action: Option<Cow<'a, str>>,
            $(
                #[serde(borrow)]
                $name: Option<Cow<'a, str>>,
            )*
            attributes: Option<Value>,
        }

        impl WireEvent<'_> {
            /// The event if it passes every check of [`validate_event`];
            /// `None` sends the batch to the slow path, which names each problem.
            fn into_event(self, received_at_us: i64) -> Option<Event> {
                let required = |v: Option<Cow<'_, str>>| {
                    v.filter(|s| !s.is_empty() && s.len() <= MAX_KEY_FIELD_BYTES).map(Cow::into_owned)
                };
                let optional = |v: Option<Cow<'_, str>>| match v {
                    Some(s) if s.len() > MAX_TEXT_FIELD_BYTES => Err(()),
                    v => Ok(v.map(Cow::into_owned)),
                };
                let time = self.time.filter(|t| t.len() <= MAX_KEY_FIELD_BYTES)?;
                let time_us = event_time_us(&time, received_at_us).ok()?;
                let id = match self.id {
                    Some(id) if id.len() > MAX_KEY_FIELD_BYTES => return None,
                    Some(id) => id.into_owned(),
                    None => uuid::Uuid::now_v7().to_string(),
                };
                let attributes = match self.attributes {
                    None | Some(Value::Null) => None,
                    Some(value @ Value::Object(_)) if json_depth(&value) <= MAX_ATTRIBUTES_DEPTH => {
                        Some(value.to_string()).filter(|text| text.len() <= MAX_ATTRIBUTES_BYTES)?.into()
                    }
                    Some(_) => return None,
                };
                let event = Event {
                    time_us,
                    received_at_us,
                    id,
                    org_id: required(self.org_id)?,
                    actor_id: required(self.actor_id)?,
                    action: required(self.action)?,
                    $($name: optional(self.$name).ok()?,)*
                    attributes,
                };
                let own = reserved("org_id", &event.org_id).is_some()
                    || event.category.as_deref().is_some_and(|c| reserved("category", c).is_some());
                (!own).then_some(event)
            }
        }
    };
}
with_optional_fields!(wire_event);

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let mut fields = vec![
        Field::new("time", utc_micros(), false),
        Field::new("received_at", utc_micros(), false),
        text("id", false),
        text("org_id", false),
        text("actor_id", false),
        text("actor_name", true),
        text("actor_type", true),
        text("action", false),
    ];
    // The remaining optional columns follow the order of OPTIONAL_TEXT_FIELDS
    // after actor_name/actor_type, which sit next to actor_id for readability.
    fields.extend(OPTIONAL_TEXT_FIELDS[2..].iter().map(|(name, _, _)| text(name, true)));
    fields.push(text("attributes", true));
    fields.push(Field::new("seq", DataType::Int64, false));
    Arc::new(Schema::new(fields))
});

/// The Arrow schema of `audit_events`, defined once for every layer.
pub fn schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// Encodes events as one Arrow batch; event `i` gets `seq = first_seq + i`.
pub fn events_to_batch(events: &[Event], first_seq: Seq) -> RecordBatch {
    let mut builder = BatchBuilder::with_capacity(events.len());
    for event in events {
        builder.append(event);
    }
    builder.finish(first_seq)
}

/// Builds an Arrow batch of [`schema`] one event at a time, for producers
/// that make events one by one (the demo generator reuses one `Event` for
/// all of them, so nothing is allocated per event).
/// Room made for each text value when a batch builder starts: growing the
/// buffers later copies them.
const TYPICAL_TEXT_VALUE_BYTES: usize = 16;

pub struct BatchBuilder {
    time: Vec<i64>,
    received_at: Vec<i64>,
    id: StringBuilder,
    org_id: StringBuilder,
    actor_id: StringBuilder,
    action: StringBuilder,
    /// In [`OPTIONAL_TEXT_FIELDS`] order.
    optional: Vec<StringBuilder>,
    attributes: StringBuilder,
}

impl BatchBuilder {
    pub fn with_capacity(events: usize) -> Self {
        let text = || StringBuilder::with_capacity(events, events * TYPICAL_TEXT_VALUE_BYTES);
        BatchBuilder {
            time: Vec::with_capacity(events),
            received_at: Vec::with_capacity(events),
            id: text(),
            org_id: text(),
            actor_id: text(),
            action: text(),
            optional: OPTIONAL_TEXT_FIELDS.iter().map(|_| text()).collect(),
            attributes: text(),
        }
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    pub fn append(&mut self, event: &Event) {
        self.time.push(event.time_us);
        self.received_at.push(event.received_at_us);
        self.id.append_value(&event.id);
        self.org_id.append_value(&event.org_id);
        self.actor_id.append_value(&event.actor_id);
        self.action.append_value(&event.action);
        for ((_, get, _), column) in OPTIONAL_TEXT_FIELDS.iter().zip(&mut self.optional) {
            column.append_option(get(event).as_deref());
        }
        self.attributes.append_option(event.attributes.as_deref());
    }

    /// The batch of everything appended; event `i` gets `seq = first_seq + i`.
    pub fn finish(mut self, first_seq: Seq) -> RecordBatch {
        let micros =
            |values: Vec<i64>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC")) };
        let rows = self.time.len() as i64;
        let mut optional = self.optional.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut columns: Vec<ArrayRef> = vec![
            micros(self.time),
            micros(self.received_at),
            Arc::new(self.id.finish()),
            Arc::new(self.org_id.finish()),
            Arc::new(self.actor_id.finish()),
        ];
        // actor_name and actor_type sit next to actor_id (see the schema).
        columns.extend(optional.by_ref().take(2));
        columns.push(Arc::new(self.action.finish()));
        columns.extend(optional);
        columns.push(Arc::new(self.attributes.finish()));
        let first = first_seq as i64;
        columns.push(Arc::new(Int64Array::from_iter_values((0..rows).map(|i| first + i))));
        RecordBatch::try_new(schema(), columns).expect("columns are built in schema order with schema types")
    }
}

/// Why one field of one incoming event was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// 1-based line of NDJSON input, or 1-based position in a JSON array.
    pub line: usize,
    /// The offending field; `None` when the event as a whole is wrong.
    pub field: Option<String>,
    pub error: String,
}

impl FieldError {
    pub fn new(line: usize, field: Option<&str>, error: impl Into<String>) -> Self {
        FieldError { line, field: field.map(str::to_owned), error: error.into() }
    }
}

/// Parses a request body holding a JSON array of events or NDJSON (one event
/// per line), validating every event. The batch is all or nothing: any error
/// rejects the whole batch, and every error found is reported.
pub fn parse_batch(body: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Event>, Vec<FieldError>> {
    parse_batch_listing(body, received_at, usize::MAX).map_err(|rejected| rejected.listed)
}

/// Why a batch was rejected: its first problems, in order, and how many
/// there were in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub listed: Vec<FieldError>,
    pub total: usize,
}

/// [`parse_batch`], keeping only the first `max_listed` problems and
/// counting the rest: a body of millions of bad lines (`{}` on each, three
/// bytes for five problems) costs a count, not gigabytes of messages. Items
/// are checked one at a time as they are read, so no copy of the whole body
/// as generic JSON is made either.
pub fn parse_batch_listing(body: &[u8], received_at: DateTime<Utc>, max_listed: usize) -> Result<Vec<Event>, Rejected> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = 1 + body[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count();
        Rejected { listed: vec![FieldError::new(line, None, format!("body is not valid UTF-8: {e}"))], total: 1 }
    })?;
    let received_at_us = received_at.timestamp_micros();
    if let Some(events) = parse_valid_batch(text, received_at_us) {
        return Ok(events);
    }
    parse_and_report(text, received_at_us, max_listed)
}

/// What the slow path has found so far.
struct Report {
    /// The events read, while no problem has been found (after one, the
    /// batch is rejected and they are not needed).
    events: Vec<Event>,
    rejected: Rejected,
    max_listed: usize,
    items: usize,
}

impl Report {
    fn item(&mut self, checked: Result<Event, Vec<FieldError>>) {
        self.items += 1;
        match checked {
            Ok(event) if self.rejected.total == 0 => self.events.push(event),
            Ok(_) => {}
            Err(problems) => {
                self.events = Vec::new();
                self.rejected.total += problems.len();
                let room = self.max_listed.saturating_sub(self.rejected.listed.len());
                self.rejected.listed.extend(problems.into_iter().take(room));
            }
        }
    }
}

/// The slow path of [`parse_batch`]: every event as a generic JSON value,
/// one at a time, checked field by field, every problem counted.
fn parse_and_report(text: &str, received_at_us: i64, max_listed: usize) -> Result<Vec<Event>, Rejected> {
    let mut report =
        Report { events: Vec::new(), rejected: Rejected { listed: Vec::new(), total: 0 }, max_listed, items: 0 };
    if text.trim_start().starts_with('[') {
        let mut position = 0;
        let mut each = |value: Value| {
            position += 1;
            report.item(validate_event(position, value, received_at_us));
        };
        let mut items = serde_json::Deserializer::from_str(text);
        let read = serde::Deserializer::deserialize_seq(&mut items, EachItem(&mut each)).and_then(|()| items.end());
        if let Err(e) = read {
            let malformed = FieldError::new(e.line(), None, format!("malformed JSON array: {e}"));
            return Err(Rejected { listed: vec![malformed], total: 1 });
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let checked = match serde_json::from_str::<Value>(line) {
                Ok(value) => validate_event(i + 1, value, received_at_us),
                Err(e) => Err(vec![FieldError::new(i + 1, None, format!("malformed JSON: {e}"))]),
            };
            report.item(checked);
        }
    }
    if report.items == 0 {
        return Err(Rejected { listed: vec![FieldError::new(1, None, "batch contains no events")], total: 1 });
    }
    if report.rejected.total == 0 { Ok(report.events) } else { Err(report.rejected) }
}

/// Hands each element of a JSON array to a function as it is read.
struct EachItem<'f, F>(&'f mut F);

impl<'de, F: FnMut(Value)> serde::de::Visitor<'de> for EachItem<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while let Some(item) = items.next_element::<Value>()? {
            (self.0)(item);
        }
        Ok(())
    }
}

/// The fast path of [`parse_batch`]: typed deserialization straight into
/// events. Any problem at all gives `None`, and the slow path (generic JSON
/// values, every error collected) decides: the two accept exactly the same
/// batches, which a property test checks.
fn parse_valid_batch(text: &str, received_at_us: i64) -> Option<Vec<Event>> {
    let events: Vec<Event> = if text.trim_start().starts_with('[') {
        let wire: Vec<WireEvent> = serde_json::from_str(text).ok()?;
        wire.into_iter().map(|w| w.into_event(received_at_us)).collect::<Option<_>>()?
    } else {
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str::<WireEvent>(line).ok()?.into_event(received_at_us))
            .collect::<Option<_>>()?
    };
    (!events.is_empty()).then_some(events)
}

/// The line (or array position) each event of an accepted body came from,
/// in the order [`parse_batch`] returns them, for errors found after parsing.
pub fn event_lines(body: &[u8]) -> Vec<usize> {
    let text = std::str::from_utf8(body).unwrap_or_default();
    if text.trim_start().starts_with('[') {
        // Each element is one event: its position.
        let count = serde_json::from_str::<Vec<serde::de::IgnoredAny>>(text).map_or(0, |items| items.len());
        return (1..=count).collect();
    }
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(i, _)| i + 1).collect()
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks one event object, collecting every problem rather than the first.
fn validate_event(line: usize, value: Value, received_at_us: i64) -> Result<Event, Vec<FieldError>> {
    let Value::Object(mut object) = value else {
        return Err(vec![FieldError::new(
            line,
            None,
            format!("an event must be a JSON object, got {}", json_type_name(&value)),
        )]);
    };
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| errors.push(FieldError::new(line, Some(field), msg));

    let mut take_text =
        |object: &mut Map<String, Value>, field: &str, required: bool, max_bytes: usize| match object.remove(field) {
            None | Some(Value::Null) if required => {
                err(field, "required field is missing".into());
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if required && s.is_empty() => {
                err(field, "required field is empty".into());
                None
            }
            Some(Value::String(s)) if s.len() > max_bytes => {
                err(field, format!("field is {} bytes, longer than the limit of {max_bytes} bytes", s.len()));
                None
            }
            Some(Value::String(s)) if reserved(field, &s).is_some() => {
                err(field, reserved(field, &s).unwrap_or_default());
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                err(field, format!("expected a string, got {}", json_type_name(&other)));
                None
            }
        };

    let time = take_text(&mut object, "time", true, MAX_KEY_FIELD_BYTES);
    let id = take_text(&mut object, "id", false, MAX_KEY_FIELD_BYTES);
    let org_id = take_text(&mut object, "org_id", true, MAX_KEY_FIELD_BYTES);
    let actor_id = take_text(&mut object, "actor_id", true, MAX_KEY_FIELD_BYTES);
    let action = take_text(&mut object, "action", true, MAX_KEY_FIELD_BYTES);
    let mut optional = Vec::with_capacity(OPTIONAL_TEXT_FIELDS.len());
    for (name, _, _) in OPTIONAL_TEXT_FIELDS {
        optional.push(take_text(&mut object, name, false, MAX_TEXT_FIELD_BYTES));
    }

    let mut errors_after_text = Vec::new();
    let mut err = |field: &str, msg: String| errors_after_text.push(FieldError::new(line, Some(field), msg));

    let time_us = time.and_then(|t| match event_time_us(&t, received_at_us) {
        Ok(time_us) => Some(time_us),
        Err(problem) => {
            err("time", problem);
            None
        }
    });

    let attributes = match object.remove("attributes") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) if json_depth(&value) > MAX_ATTRIBUTES_DEPTH => {
            err(
                "attributes",
                format!("attributes nest {} levels deep, over the limit of {MAX_ATTRIBUTES_DEPTH}", json_depth(&value)),
            );
            None
        }
        Some(value @ Value::Object(_)) => {
            let text = value.to_string();
            if text.len() > MAX_ATTRIBUTES_BYTES {
                err(
                    "attributes",
                    format!(
                        "attributes are {} bytes of JSON, over the limit of {MAX_ATTRIBUTES_BYTES} bytes",
                        text.len()
                    ),
                );
                None
            } else {
                Some(text)
            }
        }
        Some(other) => {
            err("attributes", format!("expected a JSON object, got {}", json_type_name(&other)));
            None
        }
    };

    let mut unknown: Vec<String> = object.keys().cloned().collect();
    unknown.sort();
    for field in unknown {
        let msg = match field.as_str() {
            "seq" | "received_at" => "assigned by the server; do not send it".to_string(),
            _ => "unknown field; put extra data in `attributes`".to_string(),
        };
        err(&field, msg);
    }

    errors.append(&mut errors_after_text);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(time_us), Some(org_id), Some(actor_id), Some(action)) = (time_us, org_id, actor_id, action) else {
        unreachable!("a missing required field is always reported as an error");
    };
    let mut event = Event {
        time_us,
        received_at_us,
        id: id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        org_id,
        actor_id,
        action,
        attributes,
        ..Event::default()
    };
    for ((_, _, slot), value) in OPTIONAL_TEXT_FIELDS.iter().zip(optional) {
        *slot(&mut event) = value;
    }
    Ok(event)
}

impl Event {
    /// An event auditlake records about its own use or administration
    /// (statements run, policies changed, stored events rewritten): stamped
    /// now, with a fresh time-ordered id and `product = auditlake`. Callers
    /// add what else they know (address, session) with struct update syntax.
    pub fn system(
        org_id: &str,
        (actor_id, actor_type): (&str, &str),
        action: &str,
        category: &str,
        success: bool,
        attributes: &Value,
    ) -> Event {
        let now_us = Utc::now().timestamp_micros();
        Event {
            time_us: now_us,
            received_at_us: now_us,
            id: uuid::Uuid::now_v7().to_string(),
            org_id: org_id.to_owned(),
            actor_id: actor_id.to_owned(),
            actor_type: Some(actor_type.to_owned()),
            action: action.to_owned(),
            category: Some(category.to_owned()),
            outcome: Some(if success { "success" } else { "failure" }.to_owned()),
            product: Some("auditlake".to_owned()),
            attributes: Some(attributes.to_string()),
            ..Event::default()
        }
    }

    /// The event as the JSON object the ingest API accepts (used by the demo
    /// generator and by clients in tests and benchmarks).
    pub fn to_ingest_json(&self) -> Value {
        let time = DateTime::<Utc>::from_timestamp_micros(self.time_us)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut object = Map::new();
        object.insert("time".into(), Value::String(time));
        object.insert("id".into(), Value::String(self.id.clone()));
        object.insert("org_id".into(), Value::String(self.org_id.clone()));
        object.insert("actor_id".into(), Value::String(self.actor_id.clone()));
        object.insert("action".into(), Value::String(self.action.clone()));
        for (name, get, _) in OPTIONAL_TEXT_FIELDS {
            if let Some(v) = get(self) {
                object.insert((*name).into(), Value::String(v.clone()));
            }
        }
        if let Some(attrs) = &self.attributes {
            object.insert("attributes".into(), serde_json::from_str(attrs).unwrap_or(Value::Null));
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A JSON value for one field: usually a plausible string, sometimes
    /// empty, oversized, escaped, null, or of the wrong type.
    fn field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => "[a-z0-9.-]{1,12}".prop_map(Value::from),
            1 => Just(Value::from("")),
            1 => Just(Value::from("x".repeat(MAX_KEY_FIELD_BYTES + 1))),
            1 => Just(Value::from("y".repeat(MAX_TEXT_FIELD_BYTES + 1))),
            1 => Just(Value::from("quote \" and \u{e9} and \n")),
            1 => Just(Value::Null),
            1 => any::<i64>().prop_map(Value::from),
            1 => Just(serde_json::json!({"k": [1, 2, {"n": null}]})),
        ]
    }

    /// 2026-12-01T00:00:00Z.
    const RECEIVED_AT_US: i64 = 1_796_083_200_000_000;

    fn time_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => Just(Value::from("0001-01-01T00:00:00Z")),
            1 => Just(Value::from("9999-12-31T23:59:59Z")),
            1 => Just(Value::from("2016-12-31T23:59:60Z")),
            4 => Just(Value::from("2026-11-20T08:00:00Z")),
            2 => Just(Value::from("2026-11-20T08:00:00.123456+02:00")),
            1 => Just(Value::from("2026-11-20 08:00:00")),
            1 => Just(Value::from("yesterday")),
            1 => Just(Value::Null),
            1 => any::<i64>().prop_map(Value::from),
        ]
    }

    /// A random event object: each known field present or not, sometimes an
    /// unknown or server-assigned field.
    fn event_object() -> impl Strategy<Value = Value> {
        let mut names: Vec<&str> = vec!["id", "org_id", "actor_id", "action"];
        names.extend(OPTIONAL_TEXT_FIELDS.iter().map(|(name, _, _)| *name));
        let fields =
            names.into_iter().map(|name| (Just(name), prop::option::weighted(0.7, field_value()))).collect::<Vec<_>>();
        let attributes = prop::option::weighted(
            0.3,
            prop_oneof![
                Just(serde_json::json!({"b": 1, "a": "x"})),
                Just(Value::from("not an object")),
                Just(Value::Null)
            ],
        );
        let extra = prop::option::weighted(0.1, prop_oneof![Just("seq"), Just("colour")]);
        (prop::option::weighted(0.95, time_value()), fields, attributes, extra).prop_map(
            |(time, fields, attrs, extra)| {
                let mut object = Map::new();
                if let Some(time) = time {
                    object.insert("time".into(), time);
                }
                for (name, value) in fields {
                    if let Some(value) = value {
                        object.insert(name.into(), value);
                    }
                }
                if let Some(attrs) = attrs {
                    object.insert("attributes".into(), attrs);
                }
                if let Some(extra) = extra {
                    object.insert(extra.into(), Value::from(1));
                }
                Value::Object(object)
            },
        )
    }

    proptest! {
        #![proptest_config(crate::proptest_cases(512))]

        /// The fast path accepts exactly what the slow path accepts, and makes
        /// the same events of it (ids the server generates aside).
        #[test]
        fn fast_and_slow_paths_agree(events in prop::collection::vec(event_object(), 0..4), as_array in any::<bool>()) {
            let text = if as_array {
                Value::Array(events.clone()).to_string()
            } else {
                events.iter().map(|e| e.to_string() + "\n").collect()
            };
            let events_sent = events;
            let without_generated_ids = |mut events: Vec<Event>| {
                for (event, object) in events.iter_mut().zip(&events_sent) {
                    if object.get("id").is_none_or(Value::is_null) {
                        event.id.clear();
                    }
                }
                events
            };
            let fast = parse_valid_batch(&text, RECEIVED_AT_US);
            let slow = parse_and_report(&text, RECEIVED_AT_US, usize::MAX);
            match (fast, slow) {
                (Some(fast), Ok(slow)) => prop_assert_eq!(without_generated_ids(fast), without_generated_ids(slow)),
                (None, Err(_)) => {}
                (fast, slow) => prop_assert!(false, "paths disagree on {}: fast {:?}, slow {:?}", text, fast, slow),
            }
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn placeholder_and_future_times_are_refused_and_a_leap_second_is_read() {
        let at = |time: &str| {
            let line = format!(r#"{{"time":"{time}","org_id":"acme","actor_id":"u1","action":"a.b"}}"#);
            parse_batch(line.as_bytes(), now())
        };
        for (time, says) in [
            ("0000-01-01T00:00:00Z", "before 1970"),
            ("0001-01-01T00:00:00Z", "before 1970"),
            ("1969-12-31T23:59:59Z", "before 1970"),
            ("9999-12-31T23:59:59Z", "more than a day after"),
            ("2026-11-27T10:00:01Z", "more than a day after"),
        ] {
            let errors = at(time).expect_err(time);
            assert!(
                errors.iter().any(|e| e.field.as_deref() == Some("time") && e.error.contains(says)),
                "{time}: {errors:?}"
            );
        }
        assert_eq!(at("1970-01-01T00:00:00Z").unwrap()[0].time_us, 0);
        assert!(at("2026-11-27T09:59:59Z").is_ok(), "a clock a little ahead is fine");
        let leap = at("2016-12-31T23:59:60Z").unwrap()[0].time_us;
        let next = DateTime::parse_from_rfc3339("2017-01-01T00:00:00Z").unwrap().timestamp_micros();
        assert_eq!(leap, next, "a leap second reads as the next second's start");
    }

    fn errors_of(body: &str) -> Vec<(usize, Option<String>, String)> {
        parse_batch(body.as_bytes(), now())
            .expect_err("batch should be rejected")
            .into_iter()
            .map(|e| (e.line, e.field, e.error))
            .collect()
    }

    const GOOD: &str =
        r#"{"time":"2026-11-25T09:00:00Z","org_id":"acme","actor_id":"u1","action":"confluence.page.viewed"}"#;

    #[test]
    fn accepts_ndjson_and_arrays_alike() {
        let ndjson = format!("{GOOD}\n\n{GOOD}\n");
        let array = format!("[{GOOD},{GOOD}]");
        for body in [ndjson, array] {
            let events = parse_batch(body.as_bytes(), now()).unwrap();
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].time_us, 1_795_597_200_000_000);
            assert_eq!(events[0].received_at_us, now().timestamp_micros());
            assert_eq!(events[0].actor_id, "u1");
            assert_ne!(events[0].id, events[1].id, "generated ids are unique");
        }
    }

    #[test]
    fn names_line_and_field_of_every_problem() {
        let body = format!(
            "{GOOD}\n{}\n{}\n",
            r#"{"time":"yesterday","org_id":"acme","action":"x"}"#,
            r#"{"time":"2026-11-25T09:00:00Z","org_id":7,"actor_id":"u","action":"x","colour":"red","seq":3}"#
        );
        let errors = errors_of(&body);
        let has = |line: usize, field: &str, needle: &str| {
            errors.iter().any(|(l, f, e)| *l == line && f.as_deref() == Some(field) && e.contains(needle))
        };
        assert!(has(2, "time", "RFC 3339"), "{errors:?}");
        assert!(has(2, "actor_id", "missing"), "{errors:?}");
        assert!(has(3, "org_id", "expected a string, got number"), "{errors:?}");
        assert!(has(3, "colour", "unknown field"), "{errors:?}");
        assert!(has(3, "seq", "assigned by the server"), "{errors:?}");
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn refuses_the_servers_own_org_and_category() {
        let body = format!(
            "{GOOD}\n{}\n{}\n",
            r#"{"time":"2026-11-25T09:00:00Z","org_id":"_auditlake","actor_id":"u","action":"x"}"#,
            r#"{"time":"2026-11-25T09:00:00Z","org_id":"acme","actor_id":"u","action":"x","category":"audit_access"}"#
        );
        let errors = errors_of(&body);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((errors[0].0, errors[0].1.as_deref()), (2, Some("org_id")));
        assert_eq!((errors[1].0, errors[1].1.as_deref()), (3, Some("category")));
        assert!(errors.iter().all(|(_, _, e)| e.contains("reserved for auditlake's own records")), "{errors:?}");
    }

    #[test]
    fn refuses_look_alikes_of_the_servers_own_values_and_control_characters_in_org_ids() {
        let line = |org: &str, category: &str| {
            let event = serde_json::json!({"time": "2026-11-25T09:00:00Z", "org_id": org, "actor_id": "u",
                "action": "x", "category": category});
            event.to_string()
        };
        let body = [
            line("_auditlake ", "user_activity"),
            line("_AuditLake", "user_activity"),
            line("acme", "Audit_Access"),
            line("acme", " audit_access"),
            line("ac\u{0}me", "user_activity"),
            line("acme\nglobex", "user_activity"),
            line("acme", "user_activity"),
        ]
        .join("\n");
        let errors = errors_of(&body);
        let lines: Vec<usize> = errors.iter().map(|(line, _, _)| *line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6], "{errors:?}");
        assert!(errors[4].2.contains("control character"), "{errors:?}");
    }

    #[test]
    fn rejects_oversized_fields_and_wrong_shapes() {
        let long = "x".repeat(MAX_TEXT_FIELD_BYTES + 1);
        let body = format!(
            r#"[{{"time":"2026-11-25T09:00:00Z","org_id":"a","actor_id":"u","action":"x","user_agent":"{long}"}}, 5, {{"time":"2026-11-25T09:00:00Z","org_id":"a","actor_id":"u","action":"x","attributes":[1]}}]"#
        );
        let errors = errors_of(&body);
        assert_eq!(errors[0].0, 1);
        assert_eq!(errors[0].1.as_deref(), Some("user_agent"));
        assert!(errors[0].2.contains("longer than the limit"));
        assert_eq!((errors[1].0, errors[1].1.as_deref()), (2, None));
        assert_eq!((errors[2].0, errors[2].1.as_deref()), (3, Some("attributes")));
    }

    #[test]
    fn rejects_malformed_json_empty_batches_and_bad_utf8() {
        assert!(errors_of("[{\"time\":")[0].2.contains("malformed JSON array"));
        assert_eq!(errors_of(&format!("{GOOD}\nnot json\n"))[0].0, 2);
        assert!(errors_of("  \n")[0].2.contains("no events"));
        let mut bad = format!("{GOOD}\n").into_bytes();
        bad.extend_from_slice(b"\xff\xfe\n");
        let errors = parse_batch(&bad, now()).unwrap_err();
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].error.contains("UTF-8"));
    }

    #[test]
    fn batch_columns_follow_the_schema() {
        let mut events = parse_batch(format!("{GOOD}\n{GOOD}").as_bytes(), now()).unwrap();
        events[1].content_title = Some("Q3 plan".into());
        let batch = events_to_batch(&events, 41);
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.num_rows(), 2);
        let seq = batch.column_by_name("seq").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(seq.values(), &[41, 42]);
        let titles = batch.column_by_name("content_title").unwrap();
        assert_eq!(titles.null_count(), 1);
    }

    #[test]
    fn ingest_json_round_trips() {
        let mut event = parse_batch(GOOD.as_bytes(), now()).unwrap().remove(0);
        event.source_ip = Some("10.0.0.1".into());
        event.attributes = Some(r#"{"k":"v"}"#.into());
        let again = parse_batch(event.to_ingest_json().to_string().as_bytes(), now()).unwrap().remove(0);
        assert_eq!(again, event);
    }
}
