"""psycopg 3 (server-side binding), SQLAlchemy and pandas against auditlake.

Usage: python_client.py URL ACTOR. Prints what each client got, one fact per
line, for the integration test to compare with what it expects.
"""
import datetime
import sys

import pandas
import psycopg
import sqlalchemy

URL, ACTOR = sys.argv[1], sys.argv[2]
BY_ACTION = (
    "select action, count(*) as n, max(time) as last from audit_events "
    "where actor_id = %s group by action order by action"
)


def utc(t):
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# psycopg 3 binds %s parameters on the server (extended protocol).
with psycopg.connect(URL) as conn:
    cur = conn.execute(BY_ACTION, [ACTOR])
    print("psycopg types", [d.type_code for d in cur.description])
    for action, n, last in cur.fetchall():
        print("psycopg", action, n, utc(last))
    cur = conn.execute("select count(*) from audit_events where org_id <> %s", ["acme"])
    print("psycopg other orgs", cur.fetchone()[0])
    # A primary key's columns in order, the way SQLAlchemy lists them, over
    # a catalog table that has one (pg_attribute: attrelid, attnum).
    cur = conn.execute(
        "select unnest(i.indkey) as attnum, generate_subscripts(i.indkey, %s) as ord "
        "from pg_catalog.pg_constraint c join pg_catalog.pg_index i on c.conindid = i.indexrelid "
        "where c.contype = 'p' and c.conrelid = %s order by ord",
        [1, 1249],
    )
    print("psycopg pg_attribute key", cur.fetchall())

engine = sqlalchemy.create_engine(URL.replace("postgresql://", "postgresql+psycopg://"))
inspector = sqlalchemy.inspect(engine)
print("sqlalchemy tables", inspector.get_table_names())
print("sqlalchemy schemas", inspector.get_schema_names())
columns = {c["name"]: c for c in inspector.get_columns("audit_events")}
print("sqlalchemy columns", len(columns), list(columns)[:3])
for name in ["time", "actor_id", "actor_name", "seq"]:
    c = columns[name]
    print("sqlalchemy column", name, repr(c["type"]), "null" if c["nullable"] else "not null", c["default"])
print("sqlalchemy primary key", inspector.get_pk_constraint("audit_events"))
with engine.connect() as conn:
    n = conn.execute(sqlalchemy.text("select count(*) from audit_events where actor_id = :a"), {"a": ACTOR}).scalar()
    print("sqlalchemy count", n)

frame = pandas.read_sql(
    sqlalchemy.text(BY_ACTION.replace("%s", ":actor")), engine, params={"actor": ACTOR}
)
print("pandas", list(frame.columns), list(frame["action"]), [int(n) for n in frame["n"]])
print("pandas last", str(frame["last"].dtype), utc(frame["last"].max()))
