"""pgcli against auditlake, through pgcli's own code: the executor its
prompt uses, the completion refresher it runs when it connects (every
catalog query it sends must answer), its completer, `\\dt`, `\\d` and an
investigation with the special commands it hands to pgspecial.

Usage: pgcli_client.py HOST PORT USER PASSWORD ACTOR. Prints what each step
answered, one fact per line, for the integration test to compare.
"""
import sys

from pgcli.completion_refresher import CompletionRefresher
from pgcli.pgcompleter import PGCompleter
from pgcli.pgexecute import PGExecute
from pgspecial.main import PGSpecial
from prompt_toolkit.document import Document

HOST, PORT, USER, PASSWORD, ACTOR = sys.argv[1:6]

executor = PGExecute("auditlake", USER, PASSWORD, HOST, PORT)
print("connected", executor.server_version.split(" ")[0], executor.get_timezone())
special = PGSpecial()

# What the refresher runs in the background when pgcli starts: here in the
# foreground, so a catalog query that fails fails the run.
completer = PGCompleter(smart_completion=True, pgspecial=special)
for name, refresh in CompletionRefresher.refreshers.items():
    refresh(completer, executor)
print("refreshed", list(CompletionRefresher.refreshers))
print("search_path", executor.search_path())


def completions(text, prefix):
    found = completer.get_completions(Document(text=text, cursor_position=len(text)), None)
    return sorted({c.text for c in found if c.text.startswith(prefix)})


print("complete table", completions("select * from aud", "aud"))
print("complete column", completions("select * from audit_events where actor_", "actor_"))
function = next(f for f in executor.functions() if f.func_name == "format_type")
print("function", function.func_name, function.arg_types, function.return_type)


def run(statement):
    """The rows and status of each result, as pgcli prints them."""
    for title, cur, headers, status, _sql, success, _special in executor.run(statement, pgspecial=special):
        assert success, statement
        rows = [tuple(row) for row in cur] if cur is not None else []
        yield headers, rows, status


for headers, rows, _ in run("\\dt"):
    print("\\dt", headers, rows)
for headers, rows, _ in run("\\d audit_events"):
    print("\\d", len(rows), rows[0][:2], rows[3][:2], [r[:2] for r in rows if r[0] == "attributes"])
investigation = (
    f"select action, count(*) as n from audit_events where actor_id = '{ACTOR}' group by action order by action"
)
for headers, rows, status in run(investigation):
    print("investigation", headers, rows, status)
apps = "select distinct org_id from audit_events where category is distinct from 'audit_access' order by org_id"
for _, rows, _ in run(apps):
    print("orgs", [r[0] for r in rows])
