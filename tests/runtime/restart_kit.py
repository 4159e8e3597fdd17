"""Shared parts of the SIGKILL-and-restart tests of the built-in polling triggers.

``tests/runtime/test_restart_local.py`` (``flownb run``) and ``tests/runtime/amqp/test_restart_amqp.py``
(``flownb worker --all``) run the same scenario through the real console script in a subprocess:

1. a growing source (``csv.poll`` file, ``sql.poll`` table on SQLite or PostgreSQL, ``http.poll``
   against a paged local HTTP API with a ``since`` cursor, ``python.poll`` reading how many rows
   exist from a file) gets the first rows while the first process runs;
2. the flow maps each row with a JSONata rule (``compiled`` or ``jsonatapy`` engine), slows down in a
   ``python`` step, appends every delivery to a ``csv.write`` log (append-only: duplicates show) and
   upserts into SQLite by ``id`` (idempotent: each row once);
3. once some but not all rows reached the upsert, the process gets SIGKILL; more rows are added while
   nothing runs, the process is started again and the rest of the rows are added while it runs;
4. every row must arrive at the upsert, with the mapped value, within a deadline; the delivery log
   may repeat only what was in flight at the kill; the restarted process must be healthy: alive, no
   error logged, ``/healthz`` and ``/readyz`` 200 (RabbitMQ worker, ``--metrics-port``), exit 0 on
   SIGTERM.

``schedule`` has its own scenario (fires every second or two, a kill, downtime, a restart): see
:func:`check_schedule_fires`.
"""

from __future__ import annotations

import csv
import datetime as dt
import http.server
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import flownb
from flownb.rules import compile as compile_expr
from tests.processes import free_port

FLOWNB = str(Path(sys.executable).parent / "flownb")
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

TOTAL = 3000          # source rows
CHUNK = 250           # rows added at a time
BEFORE_KILL = 6       # chunks added while the first process runs
DURING_DOWNTIME = 1   # chunks added while nothing runs
FEED_EVERY = 0.2      # seconds between chunks
KILL_AT = 600         # kill once this many rows are in the upsert sink (and fewer than TOTAL)
# the python step sleeps this long per message (1,500 rows: 6 s, so the kill lands mid-flow on a loaded CI machine)
SLOW_MS = 4.0
DEADLINE = 120.0      # seconds for every row to arrive after the restart

#: a mapping rule per engine; ``{f}`` is the source field carrying the row's identity
RULES = {
    "compiled": '{{"id": {f}, "label": "r" & $string({f})}}',
    "jsonatapy": '($x := $; {{"id": $x.{f}, "label": "r" & $string($x.{f})}})',
}

SLOW_SOURCE = '''import time


def slow(body, ctx):
    time.sleep(ctx.config.options["ms"] / 1000)
    return body
'''

PY_POLL_SOURCE = '''def rows(state, ctx):
    with open(ctx.config.options["available"]) as fh:
        available = int(fh.read().strip() or 0)
    start = int(state.get("next", 0))
    end = min(start + ctx.config.options["batch"], available)
    state["next"] = max(start, end)
    return [{"id": i, "payload": "p%d" % i} for i in range(start, end)]
'''


def rule(engine: str, field: str = "id") -> str:
    """The mapping expression for ``engine``, checked to really use that engine."""
    expr = RULES[engine].format(f=field)
    assert compile_expr(expr).engine == engine, (expr, compile_expr(expr).engine)
    return expr


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- sources -------------------------------------------------------------------------------------

