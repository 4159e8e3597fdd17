"""The durable queue of the local runtime: one SQLite database (WAL) per flow.

Tables:

- ``queue``: messages waiting for a step (``step`` = the step that consumes them),
  ``available_at`` (a retry waits here), ``attempt`` and the wire ``payload`` (bytes).
- ``dead``: dead letters, with the error (``ErrorInfo`` as JSON, traceback included).
- ``claims``: the ids of the batch a step is processing (one row, deleted by the batch's commit),
  or ``poll``: a poll whose records run through the first stage in memory (:meth:`QueueStore.claim_poll`).
- ``trigger_state``: the polling trigger's cursor and the time of its next poll.
- ``recorder``: the flight recorder's rows (:mod:`flownb.recorder`), written in a batch's transaction.

``queue.deliveries`` counts the claims of a message that never reached a commit: :meth:`claim`
writes the ids it claims as one row of ``claims`` in its own transaction *before* the step runs,
and the batch's commit deletes that row; a row still there at the next claim was left by a process
that died with the batch in hand, and is counted then (``deliveries + 1`` for each of its ids). So a
message that kills the process (SIGABRT, out of memory) is known as such on the next run and
dead-lettered as poison after ``max_deliveries`` such deaths instead of crashing every restart
(``flownb.runtime.core``). (One small row per claim, rather than an update of every claimed row:
the pages holding the messages are written once less per batch.)

A state directory records its identity: ``<flow>.state.json`` (flow name, schema version, when it
was created) is written beside ``<flow>.db`` once the database exists. When the marker says there
was a database and the file is missing, empty or not a database, :func:`open_state` refuses to
start afresh (that would re-emit the whole source and silently drop queues and dead letters) and
says what to do: restore the file, or ``flownb run --reset-state`` to start over (the old files are
moved aside into ``<flow>.reset-<time>/``, never deleted).

Every change that must be atomic is ONE transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a poll's
messages with its new cursor; a step batch's deleted inputs with its outputs, retries and dead
letters. A crash at any point therefore loses nothing and repeats at most a batch (at-least-once).

Space: the database is ``auto_vacuum=INCREMENTAL``: when the queues drain, the runtime gives the
freed pages back (:meth:`QueueStore.reclaim`) and the write-ahead log is cut back to
``WAL_LIMIT``, so a state database that carried millions of messages does not stay large. A
database made by an older release is switched once, with a ``VACUUM``, when a runtime opens it
(:meth:`QueueStore.ensure_incremental_vacuum`).

Durability: ``journal_mode=WAL, synchronous=NORMAL``. A committed transaction survives a crash of
the process (``kill -9``); after a power loss / OS crash the last transactions before the crash may
be rolled back (never corrupted). Set ``FLOWNB_SQLITE_SYNC=FULL`` to trade speed for that too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from ... import recorder
from ...errors import RuntimeFailure, StateError, StorageFull

__all__ = ["QueueStore", "Row", "open_state", "StateError", "StorageFull", "SCHEMA_VERSION"]

#: (row id, attempt, payload, deliveries before this claim) of a claimed message
Row = tuple[int, int, bytes, int]
#: the ``claims`` row of a poll whose records run through the first stage in memory
POLL_CLAIM = "poll"
#: the layout of the database (``PRAGMA user_version``) and of the marker
SCHEMA_VERSION = 2
#: bytes the write-ahead log is cut back to at a checkpoint (``PRAGMA journal_size_limit``)
WAL_LIMIT = 16 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    step TEXT NOT NULL,
    available_at REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (step, available_at, id);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_step ON dead (step, id);
CREATE TABLE IF NOT EXISTS claims (
    id INTEGER PRIMARY KEY,
    ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_state (
    trigger TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    next_at REAL NOT NULL
);
"""


