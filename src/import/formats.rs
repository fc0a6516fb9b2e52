//! How each source format maps onto the event schema. Every mapping gives
//! an event in the JSON shape `POST /v1/events` takes, with the source event
//! whole in `attributes`, so the ingest validation applies unchanged; or the
//! reason the record is not an event of that format.
//!
//! Field names are looked up exactly first, then ignoring case (some
//! pipelines store vendor events with lower-cased keys).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};

use super::ImportFormat;

/// A field of `value` by path (`"userIdentity.arn"`), keys matched exactly
/// or else ignoring case.
fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |at, key| {
        let object = at.as_object()?;
        object
            .get(key)
            .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
            .filter(|v| !v.is_null())
    })
}

/// A field as text: strings as they are, numbers and booleans printed.
fn text(value: &Value, path: &str) -> Option<String> {
    match get(value, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first of several fields that is set.
fn first(value: &Value, paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|path| text(value, path))
}

/// A time as RFC 3339: RFC 3339 text, `YYYY-MM-DD hh:mm:ss[.f]` (UTC), or
/// milliseconds since the epoch (number or digits).
fn time(value: &Value, paths: &[&str]) -> Result<String, String> {
    let Some((path, raw)) = paths.iter().find_map(|p| get(value, p).map(|v| (*p, v))) else {
        return Err(format!("no time: none of {} is set", paths.join(", ")));
    };
    let millis = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
    let parsed = match raw {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.round() as i64)).and_then(millis),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc()))
            .or_else(|| s.parse::<i64>().ok().and_then(millis)),
        _ => None,
    };
    parsed
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .ok_or_else(|| format!("{path} is not a time: {raw}"))
}

/// An id derived from the record itself, for sources without one: the same
/// record imported twice gets the same id, so idempotency applies.
fn derived_id(record: &Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, record.to_string().as_bytes());
    format!("sha256-{}", crate::storage::settings::to_hex(&digest.as_ref()[..16]))
}

/// `words like This` as `words_like_this`.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// The event for one source record of `format` in organisation `org`.
pub fn map(format: ImportFormat, record: &Value, org: &str) -> Result<Value, String> {
    if !record.is_object() {
        return Err("not a JSON object".into());
    }
    let mut event = match format {
        ImportFormat::Cloudtrail => cloudtrail(record)?,
        ImportFormat::K8s => k8s(record)?,
        ImportFormat::Github => github(record)?,
        ImportFormat::Okta => okta(record)?,
        ImportFormat::Atlassian => atlassian(record)?,
        ImportFormat::Ocsf => ocsf(record)?,
        ImportFormat::Ndjson => return Ok(record.clone()),
    };
    let fields = event.as_object_mut().expect("mappings build objects");
    fields.retain(|_, v| !v.is_null());
    fields.insert("org_id".into(), json!(org));
    fields.entry("id").or_insert_with(|| json!(derived_id(record)));
    fields.insert("attributes".into(), record.clone());
    Ok(event)
}

fn required(value: Option<String>, what: &str) -> Result<String, String> {
    value.ok_or_else(|| format!("{what} is missing"))
}

fn outcome_of(failed: bool) -> &'static str {
    if failed { "failure" } else { "success" }
}

/// AWS CloudTrail: one element of `Records`.
fn cloudtrail(r: &Value) -> Result<Value, String> {
    let name = required(text(r, "eventName"), "eventName")?;
    let source = text(r, "eventSource").unwrap_or_else(|| "aws".into());
    let service = source.trim_end_matches(".amazonaws.com");
    let actor =
        first(r, &["userIdentity.arn", "userIdentity.principalId", "userIdentity.invokedBy", "userIdentity.type"]);
    Ok(json!({
        "id": text(r, "eventID"),
        "time": time(r, &["eventTime"])?,
        "actor_id": required(actor, "userIdentity")?,
        "actor_name": first(r, &["userIdentity.userName", "userIdentity.sessionContext.sessionIssuer.userName"]),
        "actor_type": text(r, "userIdentity.type"),
        "action": format!("aws.{service}.{name}"),
        "category": first(r, &["eventCategory", "eventType"]),
        "outcome": outcome_of(get(r, "errorCode").is_some()),
        "product": "aws",
        "content_type": get(r, "resources").and_then(|v| v.get(0)).and_then(|v| text(v, "type")),
        "content_id": get(r, "resources").and_then(|v| v.get(0)).and_then(|v| text(v, "ARN")),
        "container_id": text(r, "recipientAccountId"),
        "source_ip": text(r, "sourceIPAddress"),
        "user_agent": text(r, "userAgent"),
        "location": text(r, "awsRegion"),
        "session_id": text(r, "userIdentity.accessKeyId"),
        "request_id": text(r, "requestID"),
    }))
}