class Source:
    """A source that grows: ``add(ids)`` makes rows with those ids visible to the trigger."""

    kind = ""

    def trigger(self) -> flownb.Step:  # pragma: no cover - interface
        raise NotImplementedError

    def add(self, ids: range) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class CsvSource(Source):
    kind = "csv.poll"

    def __init__(self, tmp: Path):
        self.path = tmp / "source.csv"
        self.path.write_text("id,payload\n")

    def trigger(self):
        # polls of at most 200 rows, as the sql.poll source's: the sink grows by at most a batch per
        # commit, so "KILL_AT rows at the sink but not all fed rows" is a window the kill can hit (with
        # the default 1,000, a first poll of 500 rows and a second of the other 1,000 took the sink
        # from 500 to all 1,500 in one commit on a loaded machine: the kill came after the flow)
        return flownb.step("src", "csv.poll", path=str(self.path), cursor="id", key="id", interval="100ms",
                           batch_size=200)

    def add(self, ids):
        with open(self.path, "a", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerows([i, f"p{i}"] for i in ids)
            fh.flush()
            os.fsync(fh.fileno())


class SqlSource(Source):
    kind = "sql.poll"

    def __init__(self, url: str):
        import sqlalchemy as sa
        self.url = url
        self.table = f"restart_src_{uuid.uuid4().hex[:8]}"
        self.engine = sa.create_engine(url)
        self.meta = sa.MetaData()
        self.t = sa.Table(self.table, self.meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                          sa.Column("payload", sa.Text))
        self.meta.create_all(self.engine)

    def trigger(self):
        return flownb.step("src", "sql.poll", url=self.url, table=self.table, cursor="id", key="id",
                           batch_size=200, interval="100ms")

    def add(self, ids):
        with self.engine.begin() as conn:
            conn.execute(self.t.insert(), [{"id": i, "payload": f"p{i}"} for i in ids])

    def close(self):
        try:
            self.meta.drop_all(self.engine)
        finally:
            self.engine.dispose()


class _Api(http.server.ThreadingHTTPServer):
    daemon_threads = True
    rows: list
    lock: threading.Lock
    requests: int = 0

    def handle_error(self, request, client_address):  # a killed client closed its socket
        pass


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path != "/items":
            return self._send(404, {"error": "not found"})
        since, limit = int(q.get("since", -1)), int(q.get("limit", 100))
        with self.server.lock:
            self.server.requests += 1
            rows = [r for r in self.server.rows if r["id"] > since]
        page, more = rows[:limit], len(rows) > limit
        nxt = f"/items?since={page[-1]['id']}&limit={limit}" if more else None
        self._send(200, {"items": page, "next": nxt})

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class HttpSource(Source):
    """A real HTTP API on 127.0.0.1: ``GET /items?since=<id>&limit=<n>`` → ``{"items", "next"}``
    (``next``: the URL of the following page, null on the last one)."""

    kind = "http.poll"

    def __init__(self):
        self.server = _Api(("127.0.0.1", 0), _ApiHandler)
        self.server.rows, self.server.lock = [], threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trigger(self):
        return flownb.step("src", "http.poll", url=f"{self.url}/items", query={"limit": "100"},
                           items="items", next="next", cursor_param="since", cursor_field="id",
                           max_pages=2, interval="100ms", timeout="5s")

    def add(self, ids):
        with self.server.lock:
            self.server.rows.extend({"id": i, "payload": f"p{i}"} for i in ids)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class PythonSource(Source):
    """``python.poll`` whose function reads how many rows exist from a file, in batches of 100."""

    kind = "python.poll"

    def __init__(self, tmp: Path):
        self.available = tmp / "available.txt"
        self.available.write_text("0")
        self.n = 0

    def trigger(self):
        return flownb.step("src", "python.poll", source=PY_POLL_SOURCE, function="rows", interval="100ms",
                           options={"available": str(self.available), "batch": 100})

    def add(self, ids):
        self.n = max(self.n, ids.stop)
        tmp = self.available.with_suffix(".tmp")
        tmp.write_text(str(self.n))
        os.replace(tmp, self.available)


def pg_available() -> str | None:
    """None when PostgreSQL answers at 127.0.0.1:5432 (db ``test``), else why not."""
    try:
        import sqlalchemy as sa
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        try:
            with eng.connect() as conn:
                conn.execute(sa.text("select 1"))
        finally:
            eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return f"PostgreSQL is not usable at 127.0.0.1:5432/test: {exc}"
    return None


def make_source(kind: str, tmp: Path) -> Source:
    if kind == "csv":
        return CsvSource(tmp)
    if kind == "sqlite":
        return SqlSource(f"sqlite:///{tmp / 'source.db'}")
    if kind == "postgres":
        return SqlSource(PG_URL)
    if kind == "http":
        return HttpSource()
    if kind == "python":
        return PythonSource(tmp)
    raise ValueError(kind)


# -- the flow ------------------------------------------------------------------------------------

def build_flow(name: str, trigger: flownb.Step, engine: str, tmp: Path, *, field: str = "id",
               slow_ms: float = SLOW_MS) -> flownb.Flow:
    steps = [flownb.step("shape", "mapping", expression=rule(engine, field))]
    if slow_ms:
        steps.append(flownb.step("slow", "python", source=SLOW_SOURCE, function="slow",
                                 options={"ms": slow_ms}))
    steps += [flownb.step("log", "csv.write", path=str(tmp / "deliveries.csv"), columns=["id", "label"]),
              flownb.step("save", "sql.upsert", url=f"sqlite:///{tmp / 'sink.db'}", table="rows", key=["id"],
                          create=True)]
    return flownb.Flow(name=name, trigger=trigger, steps=steps)


def sink_rows(tmp: Path) -> dict:
    """id → label in the upsert sink (empty before the table exists)."""
    try:
        con = sqlite3.connect(tmp / "sink.db", timeout=2)
        try:
            return dict(con.execute("select id, label from rows"))
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return {}


def sink_count(tmp: Path) -> int:
    try:
        con = sqlite3.connect(tmp / "sink.db", timeout=2)
        try:
            return con.execute("select count(*) from rows").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def deliveries(tmp: Path) -> list[str]:
    """Every id the csv.write log received, in order, repeats included."""
    path = tmp / "deliveries.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r["id"] for r in csv.DictReader(fh)]


# -- the child process ---------------------------------------------------------------------------

BAD_LOG = (" ERROR ", " CRITICAL ", "Traceback", "panicked", "dead-lettered", "PanicException")
#: the shared broker may be restarted by another engineer's fault test: the reconnect it causes is
#: logged at ERROR (by pika, and 'channel closed by the broker (CONNECTION_FORCED …)') and is no fault
#: of the process under test
BROKER_RESTART_LOG = ("CONNECTION_FORCED", " ERROR pika.")




class Child:
    """A ``flownb`` subprocess (own session), stderr to a file; kill() in a finally always works."""

    def __init__(self, args: list[str], tmp: Path, label: str, env: dict | None = None):
        self.label = label
        self.port = free_port() if any("{port}" in a for a in args) else None
        args = [a.replace("{port}", str(self.port)) for a in args]
        self.err_path = tmp / f"{label}.stderr"
        self.out_path = tmp / f"{label}.stdout"
        self.args = args
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([FLOWNB, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "COLUMNS": "200", **(env or {})},
                                         start_new_session=True)
        self.started = time.time()

    @property
    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def stdout(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 4000) -> str:
        return (f"--- {self.label} (pid {self.proc.pid}, exit {self.proc.poll()}) stderr tail ---\n"
                f"{self.stderr[-n:]}\n--- {self.label} stdout tail ---\n{self.stdout[-1500:]}")

    def probe(self, path: str) -> int:
        """HTTP status of ``path`` on the ``--metrics-port`` (``/healthz``, ``/readyz``); 0: no answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def assert_healthy(self) -> None:
        """Alive; with a metrics port, ``/healthz`` and ``/readyz`` answer 200 (every thread alive,
        every worker consuming)."""
        self.assert_alive("(expected healthy)")
        if self.port is not None:
            codes = {p: self.probe(p) for p in ("/healthz", "/readyz")}
            assert codes == {"/healthz": 200, "/readyz": 200}, f"{self.label}: {codes}\n{self.tail()}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self, what: str = "") -> None:
        assert self.alive(), f"{self.label} exited with {self.proc.returncode} {what}\n{self.tail()}"

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.label} did not exit {timeout}s after SIGTERM\n{self.tail()}") from None

    def cleanup(self) -> None:
        """Kill the process group (this child and anything it started) if still running."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass

    def bad_lines(self) -> list[str]:
        """Logged errors, tracebacks (by their exception line) and panics; not a broker restart's."""
        lines = self.stderr.splitlines()
        bad = [line for line in lines if any(b in line for b in BAD_LOG) and "Traceback" not in line
               and not any(r in line for r in BROKER_RESTART_LOG)]
        return bad + [f"Traceback … {exc}" for exc in tracebacks(lines)]


def tracebacks(lines: list[str]) -> list[str]:
    """The exception line of each traceback in a log, except pika's own connection errors (logged
    with a traceback while the shared broker is restarted by someone else; the worker reconnects)."""
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            exc = next((x for x in lines[i + 1:] if x and not x.startswith(" ")), "?")
            if not exc.startswith("pika.exceptions."):
                found.append(exc)
    return found


def wait_until(cond, timeout: float, what: str, children: list[Child], every: float = 0.05):
    """Poll ``cond()`` until truthy; fail with the children's stderr tails on timeout, if one died,
    or as soon as one logged a traceback (a dead thread in a live process would only stall)."""
    deadline = time.monotonic() + timeout
    checked = 0.0
    while True:
        value = cond()
        if value:
            return value
        for c in children:
            c.assert_alive(f"while waiting for {what}")
        if time.monotonic() - checked > 0.5:
            checked = time.monotonic()
            for c in children:
                text = c.stderr
                if "panicked" in text or tracebacks(text.splitlines()):
                    raise AssertionError(f"{c.label} logged a traceback while waiting for {what}\n{c.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                 + "\n".join(c.tail() for c in children))
        time.sleep(every)


class Feeder:
    """Adds chunks of rows to a source in a thread, ``FEED_EVERY`` apart."""

    def __init__(self, source: Source, chunks: list[range]):
        self.source, self.chunks = source, chunks
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.fed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for r in self.chunks:
                self.source.add(r)
                self.fed = r.stop
                time.sleep(FEED_EVERY)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 60) -> None:
        assert self.done.wait(timeout), "the feeder did not finish"
        if self.error is not None:
            raise self.error


def chunks(start: int, stop: int) -> list[range]:
    return [range(i, min(i + CHUNK, stop)) for i in range(start, stop, CHUNK)]


def local_pending(state: Path, flow: str) -> Callable[[], int]:
    """For :func:`run_kill_restart` on the embedded runtime: the messages queued for any step plus
    the claims of batches in hand (a claim's messages stay queued until its commit deletes both),
    read from the state database without writing to it."""
    def pending() -> int:
        with closing(sqlite3.connect(f"file:{state / f'{flow}.db'}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute("SELECT (SELECT count(*) FROM queue) + (SELECT count(*) FROM claims)").fetchone()[0]
    return pending


def run_kill_restart(*, source: Source, flow: flownb.Flow, tmp: Path, command: list[str],
                     env: dict | None = None, dup_bound: int, pending: Callable[[], int]) -> dict:
    """The whole row scenario (module docstring); returns figures for the report. ``command``: the
    flownb arguments after the executable, with ``{spec}`` for the spec path. ``pending()``: the
    messages the runtime still holds (queued, in hand or waiting for a retry), to judge repeats
    only once nothing can land any more."""
    spec = flow.save(tmp / "flow.yaml")
    args = [a.replace("{spec}", str(spec)) for a in command]
    first_stop = BEFORE_KILL * CHUNK
    down_stop = first_stop + DURING_DOWNTIME * CHUNK
    children: list[Child] = []
    feeders: list[Feeder] = []
    t0 = time.monotonic()
    try:
        first = Child(args, tmp, "first", env)
        children.append(first)
        feeders.append(Feeder(source, chunks(0, first_stop)))
        wait_until(lambda: feeders[0].done.is_set() and sink_count(tmp) >= KILL_AT, 90,
                   f"{KILL_AT} rows at the sink before the kill", children)
        first.kill9()
        at_kill = sink_count(tmp)
        assert at_kill < first_stop, f"all {at_kill} rows fed so far had arrived: the kill was not mid-flow"
        feeders[0].join()
        for r in chunks(first_stop, down_stop):   # rows that appear while nothing runs
            source.add(r)
        second = Child(args, tmp, "second", env)
        children.append(second)
        feeders.append(Feeder(source, chunks(down_stop, TOTAL)))
        wait_until(lambda: sink_count(tmp) >= TOTAL, DEADLINE, f"all {TOTAL} rows at the sink", [second])
        feeders[1].join()
        # repeats are counted once nothing can land any more: every queue drained with nothing in
        # hand, then the process stopped (a graceful stop finishes or returns what it holds), then
        # still nothing held — so a duplicate in flight has landed or is counted as held
        wait_until(lambda: pending() == 0, 60, "every queue drained, nothing in hand", [second], every=0.2)
        second.assert_healthy()
        bad = second.bad_lines()
        code = second.terminate()
        assert code == 0, f"the restarted process exited {code} on SIGTERM\n{second.tail()}"
        held = pending()
        assert held == 0, f"{held} message(s) still held after the stop\n{second.tail()}"
        got = sink_rows(tmp)
        logged = deliveries(tmp)
        missing = sorted(set(range(TOTAL)) - set(got))
        assert not missing, f"{len(missing)} row(s) never arrived, e.g. {missing[:10]}"
        assert sorted(got) == list(range(TOTAL)), "unexpected ids at the sink"
        wrong = {k: v for k, v in got.items() if v != f"r{k}"}
        assert not wrong, f"mapped values wrong: {list(wrong.items())[:5]}"
        assert set(logged) == {str(i) for i in range(TOTAL)}, "the delivery log misses rows"
        repeats = len(logged) - TOTAL
        assert repeats <= dup_bound, (f"{repeats} repeated deliveries at the csv.write log, more than what "
                                      f"can be in flight at one kill ({dup_bound}): a poll or batch was redone")
        assert not bad, "the restarted process logged errors:\n" + "\n".join(bad[:20]) + "\n" + second.tail()
        return {"at_kill": at_kill, "repeats": repeats, "seconds": round(time.monotonic() - t0, 1)}
    except BaseException:
        for c in children:
            print(c.tail())
        raise
    finally:
        for c in children:
            c.cleanup()
        for f in feeders:
            f.done.wait(10)


# -- schedule ------------------------------------------------------------------------------------

def schedule_period(catchup: bool) -> int:
    """Seconds between fires: 1, but 2 with ``catchup: false`` — there a poll delayed by more than a
    period on a loaded machine would skip a fire by design, and the test checks that only the
    downtime did."""
    return 1 if catchup else 2


def schedule_flow(name: str, engine: str, tmp: Path, *, catchup: bool) -> flownb.Flow:
    cron = "* * * * * *" if schedule_period(catchup) == 1 else "* * * * * */2"
    trig = flownb.step("src", "schedule", cron=cron, catchup=catchup)
    return build_flow(name, trig, engine, tmp, field="scheduled_for", slow_ms=0)


def fires(tmp: Path) -> list[dt.datetime]:
    return sorted(dt.datetime.fromisoformat(k) for k in sink_rows(tmp))


def run_schedule_kill_restart(*, flow: flownb.Flow, tmp: Path, command: list[str], catchup: bool,
                              env: dict | None = None) -> dict:
    """A schedule firing every second (2 s with ``catchup: false``): run until 3 fires arrived,
    SIGKILL, wait 3 s (5 s with ``catchup: false``: at least two due times pass), start
    again, run until fires after the restart arrived. Checks the promises of
    ``flownb/components/schedule.py``:

    - no fire for a time before the first process started (a new flow does not replay the past);
    - ``catchup: true``: every second from the first fire to the last is emitted — the ones missed
      while nothing ran included; ``catchup: false``: the seconds missed during the downtime are
      skipped except the latest (so at most one fire lands between the kill and the restart's first
      poll), and every second after the restart is emitted;
    - no fire twice at the upsert (keyed by the fire time), none repeated at the append-only log
      (a poll is committed once), and none in the future."""
    spec = flow.save(tmp / "flow.yaml")
    args = [a.replace("{spec}", str(spec)) for a in command]
    period = float(schedule_period(catchup))
    children: list[Child] = []
    try:
        started = time.time()
        first = Child(args, tmp, "first", env)
        children.append(first)
        wait_until(lambda: len(fires(tmp)) >= 3, 60, "3 fires before the kill", children, every=0.1)
        first.kill9()
        killed = time.time()
        before = fires(tmp)
        time.sleep(3.0 if catchup else 5.0)
        restarted = time.time()
        second = Child(args, tmp, "second", env)
        children.append(second)
        target = restarted + 4
        wait_until(lambda: (f := fires(tmp)) and f[-1].timestamp() >= target, 60,
                   "fires 4s after the restart", [second], every=0.1)
        time.sleep(0.3)
        second.assert_healthy()
        got = fires(tmp)
        logged = deliveries(tmp)
        bad = second.bad_lines()
        code = second.terminate()
        assert code == 0, f"the restarted process exited {code} on SIGTERM\n{second.tail()}"
        stamps = [f.timestamp() for f in got]
        assert stamps[0] >= int(started), f"a fire before the flow first started: {got[0]} < {started}"
        assert stamps[-1] <= time.time(), "a fire in the future"
        keys = sink_rows(tmp)
        assert all(v == f"r{k}" for k, v in keys.items()), "mapped values wrong"
        assert set(logged) == set(keys), "the delivery log and the upsert disagree"
        # a poll is committed once; only a batch in flight at the kill may be written twice
        assert len(logged) - len(set(logged)) <= 1, f"fires repeated at the log: {sorted(logged)}"
        steps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
        if catchup:
            assert set(steps) == {period}, f"fires lost or doubled across the kill: gaps {steps}\n{got}"
        else:
            # the seconds missed while nothing ran are skipped, except the latest one (emitted by the
            # restarted process's first poll): one gap, from the last fire before the kill
            gaps = [(a, b) for a, b in itertools.pairwise(stamps) if b - a != period]
            assert len(gaps) == 1, f"catchup false: expected one gap (the downtime), got {gaps}\n{got}"
            a, b = gaps[0]
            assert a <= killed and restarted - period <= b <= restarted + 30, (gaps, killed, restarted)
        assert not bad, "the restarted process logged errors:\n" + "\n".join(bad[:20]) + "\n" + second.tail()
        return {"fires": len(got), "before_kill": len(before)}
    except BaseException:
        for c in children:
            print(c.tail())
        raise
    finally:
        for c in children:
            c.cleanup()