class QueueStore:
    """Thread-safe access to one flow's queue database (one connection, one lock)."""

    def __init__(self, path: Path | None):
        self.path = path
        target = ":memory:" if path is None else str(path)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                        timeout=30.0)
            sync = os.environ.get("FLOWNB_SQLITE_SYNC", "NORMAL").upper()
            if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
                sync = "NORMAL"
            # a new database frees pages as the queues drain (:meth:`reclaim`); set before any table
            # exists, else it needs a VACUUM (:meth:`ensure_incremental_vacuum`)
            self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={sync}")
            self.conn.execute("PRAGMA busy_timeout=30000")
            # the write-ahead log is cut back to this size at each checkpoint (it never shrinks else)
            self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            # a checkpoint (two fsyncs: the log, then the database) once the log holds about that
            # much, not every 1,000 pages (4 MiB, SQLite's default): a fourth of the fsyncs for the
            # same traffic. Durability is the same: with synchronous=NORMAL a commit is in the log
            # (the OS holds it) when COMMIT returns, whatever the checkpoint interval
            self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT // self._page_size()}")
            self.conn.executescript(_SCHEMA)
            self.conn.executescript(recorder.SCHEMA)
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(queue)")}
            if "deliveries" not in cols:  # a database of schema 1
                self.conn.execute("ALTER TABLE queue ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0")
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            if path is not None and (_is_full(exc) or _disk_free(path.parent) == 0):
                raise StorageFull(f"disk full: cannot open the queue database '{target}' ({exc}); free "
                                  f"space on the disk holding '{path.parent}'") from exc
            raise RuntimeFailure(f"cannot open the queue database '{target}': {exc}; check that the "
                                 f"state directory is writable (--state-dir)") from exc
        self.lock = threading.RLock()
        #: rows of ``claims`` may exist (None: not looked at yet; see :meth:`claim`)
        self._claims_left: bool | None = None
        #: a process died while running a poll through the first stage (its claim was left)
        self._poll_died = False

    def _page_size(self) -> int:
        return int(self.conn.execute("PRAGMA page_size").fetchone()[0]) or 4096

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self, full: str = "nothing of the transaction was written") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the lock; rolled back on any error (a rollback that
        fails — SQLite may already have rolled back — never hides the first error). A full disk
        (SQLITE_FULL / ENOSPC) is :class:`StorageFull`, whose message says ``full``: what was
        therefore not done."""
        with self.lock:
            c = self.conn
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise self._full(exc, full) from exc
                raise RuntimeFailure(f"queue database '{self.path}' is unavailable: {exc}") from exc
            try:
                yield c
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, (sqlite3.Error, OSError)) and _is_full(exc):
                    raise self._full(exc, full) from exc
                raise
            try:
                c.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if _is_full(exc):
                    raise self._full(exc, full) from exc
                raise RuntimeFailure(f"commit to the queue database failed: {exc}") from exc

    def _rollback(self) -> None:
        """Roll back what is open, if anything: after a failed statement SQLite may have rolled the
        transaction back itself ("cannot rollback - no transaction is active")."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _full(self, exc: BaseException, what: str) -> StorageFull:
        where = self.path.parent if self.path is not None else "memory"
        return StorageFull(f"disk full: {what} (the queue database '{self.path}' cannot grow: {exc}); "
                           f"free space on the disk holding '{where}' and it goes on")

    def ensure_incremental_vacuum(self) -> bool:
        """Switch a database made before auto-vacuum (schema 2 of older releases) to
        ``auto_vacuum=INCREMENTAL`` with a one-time ``VACUUM`` (rewrites the file: needs as much
        free disk as the database's size, and the flow's lock). True when it was switched now."""
        if self.path is None:
            return False
        with self.lock:
            if self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return False
            try:
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.conn.execute("VACUUM")
            except sqlite3.Error as exc:
                if _is_full(exc):
                    raise self._full(exc, "the one-time VACUUM that lets the database give space back "
                                          "did not run; nothing else changed") from exc
                raise RuntimeFailure(f"the one-time VACUUM of the queue database '{self.path}' failed: "
                                     f"{exc}; check the state directory is writable") from exc
            return self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2

    def reclaim(self, min_free_pages: int = 256) -> int:
        """Give the pages the drained queues freed back to the file system (``PRAGMA
        incremental_vacuum``) and cut the write-ahead log, when at least ``min_free_pages`` are
        free; return the number of pages given back. Cheap when there is nothing to do."""
        if self.path is None:
            return 0
        with self.lock:
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free < min_free_pages:
                return 0
            try:
                # executescript steps the pragma to its end (execute() frees one page per step)
                self.conn.executescript("PRAGMA incremental_vacuum;")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # space is given back next time; nothing is lost
                if _is_full(exc):
                    return 0
                raise RuntimeFailure(f"queue database '{self.path}' is unavailable: {exc}") from exc
            return free - self.conn.execute("PRAGMA freelist_count").fetchone()[0]

    def size(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        if self.path is None:
            return 0
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())

    def probe_write(self) -> None:
        """A small committed write that changes nothing (inserted and deleted): StorageFull while the
        disk is still full."""
        with self.transaction("the probe write failed") as c:
            c.execute("INSERT INTO trigger_state (trigger, state, next_at) VALUES (' probe', ?, 0)",
                      ("x" * 512,))
            c.execute("DELETE FROM trigger_state WHERE trigger=' probe'")

    def unclaim(self, ids: Sequence[int]) -> None:
        """Undo the claim of ``ids`` (their batch ran but its commit failed on a full disk: the
        process did not die, so the claim must not count towards poison). The runtime claims one
        batch at a time and commits or undoes it before the next claim, so the open claim is the
        only row of ``claims``."""
        with self.transaction("the claims were not undone") as c:
            c.execute("DELETE FROM claims")
        self._claims_left = False

    # -- queues ----------------------------------------------------------------------------------
    def claim(self, step: str, now: float, limit: int) -> list[Row]:
        """Up to ``limit`` due messages for ``step`` (oldest first), each with the number of earlier
        claims that never committed; this claim is counted (committed) before returning. When one of
        them was claimed before by a process that died, only that one is claimed (isolating the
        message that kills the process). Single consumer per step: rows stay in the queue until
        :meth:`commit_batch` deletes them."""
        with self.lock:  # a read first: an idle step takes no write lock and commits nothing
            if self._claims_left is None or self._claims_left:
                self._count_claims_left()
            rows = self.conn.execute(
                "SELECT id, attempt, payload, deliveries FROM queue WHERE step=? AND available_at<=? "
                "ORDER BY available_at, id LIMIT ?", (step, now, limit)).fetchall()
        if not rows:
            return rows
        suspect = next((r for r in rows if r[3] > 0), None)
        if suspect is not None:  # the process died during an earlier claim: one at a time, so
            rows = [suspect]     # that only the message that kills it is counted towards poison
        # written and committed before the step runs (the rows are this consumer's: one per step);
        # the batch's commit deletes it, a death leaves it for the next claim to count
        with self.transaction() as c:
            c.execute("INSERT INTO claims (ids) VALUES (?)", (",".join(str(int(r[0])) for r in rows),))
        self._claims_left = True
        return rows

    def claim_poll(self) -> bool:
        """Before a poll's records run through the first stage in memory (never queued): write and
        commit the claim of that poll, which its commit (:meth:`commit_batch` with ``cursor``)
        deletes. False, claiming nothing, when a process died with such a poll in hand (its claim
        is left): this poll — the same records, read again from the same cursor — must then be
        queued with that death counted (:meth:`commit_poll` with ``died``), so that the
        claims of their batches, one message at a time, find a record that kills the process
        (poison) after as many deaths as any queued message."""
        with self.lock:
            if self._claims_left is None or self._claims_left:
                self._count_claims_left()
            if self._poll_died:
                self._poll_died = False
                return False
            with self.transaction() as c:
                c.execute("INSERT INTO claims (ids) VALUES (?)", (POLL_CLAIM,))
            self._claims_left = True
            return True

    def _count_claims_left(self) -> None:
        """Count the claims no commit deleted (a process died with their batch in hand) as one more
        delivery of each of their messages; the claims of this store's own batches are deleted by
        their commit (or :meth:`unclaim`) before the next claim, so what is left is a death. The
        claim of a poll run through the first stage (:meth:`claim_poll`) names no message: it is
        remembered for the next :meth:`claim_poll`."""
        left = self.conn.execute("SELECT ids FROM claims").fetchall()
        if left:
            with self.transaction("the claims of a process that died were not counted") as c:
                for (text,) in left:
                    if text == POLL_CLAIM:
                        self._poll_died = True
                        continue
                    ids = [int(x) for x in text.split(",") if x]
                    for i in range(0, len(ids), 500):
                        c.execute(f"UPDATE queue SET deliveries=deliveries+1 WHERE id IN "
                                  f"({','.join(str(x) for x in ids[i:i + 500])})")
                c.execute("DELETE FROM claims")
        self._claims_left = False

    def enqueue(self, step: str, payloads: Sequence[bytes], now: float) -> None:
        with self.transaction("nothing was queued") as c:
            c.executemany("INSERT INTO queue (step, available_at, attempt, payload) VALUES (?, ?, 1, ?)",
                          [(step, now, p) for p in payloads])

    def commit_batch(self, *, next_step: str | None, now: float, done: Sequence[int],
                     outputs: Sequence[bytes], retries: Sequence[tuple[float, int, int]],
                     dead: Sequence[tuple[str, int, bytes, str | bytes]],
                     queued: Sequence[tuple[str, float, int, bytes]] = (), deaths: int = 0,
                     record: recorder.RecordBatch | None = None,
                     routed: Sequence[tuple[str, bytes]] = (),
                     cursor: tuple[str, dict, float] | None = None) -> None:
        """One transaction: delete finished inputs, queue outputs for ``next_step``, reschedule
        ``retries`` (available_at, attempt, id), store ``dead`` (step, attempt, payload, error),
        queue ``queued`` (step, available_at, attempt, payload: a fused stage's later member retries
        a message it received in memory) and the flight recorder's rows (``record``: no extra
        commit). ``deaths``: the outputs of a poison suspect carry the deaths of the process while it
        was in flight, so that the step that kills the process counts them on (a fused stage ran it
        through one step only). ``routed``: a route step's outputs, each queued for its own step
        (step, payload). ``cursor``: (trigger, new state, next poll at) of a poll whose records ran
        through the first stage in memory (:meth:`claim_poll`): the trigger's cursor moves with
        the stage's outcomes."""
        with self.transaction("the batch was not committed and stays queued" if cursor is None else
                              "nothing was queued, the cursor did not move") as c:
            if self._claims_left:  # the claim of this batch: it did not die
                c.execute("DELETE FROM claims")
            for i in range(0, len(done), 500):  # ids are ints from the claim: one statement per 500
                c.execute(f"DELETE FROM queue WHERE id IN ({','.join(str(int(x)) for x in done[i:i + 500])})")
            if outputs and next_step is not None:
                c.executemany("INSERT INTO queue (step, available_at, attempt, payload, deliveries) "
                              "VALUES (?, ?, 1, ?, ?)", [(next_step, now, p, deaths) for p in outputs])
            if routed:
                c.executemany("INSERT INTO queue (step, available_at, attempt, payload, deliveries) "
                              "VALUES (?, ?, 1, ?, ?)", [(step, now, p, deaths) for step, p in routed])
            if retries:  # the attempt finished: it is no longer a delivery that died
                c.executemany("UPDATE queue SET available_at=?, attempt=?, deliveries=0 WHERE id=?", retries)
            if queued:
                c.executemany("INSERT INTO queue (step, available_at, attempt, payload) VALUES (?, ?, ?, ?)", queued)
            if dead:
                c.executemany("INSERT INTO dead (step, attempt, payload, error, at) VALUES (?, ?, ?, ?, ?)",
                              [(s, a, p, e, now) for s, a, p, e in dead])
            if record:
                recorder.insert(c, record)
            if cursor is not None:
                self._set_state(c, *cursor)
        self._claims_left = False

    def depth(self, step: str | None = None) -> int:
        with self.lock:
            if step is None:
                return self.conn.execute("SELECT count(*) FROM queue").fetchone()[0]
            return self.conn.execute("SELECT count(*) FROM queue WHERE step=?", (step,)).fetchone()[0]

    def depth_of(self, steps: Sequence[str]) -> int:
        """The messages queued for any of ``steps``."""
        with self.lock:
            return self.conn.execute(f"SELECT count(*) FROM queue WHERE step IN ({','.join('?' * len(steps))})",
                                     list(steps)).fetchone()[0]

    def has_due(self, step: str, now: float) -> bool:
        """Whether a message for ``step`` is due (``available_at <= now``)."""
        with self.lock:
            return self.conn.execute("SELECT 1 FROM queue WHERE step=? AND available_at<=? LIMIT 1",
                                     (step, now)).fetchone() is not None

    def depths(self) -> dict[str, int]:
        with self.lock:
            return dict(self.conn.execute("SELECT step, count(*) FROM queue GROUP BY step").fetchall())

    def next_due(self, steps: Sequence[str]) -> float | None:
        """The earliest ``available_at`` among messages for ``steps`` (None when all are empty)."""
        with self.lock:
            best = None
            for s in steps:
                row = self.conn.execute("SELECT min(available_at) FROM queue WHERE step=?", (s,)).fetchone()
                if row[0] is not None and (best is None or row[0] < best):
                    best = row[0]
            return best

    # -- trigger state ---------------------------------------------------------------------------
    def get_state(self, trigger: str) -> tuple[dict, float | None]:
        with self.lock:
            row = self.conn.execute("SELECT state, next_at FROM trigger_state WHERE trigger=?",
                                    (trigger,)).fetchone()
        if row is None:
            return {}, None
        return orjson.loads(row[0]), row[1]

    def commit_poll(self, trigger: str, first_step: str | None, payloads: Sequence[bytes],
                    state: dict | None, next_at: float, now: float,
                    dead: Sequence[tuple[str, int, bytes, bytes | str]] = (), died: int = 0) -> None:
        """One transaction: the poll's messages, its dead letters (step, attempt, payload, error:
        records that cannot become messages) and the trigger's new state. ``died``: how many of the
        first messages the process died with in hand (a poll redone after the process died running
        its first batch through the first stage: :meth:`claim_poll`): each of those is queued with
        that death counted (``deliveries`` 1). ``state`` None: the trigger's state is left as it is
        (``flownb backfill``: a running flow's cursor is its own; safe beside a running ``flownb run``,
        the write waits for its transaction, the busy timeout)."""
        with self.transaction("nothing was queued, the cursor did not move") as c:
            if dead:
                c.executemany("INSERT INTO dead (step, attempt, payload, error, at) VALUES (?, ?, ?, ?, ?)",
                              [(s, a, p, e, now) for s, a, p, e in dead])
            if payloads and first_step is not None:
                c.executemany("INSERT INTO queue (step, available_at, attempt, payload, deliveries) "
                              "VALUES (?, ?, 1, ?, ?)", [(first_step, now, p, int(i < died))
                                                          for i, p in enumerate(payloads)])
            if state is not None:
                self._set_state(c, trigger, state, next_at)

    @staticmethod
    def _set_state(c: sqlite3.Connection, trigger: str, state: dict, next_at: float) -> None:
        c.execute("INSERT INTO trigger_state (trigger, state, next_at) VALUES (?, ?, ?) "
                  "ON CONFLICT(trigger) DO UPDATE SET state=excluded.state, next_at=excluded.next_at",
                  (trigger, orjson.dumps(state).decode(), next_at))

    def set_next_poll(self, trigger: str, next_at: float) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO trigger_state (trigger, state, next_at) VALUES (?, '{}', ?) "
                      "ON CONFLICT(trigger) DO UPDATE SET next_at=excluded.next_at", (trigger, next_at))

    # -- dead letters ----------------------------------------------------------------------------
    def dead_rows(self, step: str | None = None, ids: Sequence[int] | None = None) -> list[tuple]:
        """(id, step, attempt, payload, error) rows, oldest first."""
        sql = "SELECT id, step, attempt, payload, error FROM dead"
        where: list[str] = []
        args: list[str | int] = []
        if step is not None:
            where.append("step=?")
            args.append(step)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.lock:
            return self.conn.execute(sql + " ORDER BY id", args).fetchall()

    def dead_count(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT count(*) FROM dead").fetchone()[0]

    def replay(self, rows: Sequence[tuple[int, str, bytes]], now: float) -> int:
        """Move dead letters (id, step, payload) back to their step's queue with attempt 1."""
        with self.transaction() as c:
            c.executemany("INSERT INTO queue (step, available_at, attempt, payload) VALUES (?, ?, 1, ?)",
                          [(s, now, p) for _, s, p in rows])
            c.executemany("DELETE FROM dead WHERE id=?", [(i,) for i, _, _ in rows])
        return len(rows)



_SQLITE_FULL = 13


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full"), or ENOSPC / EDQUOT from the OS."""
    import errno
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == _SQLITE_FULL:
        return True
    return "disk is full" in str(exc)


def _disk_free(directory: Path) -> int | None:
    """Bytes free for an unprivileged writer on the disk holding ``directory`` (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _marker(state_dir: Path, flow: str) -> Path:
    return state_dir / f"{flow}.state.json"


def _valid_db(path: Path) -> str | None:
    """None when ``path`` looks like a usable SQLite database, else what is wrong with it."""
    if not path.exists():
        return "is missing"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with path.open("rb") as fh:
        head = fh.read(16)
    if head != b"SQLite format 3\x00":
        return f"is not an SQLite database (it starts with {head[:16]!r})"
    return None


def reset_state(state_dir: Path, flow: str) -> Path | None:
    """Move ``<flow>.db*`` and the marker aside into ``<flow>.reset-<time>/``; return that folder."""
    files = list(state_dir.glob(f"{flow}.db*")) + [p for p in [_marker(state_dir, flow)] if p.exists()]
    if not files:
        return None
    aside = state_dir / f"{flow}.reset-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for p in files:
        p.rename(aside / p.name)
    return aside


def open_state(state_dir: Path, flow: str, *, reset: bool = False, create: bool = True) -> QueueStore:
    """Open the queue database of ``flow`` in ``state_dir`` after checking it against the marker
    (see the module docstring). ``reset``: move the old files aside first and start over.
    ``create=False``: the database must already exist (``flownb dlq`` never creates one)."""
    state_dir = Path(state_dir)
    db = state_dir / f"{flow}.db"
    marker = _marker(state_dir, flow)
    if reset:
        reset_state(state_dir, flow)
    problem = _valid_db(db)
    if problem is not None and marker.exists():
        try:
            info = json.loads(marker.read_text())
            since = f" (created {info.get('created', '?')})"
        except (OSError, ValueError):
            since = ""
        raise StateError(
            f"the state database '{db}' {problem}, but '{marker}' says this state directory held flow "
            f"'{flow}'{since}: its cursor, queued messages and dead letters would be lost. Restore the "
            f"file from a backup, or run with --reset-state to start over (the source is read again "
            f"from the beginning; the old files are moved aside, not deleted)")
    if problem is not None and problem != "is missing":
        raise StateError(f"the state database '{db}' {problem}; move it away or run with --reset-state "
                         f"to start over")
    if problem == "is missing" and not create:
        raise StateError(f"no state database '{db}' for flow '{flow}'; check --state-dir (the flow has "
                         f"not run with this state directory)")
    store = QueueStore(db)
    if not marker.exists():
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"flow": flow, "schema": SCHEMA_VERSION, "db": db.name,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        os.replace(tmp, marker)
    return store
