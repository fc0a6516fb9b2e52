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

engine = sqlalchemy.create_engine(URL.replace("postgresql://", "postgresql+psycopg://"))
inspector = sqlalchemy.inspect(engine)
print("sqlalchemy tables", inspector.get_table_names())
print("sqlalchemy schemas", inspector.get_schema_names())
# Not yet: its correlated subqueries inside CASE are beyond DataFusion's
# decorrelation. Printed so the test notices when that changes.
for name, call in [("get_columns", inspector.get_columns), ("get_pk_constraint", inspector.get_pk_constraint)]:
    try:
        print("sqlalchemy", name, call("audit_events"))
    except sqlalchemy.exc.DBAPIError as error:
        print("sqlalchemy", name, "fails:", type(error.orig).__name__)
with engine.connect() as conn:
    n = conn.execute(sqlalchemy.text("select count(*) from audit_events where actor_id = :a"), {"a": ACTOR}).scalar()
    print("sqlalchemy count", n)

frame = pandas.read_sql(
    sqlalchemy.text(BY_ACTION.replace("%s", ":actor")), engine, params={"actor": ACTOR}
)
print("pandas", list(frame.columns), list(frame["action"]), [int(n) for n in frame["n"]])
print("pandas last", str(frame["last"].dtype), utc(frame["last"].max()))