/// Kubernetes audit (`audit.k8s.io` `Event`). One request is logged once per
/// stage with the same `auditID`: the stage is part of the id.
fn k8s(r: &Value) -> Result<Value, String> {
    match text(r, "kind").as_deref() {
        Some("Event") => {}
        Some(other) => return Err(format!("kind is {other:?}, not \"Event\"")),
        None => return Err("kind is missing".into()),
    }
    let verb = required(text(r, "verb"), "verb")?;
    let user = required(text(r, "user.username"), "user.username")?;
    let actor_type = match &user {
        u if u.starts_with("system:serviceaccount:") => "serviceaccount",
        u if u.starts_with("system:") => "system",
        _ => "user",
    };
    let resource = text(r, "objectRef.resource");
    let what = match (&resource, text(r, "objectRef.subresource")) {
        (Some(resource), Some(sub)) => format!("{resource}.{sub}"),
        (Some(resource), None) => resource.clone(),
        (None, _) => "nonresource".into(),
    };
    let code = get(r, "responseStatus.code").and_then(Value::as_i64);
    let audit_id = text(r, "auditID");
    Ok(json!({
        "id": audit_id.as_ref().map(|id| format!("{id}/{}", text(r, "stage").unwrap_or_default())),
        "time": time(r, &["stageTimestamp", "requestReceivedTimestamp", "metadata.creationTimestamp"])?,
        "actor_id": user,
        "actor_type": actor_type,
        "action": format!("k8s.{what}.{verb}"),
        "category": text(r, "stage"),
        "outcome": code.map(|c| outcome_of(c >= 400)),
        "product": "kubernetes",
        "content_type": resource,
        "content_id": text(r, "objectRef.name"),
        "container_id": text(r, "objectRef.namespace"),
        "source_ip": get(r, "sourceIPs").and_then(|v| v.get(0)).and_then(Value::as_str),
        "user_agent": text(r, "userAgent"),
        "request_id": audit_id,
    }))
}

/// GitHub organisation or enterprise audit log.
fn github(r: &Value) -> Result<Value, String> {
    let action = required(text(r, "action"), "action")?;
    let (content_type, content_id) = [("repo", "repo"), ("team", "team"), ("user", "user"), ("workflow", "name")]
        .iter()
        .find_map(|(kind, field)| text(r, field).map(|id| (Some(*kind), Some(id))))
        .unwrap_or((None, None));
    Ok(json!({
        "id": text(r, "_document_id"),
        "time": time(r, &["@timestamp", "created_at"])?,
        "actor_id": required(first(r, &["actor", "actor_id"]), "actor")?,
        "action": format!("github.{action}"),
        "category": text(r, "operation_type"),
        "product": "github",
        "content_type": content_type,
        "content_id": content_id,
        "container_id": first(r, &["org", "business"]),
        "source_ip": text(r, "actor_ip"),
        "location": text(r, "actor_location.country_code"),
        "user_agent": text(r, "user_agent"),
        "request_id": text(r, "request_id"),
    }))
}

/// Okta System Log `LogEvent`.
fn okta(r: &Value) -> Result<Value, String> {
    let event_type = required(text(r, "eventType"), "eventType")?;
    let target = get(r, "target").and_then(|t| t.get(0));
    Ok(json!({
        "id": text(r, "uuid"),
        "time": time(r, &["published"])?,
        "actor_id": required(first(r, &["actor.alternateId", "actor.id"]), "actor")?,
        "actor_name": text(r, "actor.displayName"),
        "actor_type": text(r, "actor.type"),
        "action": format!("okta.{event_type}"),
        "category": text(r, "severity"),
        "outcome": text(r, "outcome.result").map(|o| o.to_lowercase()),
        "product": "okta",
        "content_type": target.and_then(|t| text(t, "type")),
        "content_id": target.and_then(|t| first(t, &["alternateId", "id"])),
        "source_ip": text(r, "client.ipAddress"),
        "user_agent": text(r, "client.userAgent.rawUserAgent"),
        "location": text(r, "client.geographicalContext.country"),
        "session_id": text(r, "authenticationContext.externalSessionId"),
        "request_id": text(r, "debugContext.debugData.requestId"),
    }))
}

/// Atlassian organisation audit log (Admin API `events`).
fn atlassian(r: &Value) -> Result<Value, String> {
    let attributes = get(r, "attributes").ok_or("attributes is missing")?;
    let action = required(text(attributes, "action"), "attributes.action")?;
    let context = get(attributes, "context").and_then(|c| c.get(0));
    Ok(json!({
        "id": text(r, "id"),
        "time": time(attributes, &["time"])?,
        "actor_id": required(first(attributes, &["actor.id", "actor.email", "actor.name"]), "attributes.actor")?,
        "actor_name": text(attributes, "actor.name"),
        "action": format!("atlassian.{action}"),
        "product": "atlassian",
        "content_type": context.and_then(|c| text(c, "type")),
        "content_id": context.and_then(|c| text(c, "id")),
        "content_title": context.and_then(|c| text(c, "attributes.name")),
        "container_id": get(attributes, "container").and_then(|c| c.get(0)).and_then(|c| text(c, "id")),
        "source_ip": text(attributes, "location.ip"),
        "location": first(attributes, &["location.countryName", "location.geo"]),
    }))
}

