"""Writes N audit events as NDJSON (the shape `POST /v1/events` takes) from a
generator that shares nothing with auditlake's own demo generator, so that
layout and encoding choices are not tuned to one data shape. Its properties
are those issue 22 describes of an independent realistic set:

- 50 organisations of strongly skewed sizes (the largest holds about 40 %);
- 20,000 actors with ids like `user-6152@org-004.example`, each in one org;
- UUIDv4 event ids; `request_id` as 32 hex characters (an md5);
- `session_id` as 32 hex characters, reused about 10 times per actor-session;
- 500,000 content ids, most of them rare (Zipf-like popularity);
- four long real browser user agents;
- `attributes` a small JSON object;
- about 640 bytes per event; 180 days of uniformly spread time, written in
  time order as an audit log receives them (each event's time is drawn
  uniformly inside its own 1/N of the span, so times are uniform and sorted);
  `--shuffled` writes them in random time order instead, as an import of
  history in no particular order would.

Deterministic for a seed:

    python3 bench/independent_events.py N OUT.ndjson [--seed S] [--end 2026-12-01T00:00:00Z] [--shuffled]
"""
import argparse
import bisect
import datetime
import hashlib
import itertools
import json
import random
import uuid

ORGS = 50
ACTORS = 20_000
CONTENT_IDS = 500_000
DAYS = 180
EVENTS_PER_SESSION = 10
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1.1 Mobile/15E148 Safari/604.1",
]
# (action, product, content type, category): what people do in a wiki and a
# tracker, reads far more often than changes, a few admin acts.
ACTIONS = [
    ("page.viewed", "wiki", "page", "content", 40),
    ("page.updated", "wiki", "page", "content", 6),
    ("page.created", "wiki", "page", "content", 2),
    ("attachment.downloaded", "wiki", "attachment", "content", 5),
    ("issue.viewed", "tracker", "issue", "content", 25),
    ("issue.updated", "tracker", "issue", "content", 8),
    ("issue.commented", "tracker", "issue", "content", 5),
    ("issue.deleted", "tracker", "issue", "content", 1),
    ("user.login", "identity", None, "authentication", 6),
    ("user.login_failed", "identity", None, "authentication", 1),
    ("permission.granted", "admin", "space", "access", 1),
]
COUNTRIES = ["US", "DE", "GB", "FR", "IN", "BR", "JP", "AU", "CA", "NL"]


def cumulative(weights):
    return list(itertools.accumulate(weights))


def pick(rng, items, totals):
    return items[bisect.bisect_right(totals, rng.random() * totals[-1])]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("events", type=int)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--end", default="2026-12-01T00:00:00Z")
    parser.add_argument("--shuffled", action="store_true", help="times in random order, not ascending")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    end = datetime.datetime.fromisoformat(args.end.replace("Z", "+00:00"))
    end_s = end.timestamp()
    span_s = DAYS * 86_400

    # Org sizes: the largest near 40 %, then a long tail (weights 1/k^1.4).
    org_weights = [1 / (k ** 1.4) for k in range(1, ORGS + 1)]
    orgs = [f"org-{k:03d}" for k in range(ORGS)]
    # Actors spread over orgs by the same skew; each actor's own activity
    # is skewed too (some people do most of the work).
    org_totals = cumulative(org_weights)
    actors = []
    for a in range(ACTORS):
        org = pick(rng, orgs, org_totals)
        actors.append((f"user-{a}@{org}.example", org, f"User {a}", USER_AGENTS[a % len(USER_AGENTS)]))
    actor_totals = cumulative([1 / ((i % 997) + 1) ** 0.6 for i in range(ACTORS)])
    content_totals = cumulative([1 / (k ** 0.9) for k in range(1, CONTENT_IDS + 1)])
    content_ids = list(range(CONTENT_IDS))
    rng.shuffle(content_ids)
    action_totals = cumulative([a[4] for a in ACTIONS])
    sessions = {}

    with open(args.out, "w") as out:
        for i in range(args.events):
            actor_id, org, name, user_agent = pick(rng, actors, actor_totals)
            action, product, content_type, category, _ = pick(rng, ACTIONS, action_totals)
            # A session id lasts about ten events of its actor.
            session, left = sessions.get(actor_id, (None, 0))
            if left == 0:
                session, left = uuid.UUID(int=rng.getrandbits(128)).hex, EVENTS_PER_SESSION
            sessions[actor_id] = (session, left - 1)
            if args.shuffled:
                t = end_s - rng.random() * span_s
            else:
                t = end_s - span_s + (i + rng.random()) * span_s / args.events
            event = {
                "time": datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
                    timespec="milliseconds").replace("+00:00", "Z"),
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "org_id": org,
                "actor_id": actor_id,
                "actor_name": name,
                "action": f"{product}.{action}",
                "category": category,
                "outcome": "failure" if action.endswith("failed") else "success",
                "product": product,
                "source_ip": f"{rng.choice([10, 172, 192, 81, 94])}.{rng.randrange(256)}."
                             f"{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "user_agent": user_agent,
                "location": rng.choice(COUNTRIES),
                "session_id": session,
                "request_id": hashlib.md5(f"{args.seed}-{i}".encode()).hexdigest(),
                "attributes": {
                    "client": rng.choice(["web", "mobile", "api"]),
                    "latency_ms": rng.randrange(5, 900),
                },
            }
            if content_type:
                content = pick(rng, content_ids, content_totals)
                event["content_type"] = content_type
                event["content_id"] = f"{content_type}-{content:06d}"
                event["content_title"] = f"{content_type.title()} {content}"
                event["container_id"] = f"{org}-s{content % 40}"
            out.write(json.dumps(event, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
