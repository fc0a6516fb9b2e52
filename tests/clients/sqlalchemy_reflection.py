"""SQLAlchemy 2's full reflection (what Superset and Alembic run) and pandas'
read_sql_table against auditlake, through psycopg 3 or psycopg2.

Usage: sqlalchemy_reflection.py URL DRIVER ACTOR, DRIVER being `psycopg` or
`psycopg2`. Prints what each call answered, one fact per line, for the
integration test to compare with what it expects.
"""
import sys

import pandas
import sqlalchemy

URL, DRIVER, ACTOR = sys.argv[1], sys.argv[2], sys.argv[3]
APP = "category is distinct from 'audit_access'"

engine = sqlalchemy.create_engine(URL.replace("postgresql://", f"postgresql+{DRIVER}://"))
with engine.connect():
    print("driver", engine.dialect.driver, engine.dialect.server_version_info[:2])

table = sqlalchemy.Table("audit_events", sqlalchemy.MetaData(), autoload_with=engine)
print("table", len(table.columns), [c.name for c in table.columns][:4])
print("table time", repr(table.c.time.type), table.c.time.nullable, "indexes", len(table.indexes))
print("table attributes", repr(table.c.attributes.type), table.c.attributes.nullable)

metadata = sqlalchemy.MetaData()
metadata.reflect(bind=engine)
print("reflect", sorted(metadata.tables))

inspector = sqlalchemy.inspect(engine)
print("indexes", inspector.get_indexes("audit_events"))
print("unique", inspector.get_unique_constraints("audit_events"))
print("foreign", inspector.get_foreign_keys("audit_events"))
print("check", inspector.get_check_constraints("audit_events"))
print("comment", inspector.get_table_comment("audit_events"))
print("views", inspector.get_view_names(), inspector.get_materialized_view_names())
print("sequences", inspector.get_sequence_names())
multi = {
    "columns": inspector.get_multi_columns(),
    "indexes": inspector.get_multi_indexes(),
    "pk": inspector.get_multi_pk_constraint(),
    "foreign": inspector.get_multi_foreign_keys(),
    "unique": inspector.get_multi_unique_constraints(),
    "check": inspector.get_multi_check_constraints(),
    "comment": inspector.get_multi_table_comment(),
}
for name, answer in multi.items():
    ((key, value),) = answer.items()
    print("multi", name, key, len(value) if isinstance(value, list) else value)

# The investigation, through the Core table the reflection built.
with engine.connect() as conn:
    by_action = (
        sqlalchemy.select(table.c.action, sqlalchemy.func.count().label("n"))
        .where(table.c.actor_id == ACTOR)
        .group_by(table.c.action)
        .order_by(table.c.action)
    )
    print("select", [tuple(row) for row in conn.execute(by_action)])
    orgs = sqlalchemy.select(table.c.org_id).where(sqlalchemy.text(APP)).distinct().order_by(table.c.org_id)
    print("orgs", [row[0] for row in conn.execute(orgs)])

frame = pandas.read_sql_table("audit_events", engine)
apps = frame[frame["category"] != "audit_access"]
print("read_sql_table", len(frame.columns), str(frame["time"].dtype), len(apps), sorted(set(apps["org_id"])))
