"""The flight recorder: a sampled record's path through the steps (docs/debugging.md, issue 14).

A flow opts in with ``record: {sample: 0.01, keep: 7d, redact: [customer.email]}``
(:class:`flownb.flow.RecordPolicy`). Whether a record is recorded is decided by its **trace id**
alone (:func:`sampled`: a hash of the id compared with the rate), so a sampled record is recorded at
every step, on every runtime, and an unsampled one at none. For each sampled input a step ran, one
row holds its input body, its output bodies (as they went on the wire) and its outcome —
``delivered`` (outputs passed on), ``filtered`` (no output), ``retry`` or ``dead`` with the error —
after the ``redact`` paths were replaced by :data:`REDACTED` (and the flow's secret values masked),
before it is stored anywhere.

Where the rows go:

- embedded runtime: the ``recorder`` table of the state database, written in the transaction that
  commits the step's outputs (:class:`Recorder.batch` → ``QueueStore.commit_batch(record=…)``); rows
  older than ``keep`` are deleted in that transaction about once a minute;
- RabbitMQ: each step worker publishes a batch's rows as one event to the tap exchange
  ``flownb.<flow>.recorder`` (:mod:`flownb.runtime.amqp.recorder`); ``flownb recorder SPEC --broker
  URL --db FILE`` drains its queue into a SQLite file with the same table.

:func:`trace` reads a path back as a DataFrame (pandas is imported there only: workers never load it).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import SpecError, StateError
from .flow import Flow, RecordPolicy

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCHEMA", "COLUMNS", "REDACTED", "Recorder", "RecordBatch", "sampled", "redact_paths", "open_db",
           "insert", "prune", "trace", "trace_rows", "not_recorded", "TRACE_COLUMNS", "PRUNE_EVERY"]

#: what a redacted field holds in a recorded body
REDACTED = "[REDACTED]"
#: seconds between two prunes of rows older than ``keep`` (embedded runtime and ``flownb recorder``)
PRUNE_EVERY = 60.0

#: the table on both runtimes (the state database; the file ``flownb recorder`` writes)
SCHEMA = """
CREATE TABLE IF NOT EXISTS recorder (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trace TEXT NOT NULL,
    step TEXT NOT NULL,
    pos INTEGER NOT NULL,
    message TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error_type TEXT,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recorder_trace ON recorder (trace);
CREATE INDEX IF NOT EXISTS recorder_at ON recorder (at);
"""
#: the columns of a row, in the table's order (without ``id``)
COLUMNS = ("trace", "step", "pos", "message", "attempt", "input", "output", "outcome", "error_type", "error", "at")
_INSERT = f"INSERT INTO recorder ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_OUTCOMES = {"forward": "delivered", "filtered": "filtered", "retry": "retry", "dead": "dead"}
_SCALE = float(2 ** 64)


def sampled(trace: str, rate: float) -> bool:
    """Whether trace id ``trace`` is recorded at ``rate`` (0..1): the first 8 bytes of its BLAKE2b
    hash, as a fraction of 2**64, below the rate. The same answer in every process and step."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    h = hashlib.blake2b(trace.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(h, "big") / _SCALE < rate


def _redacted(value: Any, parts: Sequence[str]) -> Any:
    """``value`` with the path ``parts`` replaced, copied only along that path (the rest is shared);
    ``value`` itself when the path is not in it."""
    if isinstance(value, list):  # a path through an array applies to each of its objects
        items = [_redacted(item, parts) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if not isinstance(value, dict) or parts[0] not in value:
        return value
    if len(parts) == 1:
        child: Any = REDACTED
    else:
        child = _redacted(value[parts[0]], parts[1:])
        if child is value[parts[0]]:
            return value
    out = dict(value)
    out[parts[0]] = child
    return out


def redact_paths(body: Any, paths: Sequence[str]) -> Any:
    """``body`` with each dotted path (``customer.email``; through arrays: each element) replaced by
    :data:`REDACTED`: a copy along the paths that are there, ``body`` itself is never changed. A path
    that is not there is skipped."""
    for path in paths:
        body = _redacted(body, path.split("."))
    return body


@dataclass
class RecordBatch:
    """What one step batch adds to the recorder: ``rows`` (tuples in :data:`COLUMNS` order) and,
    when a prune is due, ``prune_before`` (delete rows recorded before it)."""

    rows: list[tuple]
    prune_before: float | None = None

    def __bool__(self) -> bool:
        return bool(self.rows) or self.prune_before is not None


class Recorder:
    """The recorder of one flow: turns a step's outcomes into rows (sampled, redacted)."""

    def __init__(self, flow: Flow, policy: RecordPolicy | None = None):
        policy = policy or flow.record
        if policy is None:
            raise SpecError(f"flow '{flow.name}' has no 'record:' section; add one to record paths, e.g. "
                            f"record: {{sample: 0.01, keep: 7d, redact: [customer.email]}}", field="record")
        self.flow = flow.name
        self.policy = policy
        self.rate = policy.sample
        self.paths = list(policy.redact)
        self._parts = [p.split(".") for p in self.paths]
        self.pos = {s.name: i for i, s in enumerate(flow.all_steps)}
        from .secrets import Redactor, active_redactor
        self._secrets = Redactor.from_flow(flow) | active_redactor()
        self._next_prune = 0.0

    @classmethod
    def of(cls, flow: Flow) -> Recorder | None:
        """The flow's recorder, or None when its spec has no ``record:`` (or samples nothing)."""
        if flow.record is None or flow.record.sample <= 0.0:
            return None
        return cls(flow)

    def _json(self, value: Any) -> str:
        for parts in self._parts:
            value = _redacted(value, parts)
        if self._secrets:
            value = self._secrets.redact_obj(value)
        return orjson.dumps(value, default=str).decode()

    def rows(self, step: str, outcomes: Sequence[Any], now: float | None = None) -> list[tuple]:
        """Rows for the sampled ``outcomes`` (:class:`flownb.runtime.core.Outcome`) of ``step``."""
        rate = self.rate
        out: list[tuple] = []
        at = time.time() if now is None else now
        for o in outcomes:
            if o.undecodable or not sampled(o.message.trace, rate):
                continue
            m = o.message
            try:  # the input as received: a step's in-place change must not show as its input
                body = orjson.loads(o.payload)["body"] if o.payload is not None else m.body
            except (orjson.JSONDecodeError, KeyError, TypeError):
                body = m.body
            if o.error is None:
                # a fused stage passes outputs on in memory (no wire form): their bodies as they are
                outputs = [orjson.loads(p)["body"] for p in o.payloads] if o.payloads else \
                    [c.body for c in o.outputs]
                outcome = "delivered" if outputs else "filtered"
                etype = error = None
            else:
                outputs = []
                outcome = "dead" if o.retry_after is None else "retry"
                etype, error = o.error.type, o.error.message
            out.append((m.trace, step, self.pos.get(step, -1), m.id, m.attempt, self._json(body),
                        self._json(outputs), outcome, etype, error, at))
        return out

    def batch(self, step: str, outcomes: Sequence[Any], now: float | None = None) -> RecordBatch:
        """:meth:`rows` plus, about every :data:`PRUNE_EVERY` seconds, the time before which rows are
        pruned (``now - keep``)."""
        now = time.time() if now is None else now
        prune_before = None
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            prune_before = now - self.policy.keep
        return RecordBatch(self.rows(step, outcomes, now), prune_before)


# -- storage ---------------------------------------------------------------------------------------

def insert(conn: sqlite3.Connection, batch: RecordBatch) -> int:
    """Write ``batch`` inside the caller's open transaction; the number of rows pruned. (No unique
    key: it would cost more than half of the recorder's write time; a RabbitMQ event drained twice
    after a crash is stored twice and :func:`trace_rows` shows it once.)"""
    if batch.rows:
        conn.executemany(_INSERT, batch.rows)
    return prune(conn, batch.prune_before) if batch.prune_before is not None else 0


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete rows recorded before ``before`` (inside the caller's transaction); the count."""
    return conn.execute("DELETE FROM recorder WHERE at < ?", (before,)).rowcount


def open_db(path: str | Path) -> sqlite3.Connection:
    """The SQLite file ``flownb recorder`` writes (WAL, the table created): autocommit mode, the
    caller opens its transactions."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    except (sqlite3.Error, OSError) as exc:
        raise StateError(f"cannot open the recorder database '{path}': {exc}; pass a writable --db FILE") from exc
    return conn


# -- reading a path back ---------------------------------------------------------------------------

def _source(spec: Flow | str | Path | None, state_dir: str | Path | None,
            db: str | Path | None) -> tuple[Path, Flow | None]:
    if state_dir is not None and db is not None:
        raise SpecError("pass state_dir (the embedded runtime's state directory) or db (the file 'flownb "
                        "recorder' writes), not both")
    flow = None
    if spec is not None:
        from .flow import load
        flow = spec if isinstance(spec, Flow) else load(spec if isinstance(spec, Path) else str(spec))
    if db is not None:
        return Path(db), flow
    if flow is None:
        raise SpecError("pass spec= (with state_dir=, default .flownb) or db= (the file 'flownb recorder' "
                        "writes)")
    return Path(state_dir if state_dir is not None else ".flownb") / f"{flow.name}.db", flow


def trace_rows(trace_id: str, spec: Flow | str | Path | None = None, state_dir: str | Path | None = None,
               db: str | Path | None = None) -> list[dict]:
    """The recorded rows of ``trace_id`` as dicts, in path order (step position, time, row id):
    ``seq, step, input, output, outcome, error_type, error, attempt, message, at``. A trace id may be
    given by a unique prefix of at least 8 characters."""
    path, flow = _source(spec, state_dir, db)
    trace_id = str(trace_id).strip()
    if not trace_id:
        raise SpecError("pass a trace id (the _trace column of flownb.dead_letters)")
    if not path.is_file():
        where = "--db" if db is not None else "--state-dir"
        raise StateError(f"no recorder database '{path}'; check {where} (the flow has not run or recorded "
                         f"there)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open '{path}': {exc}") from exc
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='recorder'").fetchone() is None:
            rows: list = []
        else:
            cols = "trace, step, pos, message, attempt, input, output, outcome, error_type, error, at"
            rows = conn.execute(f"SELECT {cols} FROM recorder WHERE trace=? ORDER BY pos, at, id",
                                (trace_id,)).fetchall()
            if not rows and len(trace_id) >= 8:
                found = [r[0] for r in conn.execute(
                    "SELECT DISTINCT trace FROM recorder WHERE trace >= ? AND trace < ? LIMIT 2",
                    (trace_id, trace_id + "\uffff"))]
                if len(found) > 1:
                    raise SpecError(f"trace id prefix '{trace_id}' matches several traces ({', '.join(found)} …); "
                                    f"give more of it")
                if found:
                    rows = conn.execute(f"SELECT {cols} FROM recorder WHERE trace=? ORDER BY pos, at, id",
                                        (found[0],)).fetchall()
    except sqlite3.Error as exc:
        raise StateError(f"cannot read the recorder table of '{path}': {exc}") from exc
    finally:
        conn.close()
    if not rows and flow is not None and flow.record is None:
        raise SpecError(f"flow '{flow.name}' records nothing: its spec has no 'record:' section; add one, e.g. "
                        f"record: {{sample: 0.01, keep: 7d}}, and records are traced from then on",
                        field="record")
    seen: set[tuple] = set()
    unique = []
    for r in rows:  # one event stored twice (drained again after a crash): the same message, step,
        key = (r[3], r[1], r[4], r[10])  # attempt and time
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return [{"seq": i, "step": r[1], "input": orjson.loads(r[5]), "output": orjson.loads(r[6]),
             "outcome": r[7], "error_type": r[8], "error": r[9], "attempt": r[4], "message": r[3],
             "at": r[10], "trace": r[0]} for i, r in enumerate(unique)]


#: the columns of :func:`trace`
TRACE_COLUMNS = ["step", "seq", "input", "output", "outcome", "error", "at", "error_type", "attempt", "message"]


def not_recorded(trace_id: str, flow: Flow | None) -> str:
    """Why a trace has no recorded path (what ``flownb trace`` prints)."""
    rate = f"{flow.record.sample:g}" if flow is not None and flow.record is not None else "the spec's rate"
    keep = ""
    if flow is not None and flow.record is not None:
        from ._duration import format_duration
        keep = f" (keep: {format_duration(flow.record.keep)})"
    return (f"no recorded path for trace '{trace_id}': it was not sampled (record.sample: {rate} of the "
            f"traces are recorded), it is older than keep{keep}, or its events have not been drained yet "
            f"('flownb recorder' on RabbitMQ)")


def trace(trace_id: str, spec: Flow | str | Path | None = None, state_dir: str | Path | None = None,
          db: str | Path | None = None) -> pd.DataFrame:
    """The recorded path of one record (``trace_id``: the ``_trace`` column of
    :func:`flownb.dead_letters`, or a unique prefix of it) through the steps, as a DataFrame in
    order: ``step, seq, input, output, outcome, error, at`` (a UTC ``Timestamp``), then
    ``error_type, attempt, message``. From the embedded runtime's state database (``spec`` and
    ``state_dir``, default ``.flownb``) or the file ``flownb recorder`` drains RabbitMQ's events into
    (``db``). Empty when the trace was not sampled (``frame.attrs["note"]`` says why)."""
    import pandas as pd
    path, flow = _source(spec, state_dir, db)
    rows = trace_rows(trace_id, spec=flow, state_dir=state_dir, db=db)
    frame = pd.DataFrame(rows, columns=[*TRACE_COLUMNS, "trace"])
    frame["at"] = pd.to_datetime(frame["at"], unit="s", utc=True)
    frame = frame[TRACE_COLUMNS]
    frame.attrs["trace"] = rows[0]["trace"] if rows else trace_id
    frame.attrs["source"] = str(path)
    if not rows:
        frame.attrs["note"] = not_recorded(trace_id, flow)
    return frame