/// OCSF (any class). Classes without an actor (network activity, findings)
/// are attributed to their source endpoint, else to the reporting product.
fn ocsf(r: &Value) -> Result<Value, String> {
    let class = required(text(r, "class_name").or_else(|| text(r, "class_uid")), "class_uid")?;
    let activity = first(r, &["api.operation", "activity_name", "activity_id"]).unwrap_or_else(|| "event".into());
    let actor = first(
        r,
        &[
            "actor.user.uid",
            "actor.user.name",
            "actor.user.uuid",
            "user.uid",
            "user.name",
            "src_endpoint.ip",
            "metadata.product.name",
        ],
    );
    Ok(json!({
        "id": text(r, "metadata.uid"),
        "time": time(r, &["time"])?,
        "actor_id": required(actor, "actor")?,
        "actor_name": text(r, "actor.user.name"),
        "actor_type": text(r, "actor.user.type"),
        "action": format!("ocsf.{}.{}", slug(&class), activity),
        "category": text(r, "category_name"),
        "outcome": text(r, "status").map(|s| s.to_lowercase()),
        "product": first(r, &["metadata.product.name", "metadata.product.vendor_name"]),
        "content_type": get(r, "resources").and_then(|v| v.get(0)).and_then(|v| text(v, "type")),
        "content_id": get(r, "resources").and_then(|v| v.get(0)).and_then(|v| first(v, &["uid", "name"])),
        "source_ip": text(r, "src_endpoint.ip"),
        "user_agent": text(r, "http_request.user_agent"),
        "location": text(r, "cloud.region"),
        "request_id": text(r, "api.request.uid"),
    }))
}

/// A record's fields other than the mapped ones, for tests.
#[cfg(test)]
fn field<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event.get(name).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_shape_the_sources_use() {
        let at = |v: Value| time(&json!({ "t": v }), &["t"]);
        assert_eq!(at(json!("2014-03-06T21:22:54Z")).unwrap(), "2014-03-06T21:22:54Z");
        assert_eq!(at(json!("2022-11-29 00:09:04.38")).unwrap(), "2022-11-29T00:09:04.380Z");
        assert_eq!(at(json!(1615077308538i64)).unwrap(), "2021-03-07T00:35:08.538Z");
        assert!(at(json!("yesterday")).unwrap_err().contains("t is not a time"));
        assert!(time(&json!({}), &["a", "b"]).unwrap_err().contains("none of a, b"));
    }

    #[test]
    fn keys_are_found_ignoring_case_when_not_exact() {
        let r = json!({ "eventtype": "user.session.start", "Actor": { "alternateid": "a@x" } });
        assert_eq!(text(&r, "eventType").as_deref(), Some("user.session.start"));
        assert_eq!(text(&r, "actor.alternateId").as_deref(), Some("a@x"));
    }

    #[test]
    fn a_record_without_an_id_gets_the_same_derived_id_each_time() {
        let r = json!({ "action": "repo.create", "actor": "octocat", "created_at": 1615077308538i64 });
        let a = map(ImportFormat::Github, &r, "acme").unwrap();
        let b = map(ImportFormat::Github, &r, "acme").unwrap();
        assert_eq!(field(&a, "id"), field(&b, "id"));
        assert!(field(&a, "id").unwrap().starts_with("sha256-"));
        assert_eq!(a["attributes"], r, "the source event is kept whole");
        assert_eq!(field(&a, "org_id"), Some("acme"));
    }

    #[test]
    fn k8s_stages_of_one_request_are_distinct_events() {
        let stage = |s: &str| {
            json!({ "kind": "Event", "auditID": "a1", "stage": s, "verb": "create",
                    "user": { "username": "system:serviceaccount:kube-system:x" },
                    "objectRef": { "resource": "pods", "namespace": "default", "name": "p" },
                    "stageTimestamp": "2018-10-26T13:42:46.764713Z", "responseStatus": { "code": 403 } })
        };
        let started = map(ImportFormat::K8s, &stage("RequestReceived"), "o").unwrap();
        let done = map(ImportFormat::K8s, &stage("ResponseComplete"), "o").unwrap();
        assert_ne!(started["id"], done["id"]);
        assert_eq!(field(&done, "action"), Some("k8s.pods.create"));
        assert_eq!(field(&done, "actor_type"), Some("serviceaccount"));
        assert_eq!(field(&done, "outcome"), Some("failure"));
        let list = json!({ "kind": "EventList" });
        assert!(map(ImportFormat::K8s, &list, "o").unwrap_err().contains("not \"Event\""));
    }
}
