"""`kinelab check`: are the replicas and the table telling the same story?

Kine ships no consistency checker (the `kine consistency-check` command some articles describe does not
exist in any Kine release). This one:

1. ranges the keyspace on every replica at ONE common revision (paged), hashing (key, mod_revision, value);
2. reads the same thing straight from the table: per name, the newest row at or below that revision,
   if it is not a tombstone;
3. checks the table's own history: Kine copies a key's previous value into `old_value` of the next row,
   so a superseded row whose value no longer matches its successor's `old_value` was changed behind Kine's
   back;
4. optionally compares against an earlier capture: Kine never rewrites a row (except compact_rev_key), so
   a row that differs from the captured one was changed by hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..db import read_only_connection
from ..dsn import Dsn
from ..errors import EtcdError
from ..etcd import Etcd


def _digest(value: Optional[bytes]) -> Optional[str]:
    return hashlib.sha256(value).hexdigest()[:16] if value is not None else None


@dataclass
class View:
    """What one source says the keyspace is at the common revision: key -> (mod_revision, value digest)."""

    source: str
    keys: dict = field(default_factory=dict)
    revision: Optional[int] = None
    error: str = ""

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for key in sorted(self.keys):
            mod_revision, value = self.keys[key]
            h.update(f"{key}\0{mod_revision}\0{value}\n".encode())
        return h.hexdigest()[:16]


@dataclass
class CheckReport:
    revision: int
    prefix: str
    views: list
    divergent: list  # [{"key": k, "<source>": [mod_revision, digest] | None, ...}]
    history_breaks: list  # [{"id": row id, "name": key, "successor": id}]
    changed_rows: list  # [{"id": row id, "name": key}]

    @property
    def consistent(self) -> bool:
        return not (self.divergent or self.history_breaks or self.changed_rows
                    or any(v.error for v in self.views))

    def to_json(self) -> dict:
        return {"consistent": self.consistent, "revision": self.revision, "prefix": self.prefix,
                "sources": [{"source": v.source, "revision": v.revision, "keys": len(v.keys), "hash": v.digest,
                             "error": v.error} for v in self.views],
                "divergent": self.divergent, "history_breaks": self.history_breaks,
                "changed_rows": self.changed_rows}


def _replica_view(index: int, endpoint: str, prefix: str, revision: int, page: int) -> View:
    view = View(f"replica-{index} {endpoint}")
    try:
        with Etcd(endpoint) as client:
            view.revision = client.revision()
            for kv in client.iter_prefix(prefix, revision=revision, page=page):
                view.keys[kv.key] = (kv.mod_revision, _digest(kv.value))
    except EtcdError as exc:
        view.error = str(exc)
    return view


def _database_view(dsn: Dsn, prefix: str, revision: int, with_rows: bool) -> tuple:
    """The table's answer at `revision`, its history breaks and, `with_rows`, every row's digest."""
    view = View(f"database {dsn.masked}")
    ph = "?" if dsn.kind == "sqlite" else "%s"
    like = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"  # '!' escapes alike everywhere
    with read_only_connection(dsn) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM kine")
        view.revision = int(cur.fetchall()[0][0])
        cur.execute(f"""SELECT k.name, k.id, k.value FROM kine k
                        JOIN (SELECT name, MAX(id) AS id FROM kine WHERE id <= {ph} AND name LIKE {ph} ESCAPE '!'
                              GROUP BY name) latest ON latest.id = k.id
                        WHERE k.deleted = 0""", (revision, like))
        for name, row_id, value in cur.fetchall():
            view.keys[name] = (int(row_id), _digest(bytes(value) if value is not None else None))
        cur.execute("""SELECT p.id, p.name, n.id FROM kine n JOIN kine p ON p.id = n.prev_revision
                       WHERE n.prev_revision > 0 AND p.deleted = 0 AND n.created = 0
                         AND NOT (p.value = n.old_value OR (p.value IS NULL AND n.old_value IS NULL))""")
        breaks = [{"id": int(a), "name": b, "successor": int(c)} for a, b, c in cur.fetchall()]
        rows = {}
        if with_rows:
            cur.execute("SELECT id, name, value FROM kine WHERE name <> 'compact_rev_key'")
            rows = {int(i): (n, _digest(bytes(v) if v is not None else None)) for i, n, v in cur.fetchall()}
        cur.close()
    return view, breaks, rows


def _changed_since(baseline: str, rows: dict) -> list:
    from .store import open_capture_file

    con = open_capture_file(baseline)
    try:
        captured = con.execute("SELECT id, name, value FROM kine_latest WHERE name <> 'compact_rev_key'").fetchall()
    finally:
        con.close()
    return [{"id": i, "name": n} for i, n, v in captured if i in rows and rows[i][1] != _digest(v)]


def check(endpoints: Sequence[str], dsn: Optional[Dsn] = None, *, prefix: str = "/", page: int = 1000,
          baseline: Optional[str] = None) -> CheckReport:
    """Compare every replica (and the table, when `dsn` is given) at one common revision."""
    revisions = []
    for endpoint in endpoints:
        try:
            with Etcd(endpoint, timeout_s=5) as client:
                revisions.append(client.revision())
        except EtcdError:
            pass
    if endpoints and not revisions:  # nothing to compare: the address is wrong or the lab is down
        raise EtcdError(f"no replica answered at {', '.join(endpoints)}; check the endpoints, or start the lab "
                        "(`kinelab status` shows it)", "UNAVAILABLE")
    revision = min(revisions) if revisions else 0
    views = [_replica_view(i, ep, prefix, revision, page) for i, ep in enumerate(endpoints)]
    breaks, changed = [], []
    if dsn is not None:
        db_view, breaks, rows = _database_view(dsn, prefix, revision, with_rows=bool(baseline))
        views.append(db_view)
        if baseline:
            changed = _changed_since(baseline, rows)
    return CheckReport(revision, prefix, views, divergent_keys(views), breaks, changed)


def divergent_keys(views: Sequence[View]) -> list:
    """Every key on which the answering sources disagree, with what each said (None: it lacks the key)."""
    answering = [v for v in views if not v.error]
    divergent = []
    for key in sorted(set().union(*(v.keys for v in answering)) if answering else ()):
        answers = {v.source: tuple(a) if a else None for v in answering for a in [v.keys.get(key)]}
        if len(set(answers.values())) > 1:
            divergent.append({"key": key, **{s: list(a) if a else None for s, a in answers.items()}})
    return divergent


def recheck(report: CheckReport) -> CheckReport:
    """`report` judged again by today's comparison, from the views it recorded (a replay's check reports): the
    table's history breaks and changed rows stay as recorded, since a report does not hold the table."""
    return CheckReport(report.revision, report.prefix, report.views, divergent_keys(report.views),
                       report.history_breaks, report.changed_rows)
