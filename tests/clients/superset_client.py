"""Apache Superset against auditlake, through Superset's REST API (its own
Flask app, in process, with its SQLite metadata database already set up):
test the connection, add the database, add `audit_events` as a dataset, run
an investigation in SQL Lab, and ask for a chart's data (events per day by
action over the last 30 days).

Usage: superset_client.py SQLALCHEMY_URI DATABASE_NAME ACTOR CHART_ACTORS,
with SUPERSET_CONFIG_PATH set: ACTOR is investigated in SQL Lab, the chart
counts the events of CHART_ACTORS (comma-separated). Prints what each step
answered, one fact per line.
"""
import json
import sys

from superset.app import create_app

URI, NAME, ACTOR, CHART_ACTORS = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

app = create_app()
client = app.test_client()


def call(method, path, body=None, expect=200):
    response = client.open(path, method=method, json=body, headers=headers)
    assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.data[:2000]!r}"
    return response.get_json()


headers = {}
login = {"username": "admin", "password": "admin", "provider": "db", "refresh": False}
headers["Authorization"] = "Bearer " + call("POST", "/api/v1/security/login", login)["access_token"]

# Superset 6 pins SQLAlchemy 1.4, which has no psycopg 3 dialect: Superset
# itself refuses `postgresql+psycopg://` before connecting to anything.
psycopg3 = URI.replace("postgresql+psycopg2://", "postgresql+psycopg://")
refused = client.open("/api/v1/database/test_connection/", method="POST", headers=headers,
                      json={"sqlalchemy_uri": psycopg3, "database_name": NAME})
print("psycopg 3 refused by superset", refused.status_code, refused.get_json()["errors"][0]["message"])

call("POST", "/api/v1/database/test_connection/", {"sqlalchemy_uri": URI, "database_name": NAME})
print("test connection ok")
database = call("POST", "/api/v1/database/", {
    "database_name": NAME, "sqlalchemy_uri": URI, "expose_in_sqllab": True,
}, expect=201)["id"]
schemas = call("GET", f"/api/v1/database/{database}/schemas/")["result"]
print("schemas", [s for s in schemas if s == "public"])
tables = call("GET", f"/api/v1/database/{database}/tables/?q=(schema_name:public)")["result"]
print("tables", [t["value"] for t in tables])

dataset = call("POST", "/api/v1/dataset/", {
    "database": database, "schema": "public", "table_name": "audit_events",
}, expect=201)["id"]
described = call("GET", f"/api/v1/dataset/{dataset}")["result"]
columns = {c["column_name"]: c for c in described["columns"]}
print("dataset columns", len(columns), "main time column", described["main_dttm_col"])
for name in ["time", "received_at", "actor_id", "seq", "outcome", "attributes"]:
    column = columns[name]
    print("dataset column", name, column["type"], "temporal" if column["is_dttm"] else "not temporal")
print("dataset untyped", sorted(name for name, c in columns.items() if not c["type"]))
print("dataset metrics", [m["metric_name"] for m in described["metrics"]])

investigation = call("POST", "/api/v1/sqllab/execute/", {
    "database_id": database,
    "schema": "public",
    "sql": "select action, count(*) as n from audit_events "
           f"where actor_id = '{ACTOR}' group by action order by action",
    "runAsync": False,
    "client_id": f"al{database}",
})
print("sql lab", investigation["status"], [(r["action"], r["n"]) for r in investigation["data"]])

chart = call("POST", "/api/v1/chart/data", {
    "datasource": {"id": dataset, "type": "table"},
    "queries": [{
        "columns": [
            {"columnType": "BASE_AXIS", "sqlExpression": "time", "label": "time",
             "expressionType": "SQL", "timeGrain": "P1D"},
            "action",
        ],
        "metrics": ["count"],
        "filters": [
            {"col": "time", "op": "TEMPORAL_RANGE", "val": "DATEADD(DATETIME(\"now\"), -30, day) : now"},
            {"col": "actor_id", "op": "IN", "val": CHART_ACTORS},
        ],
        "orderby": [["count", False]],
        "row_limit": 1000,
    }],
    "result_format": "json",
    "result_type": "full",
})
(result,) = chart["result"]
assert not result.get("error"), result
points = sorted((row["time"], row["action"], row["count"]) for row in result["data"])
print("chart", result["rowcount"], json.dumps(points))
