"""The parity suite's machinery: load a case from ``flows/<name>/``, run it one of four ways, and
normalize what came out so the four ways can be compared with ``==``.

A case is a directory ``flows/<name>/`` holding

- ``flow.yaml``: a plain flownb spec (``flownb validate`` reads it). Parameters the runner fills
  when the flow declares them: ``out_dir`` (a fresh directory for ``csv.write``), ``db_url`` and
  ``table`` (a SQLite file in the run's directory, PostgreSQL at 127.0.0.1:5432 db ``test`` or
  MariaDB at 127.0.0.1:3306 db ``test``; the table name is unique per run), ``source`` (the case's
  ``sample.csv``, for a ``csv.poll`` trigger) and one URL per HTTP target named in ``case.yaml``;
  ``stream`` (a Redis stream key on 127.0.0.1:6379, unique per run and deleted after it, for
  ``redis.xadd``); ``topic_prefix`` (MQTT topics on 127.0.0.1:1883 of this run alone: what an
  ``mqtt.publish`` with ``retain`` sent is read back as the broker's retained messages, then cleared);
  ``smtp_port`` (an aiosmtpd server of the run on loopback, ``smtp.send``'s sink; ``case.yaml``'s
  ``smtp_refuse`` maps recipients to the reply that refuses them);
- ``sample.json`` (bodies fed as the trigger's output), ``sample.csv`` (read by a ``csv.poll``
  trigger) or ``sample.sql`` (a script making the SQLite database ``source_url`` that a ``sql.poll``
  trigger reads); the preview reads these two with ``flow.sample()``, the notebook's way to get
  records as the trigger reads them (raw ``pandas.read_csv``/``read_sql_table`` differ:
  docs/notebook.md, and ``tests/test_flow_sample.py`` keeps those differences visible);
- ``case.yaml``: ``description``, ``db`` (``sqlite`` | ``postgres`` | ``mysql``), ``targets`` (parameter name →
  :class:`flownb.testing.HttpTarget` keyword arguments), ``engines`` (expected
  ``flownb.rules.compile(expr).engine`` of the JSONata expressions), ``xfail`` (path → reason);
- ``expected.json``: the normalized result every path must give (:func:`normalize`).

The four paths (``PATHS``), each independent of the others (own temp dir, own HTTP target, own
table, own flow name on the broker), so they can run in parallel processes:

- ``preview``: ``Mapping.preview(…, flow=, step=)`` (in the flow's context: its
  ``max_message_bytes``) chained over the steps, for flows made only of ``mapping`` and ``filter``
  steps (a filter is previewed as a one-field mapping of its condition, kept when ``$boolean``);
  rows with ``_error`` are the step's dead letters, of the type ``Mapping.errors`` gives;
- ``test``: ``flow.test(sample)`` (in memory, virtual clock);
- ``local``: ``LocalRuntime`` on a temp state dir, drained until idle
  (``tests/runtime/runtimes.py``'s ``LocalEngine``);
- ``amqp``: one real ``flownb worker SPEC --step X`` process per step against RabbitMQ (+ the
  trigger's worker for a polling trigger), samples published to the first step's queue as the
  trigger's output; the last step's outputs are collected by an extra ``log`` step without a worker.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import yaml

import flownb
from flownb.flow import Flow, from_spec
from tests.processes import free_port as _free_port

HERE = Path(__file__).parent
FLOWS = HERE / "flows"
PATHS = ("preview", "test", "local", "amqp")
PG_URL = os.environ.get("FLOWNB_PARITY_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("FLOWNB_PARITY_MY_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BROKER = os.environ.get("FLOWNB_PARITY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
CAPTURE = "parity-capture"
RUN_TIMEOUT = float(os.environ.get("FLOWNB_PARITY_TIMEOUT", "60"))  # seconds a path may take to settle

sys.path.insert(0, str(HERE.parent / "runtime"))
from runtimes import LocalEngine  # noqa: E402  (also registers the lt.* test components, unused here)

# -- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    dir: Path
    spec: dict
    meta: dict
    sample: list[dict] | None
    sample_csv: Path | None
    expected: dict | None

    @property
    def sample_sql(self) -> Path | None:
        return self.dir / "sample.sql" if (self.dir / "sample.sql").exists() else None

    @property
    def flow(self) -> Flow:
        return from_spec(self.spec, source=str(self.dir / "flow.yaml"))

    @property
    def db(self) -> str | None:
        return self.meta.get("db")

    @property
    def targets(self) -> dict[str, dict]:
        return self.meta.get("targets") or {}

    @property
    def xfail(self) -> dict[str, str]:
        return self.meta.get("xfail") or {}

    @property
    def previewable(self) -> bool:
        return self.flow.on_error is None and all(s.component in ("mapping", "filter", "route")
                                                  for s in self.flow.actions)

    @property
    def uses_http(self) -> bool:
        return any(s.component == "http.request" for s in [*self.flow.actions, *self.flow.error_steps])

    @property
    def uses_redis(self) -> bool:
        return any(s.component.startswith("redis.") for s in self.flow.actions)

    @property
    def uses_mqtt(self) -> bool:
        return any(s.component.startswith("mqtt.") for s in self.flow.steps)


def load_case(name: str) -> Case:
    d = FLOWS / name
    spec = yaml.safe_load((d / "flow.yaml").read_text())
    meta = yaml.safe_load((d / "case.yaml").read_text()) or {}
    sample = orjson.loads((d / "sample.json").read_bytes()) if (d / "sample.json").exists() else None
    sample_csv = d / "sample.csv" if (d / "sample.csv").exists() else None
    expected = orjson.loads((d / "expected.json").read_bytes()) if (d / "expected.json").exists() else None
    return Case(name, d, spec, meta, sample, sample_csv, expected)


def case_names() -> list[str]:
    return sorted(p.name for p in FLOWS.iterdir() if (p / "flow.yaml").exists())


def expressions(flow: Flow) -> list[str]:
    """The JSONata expressions of the flow's mapping/filter/split steps and route conditions."""
    out = []
    for s in flow.actions:
        c = s.config
        if s.route is not None:
            out += [b.when for b in s.route.branches]
        if s.component == "mapping":
            out += list((c.get("fields") or {}).values()) + ([c["expression"]] if c.get("expression") else [])
        elif s.component == "filter":
            out.append(c["condition"])
        elif s.component == "split":
            out.append(c["path"])
    return out


# -- a run's environment ----------------------------------------------------------------------------

@dataclass
class Env:
    """Everything one path run of one case owns: temp dir, targets, table, flow name."""

    case: Case
    path: str
    tmp: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    targets: dict[str, Any] = field(default_factory=dict)   # param → HttpTarget
    mails: list[dict] | None = None                         # what the SMTP server of the run received
    params: dict[str, Any] = field(default_factory=dict)
    replacements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def table(self) -> str:
        return f"{self.base_table}_{self.run_id}"

    @property
    def base_table(self) -> str:
        return str(self.case.flow.parameters.get("table", "t"))

    @property
    def flow_name(self) -> str:
        return f"{self.case.flow.name}-{self.run_id}"[:50]

    @property
    def db_url(self) -> str:
        return {"postgres": PG_URL, "mysql": MY_URL}.get(self.case.db) or f"sqlite:///{self.tmp / 'sink.db'}"

    def flow(self) -> Flow:
        """The case's flow with this run's parameters (and, for amqp, a unique name)."""
        return self.case.flow.with_parameters(self.params)


def open_env(case: Case, path: str, tmp: Path, stack: ExitStack) -> Env:
    from flownb.testing import HttpTarget
    env = Env(case, path, tmp)
    declared = case.flow.parameters
    if "out_dir" in declared:
        out = tmp / "out"
        out.mkdir()
        env.params["out_dir"] = str(out)
    if "db_url" in declared:
        env.params["db_url"] = env.db_url
    if "table" in declared:
        env.params["table"] = env.table
        env.replacements.append((env.table, env.base_table))
        if case.db in ("postgres", "mysql"):
            stack.callback(_drop_table, env.db_url, env.table)
    if "source" in declared:
        env.params["source"] = str(case.sample_csv)
        env.replacements.append((str(case.sample_csv), "<source>"))
    if "source_url" in declared:  # a fresh SQLite database made by the case's sample.sql
        import sqlite3
        db = tmp / "source.db"
        with sqlite3.connect(db) as conn:
            conn.executescript((case.dir / "sample.sql").read_text())
        conn.close()
        env.params["source_url"] = f"sqlite:///{db}"
    if "stream" in declared:  # a Redis stream of this run alone (redis.xadd's sink)
        key = f"flownb-parity-{env.run_id}-{uuid.uuid4().hex[:6]}"
        env.params["stream"] = key
        env.replacements.append((key, "<stream>"))
        stack.callback(_delete_stream, key)
    if "topic_prefix" in declared:  # MQTT topics of this run alone (mqtt.publish's sink: retained messages)
        prefix = f"flownb-parity/{env.run_id}-{uuid.uuid4().hex[:6]}"
        env.params["topic_prefix"] = prefix
        env.replacements.append((prefix, "<prefix>"))
        stack.callback(_clear_retained, prefix)
    if "smtp_port" in declared:  # an SMTP server of this run (aiosmtpd on loopback): smtp.send's sink
        env.params["smtp_port"] = _smtp_server(env, stack, case.meta.get("smtp_refuse") or {})
    for param, kw in case.targets.items():
        target = stack.enter_context(HttpTarget(**(kw or {})))
        env.targets[param] = target
        env.params[param] = target.url
        env.replacements.append((target.url, f"<{param}>"))
    env.replacements.append((str(tmp), "<tmp>"))
    return env


def _delete_stream(key: str) -> None:
    import redis
    r = redis.Redis(host="127.0.0.1", port=6379)
    try:
        r.delete(key)
    finally:
        r.close()


def _retained(prefix: str, clear: bool = False) -> dict[str, bytes]:
    """The retained messages of the MQTT topics under ``prefix`` (Mosquitto on 127.0.0.1:1883),
    topic → payload; ``clear``: then remove them (an empty retained message per topic)."""
    import paho.mqtt.client as mqtt
    got: dict[str, bytes] = {}
    subscribed = __import__("threading").Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flownb-parity-{uuid.uuid4().hex[:8]}")
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload) if m.retain and m.payload else None
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    try:
        c.subscribe(prefix + "/#", qos=1)
        assert subscribed.wait(10), "Mosquitto did not answer the subscription"
        time.sleep(0.5)  # the broker sends the retained messages right after the SUBACK
        if clear:
            for topic in got:
                c.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def _smtp_server(env: Env, stack: ExitStack, refuse: dict[str, str]) -> int:
    """Start an SMTP server on a free loopback port for this run; what it accepts goes to
    ``env.mails`` ({from, to, subject, text}); a recipient in ``refuse`` gets that reply."""
    import socket
    from email import message_from_bytes

    from aiosmtpd.controller import Controller

    env.mails = []
    mails = env.mails

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address in refuse:
                return refuse[address]
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            m = message_from_bytes(envelope.content)
            body = m.get_payload(decode=True) if not m.is_multipart() else m.get_payload(0).get_payload(decode=True)
            mails.append({"from": m["From"], "to": sorted(envelope.rcpt_tos), "subject": m["Subject"],
                          "text": body.decode().strip()})
            return "250 Message accepted for delivery"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    stack.callback(controller.stop)
    env.replacements.append((str(port), "<smtp_port>"))
    return port


def _clear_retained(prefix: str) -> None:
    _retained(prefix, clear=True)


def mqtt_up() -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", 1883), 2).close()
        return True
    except OSError:
        return False


def redis_up() -> bool:
    import redis
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        return True
    except (redis.exceptions.RedisError, OSError):
        return False


def _drop_table(url: str, table: str) -> None:
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {engine.dialect.identifier_preparer.quote(table)}"))
    finally:
        engine.dispose()


# -- normalization ----------------------------------------------------------------------------------

@dataclass
class Raw:
    """What a path produced, before normalization."""

    outputs: list[dict]                      # bodies emitted by the flow's last step
    dead: list[dict]                         # {step, type, message, attempt, retryable, body}


_MSG_ID = re.compile(r"\b[0-9a-f]{32}\b")
# the suffix a runtime adds to an EvaluationError; the preview's _error has the same text without it
_EXPR_SUFFIX = re.compile(r" \(expression: .*\); fix the expression or the input record$", re.S)


def _scrub(text: str, env: Env) -> str:
    for old, new in env.replacements:
        text = text.replace(old, new)
    return _MSG_ID.sub("<id>", text)


def jsonable(v: Any) -> Any:
    """A database / CSV value as plain JSON-like data (exact: no float rounding)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v


def _key(v: Any) -> bytes:
    """Sort key: canonical JSON (integral floats written as ints so 1.0 and 1 sort together)."""
    def canon(x):
        if isinstance(x, float) and x.is_integer():
            return int(x)
        if isinstance(x, dict):
            return {k: canon(y) for k, y in x.items()}
        if isinstance(x, list):
            return [canon(y) for y in x]
        return x
    return orjson.dumps(canon(v), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)


def normalize(raw: Raw, env: Env, sinks: dict) -> dict:
    """Order-free, id-free, time-free form of a run: last step outputs, sink contents, dead letters.

    Bodies (outputs, dead letters' messages) are compared as they come, not made JSON-like: a body
    holding a value JSON cannot (a datetime, a tuple, a non-string key) differs from the JSON the
    same step sends on the wire — that is a discrepancy to see, not to hide. Only values read back
    from a database (Decimal, datetime columns) are made JSON-like."""
    outputs = sorted(raw.outputs, key=_key)
    dead = []
    for d in raw.dead:
        msg = _EXPR_SUFFIX.sub("", d["message"]) if d["type"] == "EvaluationError" else d["message"]
        dead.append({"step": d["step"], "type": d["type"], "message": _scrub(msg, env),
                     "attempt": d["attempt"], "retryable": d["retryable"], "body": d["body"]})
    dead.sort(key=_key)
    return {"outputs": outputs, "sinks": sinks, "dead_letters": dead}


def dead_from_letters(letters) -> list[dict]:
    return [{"step": d.step, "type": d.error.type, "message": d.error.message, "attempt": d.error.attempt,
             "retryable": d.error.retryable, "body": d.message.body} for d in letters]


def read_sinks(flow: Flow, env: Env) -> dict:
    """Final contents of every sink of the (resolved) flow: CSV files, SQL tables, HTTP targets."""
    out: dict[str, Any] = {}
    resolved = flow.resolved()
    for s in [*resolved.steps, *resolved.error_steps]:  # the on_error actions' sinks too
        c = s.config
        if s.component == "csv.write":
            p = Path(c["path"])
            key = f"csv:{s.name}"
            if not p.exists():
                out[key] = None
                continue
            with open(p, newline="", encoding=c.get("encoding", "utf-8")) as fh:
                rows = list(csv.reader(fh, delimiter=c.get("delimiter", ",")))
            header, body = (rows[0], rows[1:]) if rows else ([], [])
            out[key] = {"header": header, "rows": sorted(body)}
        elif s.component == "sql.upsert":
            out[f"sql:{s.name}"] = _read_table(c["url"], c["table"], c["key"])
        elif s.component == "file.write":  # the rows written, in every part file / the sheet, sorted
            out[f"file:{s.name}"] = _written_rows(Path(c["path"]), c.get("sheet", "Sheet1"))
        elif s.component == "mqtt.publish" and c.get("retain"):  # topic → payload of the retained messages
            prefix = env.params["topic_prefix"]
            out[f"mqtt:{s.name}"] = {t.replace(prefix, "<prefix>"): orjson.loads(p)
                                     for t, p in sorted(_retained(prefix).items())}
        elif s.component == "redis.xadd":  # the entries' fields (ids are times: left out), sorted
            import redis
            r = redis.Redis(host=c.get("host", "127.0.0.1"), port=c.get("port", 6379), decode_responses=True)
            try:
                out[f"redis:{s.name}"] = sorted((f for _id, f in r.xrange(c["stream"])), key=_key)
            finally:
                r.close()
    if env.mails is not None:
        out["smtp"] = sorted(env.mails, key=_key)
    for param, target in env.targets.items():
        out[f"http:{param}"] = {
            "received": sorted(({"method": r.method, "path": r.path, "query": r.query,
                                 "content_type": r.headers.get("content-type"), "json": r.json}
                                for r in target.received), key=_key),
            "refused": target.refused}
    return out


def _written_rows(path: Path, sheet: str) -> Any:
    """What ``file.write`` wrote: a Parquet directory's part files or an Excel sheet, as {header,
    rows} with the rows sorted (batching decides the order and the part files, not the content)."""
    if not path.exists():
        return None
    if path.is_dir():
        import pyarrow.parquet as pq
        tables = [pq.read_table(f) for f in sorted(path.glob("*.parquet"))]
        header = sorted({tuple(t.column_names) for t in tables})
        rows = [list(r.values()) for t in tables for r in t.to_pylist()]
        types = sorted({f"{f.name}: {f.type}" for t in tables for f in t.schema})
        return {"header": [list(h) for h in header], "types": types, "rows": sorted(rows, key=_key)}
    import openpyxl
    wb = openpyxl.load_workbook(path, read_only=True)
    try:
        values = [list(r) for r in wb[sheet].iter_rows(values_only=True)]
    finally:
        wb.close()
    return {"header": values[0] if values else [], "rows": sorted(values[1:], key=_key)}


def _read_table(url: str, table: str, key: list[str]) -> Any:
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table(table):
            return None
        with engine.connect() as conn:
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            rows = conn.execute(sa.select(t).order_by(*[t.c[k] for k in key])).mappings().all()
            return {"columns": sorted(t.c.keys()), "rows": [jsonable(dict(r)) for r in rows]}
    finally:
        engine.dispose()


# -- the four paths ---------------------------------------------------------------------------------

def run_path(case: Case, path: str, tmp: Path) -> dict:
    """Run ``case`` one way; return its normalized result."""
    with ExitStack() as stack:
        env = open_env(case, path, tmp, stack)
        raw = {"preview": run_preview, "test": run_flow_test, "local": run_local, "amqp": run_amqp}[path](env)
        return normalize(raw, env, read_sinks(env.flow(), env))


def run_preview(env: Env) -> Raw:
    """``Mapping.preview`` step after step; a filter is the preview of its condition; a route step
    is ``RouteSpec.preview`` (the branch each row takes), each branch previewed on its rows, the
    branches' rows rejoined for the steps after it."""
    import pandas as pd

    case = env.case
    flow = env.flow()
    if case.sample_csv is not None or case.sample_sql is not None:
        frame = flow.sample(1000)  # the source as csv.poll / sql.poll read it (docs/notebook.md)
    else:
        frame = pd.DataFrame(case.sample)
    dead: list[dict] = []
    frame = _preview_steps(flow, flow.resolved().steps, frame, dead)
    from flownb.rules import to_records
    return Raw(outputs=to_records(frame), dead=dead)


def _preview_steps(flow, steps, frame, dead: list[dict]):
    import pandas as pd

    from flownb.rules import Mapping, to_records
    from flownb.rules._runtime import boolean

    for s in steps:
        inputs = to_records(frame)
        if s.route is not None:
            view = s.route.preview(frame, step=s.name)
            err = view["_error"]
            for i, e in enumerate(err):
                if isinstance(e, str):
                    dead.append({"step": s.name, "type": "EvaluationError", "message": e, "attempt": 1,
                                 "retryable": False, "body": inputs[i]})
            taken = [str(b).split(", ") if isinstance(b, str) else [] for b in view["_branch"]]
            parts = []
            for name, chain in s.route.chains():
                rows = [i for i, t in enumerate(taken) if name in t]
                if rows:
                    parts.append(_preview_steps(flow, chain, frame.iloc[rows].reset_index(drop=True), dead))
            frame = pd.concat(parts, ignore_index=True) if parts else frame.iloc[0:0]
            continue
        if s.component == "mapping":
            m = Mapping(fields=s.config.get("fields"), expression=s.config.get("expression"))
        elif s.component == "filter":
            m = Mapping(fields={"__keep": s.config["condition"]})
        else:  # pragma: no cover - guarded by Case.previewable
            raise AssertionError(f"step {s.name} ({s.component}) cannot be previewed")
        view = m.preview(frame, flow=flow, step=s.name)
        err = view["_error"]
        failed = [i for i, e in enumerate(err) if isinstance(e, str)]
        types = [e["type"] for e in m.errors]
        assert len(types) == len(failed), (types, failed)
        for i, kind in zip(failed, types, strict=True):
            dead.append({"step": s.name, "type": kind, "message": err.iloc[i], "attempt": 1,
                         "retryable": False, "body": inputs[i]})
        good = view[[not isinstance(e, str) for e in err]].drop(columns="_error")
        if s.component == "filter":
            keep = [boolean(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else False
                    for v in good["__keep"]]
            frame = frame.iloc[[i for i, e in enumerate(err) if not isinstance(e, str)]][keep]
        else:
            frame = good
        frame = frame.reset_index(drop=True)
    return frame


def run_flow_test(env: Env) -> Raw:
    flow = env.flow()
    # live: the sinks (sql.upsert, csv.write, http.request) really write, as they do on the runtimes
    # (a dry flow.test records what they would send instead: tests/runtime/test_flow_test.py)
    result = flow.test(env.case.sample, live=True)  # None: poll the trigger once
    return Raw(outputs=list(result.last), dead=dead_from_letters(result.dead_letters))  # what left the flow


def run_local(env: Env) -> Raw:
    flow = env.flow()
    state = env.tmp / "local"
    state.mkdir()
    r = LocalEngine().run(flow, inputs=env.case.sample, polls=1, tmp=state, timeout=RUN_TIMEOUT)
    return Raw(outputs=list(r.outputs), dead=dead_from_letters(r.dead_letters))


# -- RabbitMQ: one worker process per step ---------------------------------------------------------

def broker_up() -> bool:
    import pika
    try:
        pika.BlockingConnection(pika.URLParameters(BROKER)).close()
        return True
    except pika.exceptions.AMQPError:
        return False




def _flownb_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "flownb"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from flownb.cli import main; "
                                                                  "sys.exit(main(sys.argv[1:]))"]


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the test process dies (even by SIGKILL), so no worker of a
    killed test run keeps consuming on the shared broker (Linux; elsewhere a no-op)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Workers:
    """``flownb worker SPEC --step X`` processes, all started at once; stderr kept in files."""

    def __init__(self, spec: Path, steps: list[str], tmp: Path, metrics: dict[str, int]):
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        env = {**os.environ, "FLOWNB_BROKER_URL": BROKER, "PYTHONUNBUFFERED": "1"}
        for step in steps:
            log = tmp / f"worker-{step}.log"
            self.logs[step] = log
            cmd = [*_flownb_cmd(), "worker", str(spec), "--step", step]
            if step in metrics:
                cmd += ["--metrics-port", str(metrics[step])]
            with open(log, "wb") as fh:
                self.procs[step] = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                    start_new_session=True, preexec_fn=_die_with_parent)

    def tail(self, step: str, n: int = 3000) -> str:
        try:
            return self.logs[step].read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        for step, p in self.procs.items():
            rc = p.poll()
            if rc is not None:
                raise AssertionError(f"worker of step '{step}' exited early with code {rc}:\n{self.tail(step)}")

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every worker (they drain and exit 0); SIGKILL what is left after ``timeout``."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for step, p in self.procs.items():
            try:
                codes[step] = p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
                codes[step] = None
        return codes


def _amqp_queues(flow: Flow) -> dict[str, list[str]]:
    """Every queue of the flow by role: ``work`` (inputs, delays, retry-ready), ``dlq``, ``other``."""
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.topology import retry_levels
    work, dlq, other = [], [], [names.state_queue(flow.name, flow.trigger.name)]
    for s in flow.actions:  # route branches' steps included
        retries = [names.retry_queue(flow.name, s.name, lv) for lv in retry_levels(s.retry_policy)]
        retries.append(names.retry_ready_queue(flow.name, s.name))
        work.append(names.step_queue(flow.name, s.name))
        if s.name == CAPTURE:  # declared like any step, never consumed: only to delete
            other += [*retries, names.dead_letter_queue(flow.name, s.name)]
            continue
        work += retries
        dlq.append(names.dead_letter_queue(flow.name, s.name))
    if flow.on_error is not None:
        other.append(names.errors_queue(flow.name))
    return {"work": work, "dlq": dlq, "other": other}


def _metric(port: int, name: str, step: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    m = re.search(rf'^{name}{{[^}}]*step="{re.escape(step)}"[^}}]*}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def run_amqp(env: Env) -> Raw:
    from flownb.message import Message
    from flownb.runtime.amqp import names
    from flownb.runtime.amqp.dlq import AmqpDeadLetters
    from flownb.runtime.amqp.step_worker import PERSISTENT
    from flownb.runtime.amqp.topology import connect, declare_flow

    flow = (env.flow().model_copy(update={"name": env.flow_name})
            .then(flownb.step(CAPTURE, "log", level="debug")))
    env.replacements.append((env.flow_name, env.case.flow.name))
    spec = flow.save(env.tmp / "flow.yaml")
    queues = _amqp_queues(flow)
    conn = connect(BROKER)
    try:
        ch = conn.channel()
        declare_flow(ch, flow)
        _bind_arrivals(ch, flow, [s.name for s in flow.actions if s.name != CAPTURE])
        polling = env.case.sample is None
        if not polling:
            ch.confirm_delivery()
            first = flow.steps[0].name
            for body in env.case.sample:
                m = Message(body=body, flow=flow.name, step=flow.trigger.name)
                ch.basic_publish(names.exchange(flow.name), first, m.to_json(), PERSISTENT)
        # one worker per step, or per ``fuse`` group (started as its first step)
        steps = [s.name for s in flow.actions if s.name != CAPTURE and flow.fused_group(s.name)[0] == s.name]
        if polling:
            steps.insert(0, flow.trigger.name)
        if flow.on_error is not None:
            steps.append(names.ON_ERROR_WORKER)
        metrics = {s: _free_port() for s in steps}
        workers = Workers(spec, steps, env.tmp, metrics)
        try:
            if polling:  # wait for the trigger's first committed poll
                _wait(lambda: _metric(metrics[flow.trigger.name], "flownb_messages_processed_total",
                                      flow.trigger.name) > 0, workers, "the trigger's first poll")
            _wait_idle(ch, queues, workers, flow, metrics)
            if flow.on_error is not None:  # every failure event handed to the on_error worker, which
                errors_q = names.errors_queue(flow.name)  # delivers what it holds when stopped
                _wait(lambda: ch.queue_declare(errors_q, passive=True).method.message_count == 0, workers,
                      "the on_error worker to take every failure event")
        finally:
            codes = workers.stop()
        bad = {s: c for s, c in codes.items() if c != 0}
        assert not bad, "workers did not exit 0 on SIGTERM: " + "; ".join(
            f"{s}: {c}\n{workers.tail(s)}" for s, c in bad.items())
        outputs = []
        while True:
            method, _props, body = ch.basic_get(names.step_queue(flow.name, CAPTURE), auto_ack=True)
            if method is None:
                break
            outputs.append(Message.from_json(body).body)
        dead = AmqpDeadLetters(flow, BROKER).list()
        return Raw(outputs=outputs, dead=dead_from_letters(dead))
    finally:
        _delete_topology(conn, flow, queues)


def _delete_topology(conn, flow: Flow, queues: dict) -> None:
    """Delete every queue and the exchange of the run's flow (the arrivals queues are exclusive:
    they go with the connection). A failure here is reported, never hides the test's own error."""
    import pika

    from flownb.runtime.amqp import names
    try:
        ch = conn.channel() if conn.is_open else None
        if ch is None:  # the broker dropped the connection: a new one to clean up
            from flownb.runtime.amqp.topology import connect
            conn = connect(BROKER)
            ch = conn.channel()
        for q in [*queues["work"], *queues["dlq"], *queues["other"]]:
            ch.queue_delete(q)
        ch.exchange_delete(names.exchange(flow.name))
    except (pika.exceptions.AMQPError, OSError) as exc:
        import warnings
        warnings.warn(f"parity: could not delete the RabbitMQ queues of flow '{flow.name}': {exc!r}", stacklevel=2)
    finally:
        try:
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def _wait(cond, workers: Workers, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.check_alive()
        if cond():
            return
        time.sleep(0.05)
    logs = "\n".join(f"--- {s}:\n{workers.tail(s, 1500)}" for s in workers.procs)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _arrivals_queue(flow: Flow, step: str) -> str:
    return f"parity.{flow.name}.{step}.arrivals"


def _bind_arrivals(ch, flow: Flow, steps: list[str]) -> None:
    """Per step, an exclusive queue (gone with the connection) bound to the flow's exchange with the
    step's routing key: it receives a copy of every message sent to the step and is never consumed,
    so its depth counts the step's arrivals. Retries go through the default exchange, not counted."""
    from flownb.runtime.amqp import names
    for step in steps:
        q = _arrivals_queue(flow, step)
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, names.exchange(flow.name), routing_key=step)


def _wait_idle(ch, queues: dict, workers: Workers, flow: Flow, metrics: dict[str, int]) -> None:
    """Until every message that reached a step has left it for good: per step, arrivals (the
    depth of its arrivals queue) == processed + dead-lettered (the worker's counters, moved only
    when an input is acked, after what it produced is confirmed), and no input, delay or retry-ready
    queue holds anything. A retried delivery is neither, so a message waiting for its retry keeps
    the step busy. The counters are read before the arrivals: equal values mean nothing was
    in flight at the first read and nothing arrived since — exact, with no view of unacked messages."""
    work = [q for q in queues["work"] if q != f"flownb.{flow.name}.{CAPTURE}"]
    # a fused group's worker counts (under its first step's name) what arrived at any of its steps
    steps = [s.name for s in flow.actions if s.name != CAPTURE and flow.fused_group(s.name)[0] == s.name]
    seen: dict = {}

    def idle() -> bool:
        done = {s: _metric(metrics[s], "flownb_messages_processed_total", s)
                + _metric(metrics[s], "flownb_messages_dead_lettered_total", s) for s in steps}
        arrived = {s: sum(ch.queue_declare(_arrivals_queue(flow, m), passive=True).method.message_count
                          for m in flow.fused_group(s)) for s in steps}
        ready = sum(ch.queue_declare(q, passive=True).method.message_count for q in work)
        seen.update(done=done, arrived=arrived, ready=ready)
        return ready == 0 and all(done[s] == arrived[s] for s in steps)
    try:
        _wait(idle, workers, f"flow '{flow.name}' to come to rest")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast look: {seen}") from None


# -- the flow × path table --------------------------------------------------------------------------

class ParityTable:
    """Outcome of every (flow, path) test of a session; :meth:`render` prints the table."""

    def __init__(self):
        self.cells: dict[tuple[str, str], str] = {}
        self.seconds: dict[tuple[str, str], float] = {}

    def record(self, flow: str, path: str, outcome: str, seconds: float = 0.0) -> None:
        self.cells[(flow, path)] = outcome
        self.seconds[(flow, path)] = self.seconds.get((flow, path), 0.0) + seconds

    def render(self) -> str:
        if not self.cells:
            return ""
        flows = sorted({f for f, _ in self.cells} | set(case_names()))
        w = max(len(f) for f in flows)
        lines = [f"{'flow':<{w}}  " + "  ".join(f"{p:<8}" for p in PATHS)]
        for f in flows:
            row = []
            for p in PATHS:
                if (f, p) in self.cells:
                    row.append(self.cells[(f, p)])
                elif p == "preview" and not load_case(f).previewable:
                    row.append("n/a")
                else:
                    row.append("-")
            lines.append(f"{f:<{w}}  " + "  ".join(f"{c:<8}" for c in row))
        return "\n".join(lines)


def _shown(v: Any) -> Any:
    """For display only: values JSON cannot hold are shown as ``"<python repr>"``."""
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else f"<{k!r}>"): _shown(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shown(x) for x in v]
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return f"<{v!r}>"


def dumps(result: dict) -> str:
    return json.dumps(_shown(result), indent=1, sort_keys=True, ensure_ascii=False)


__all__ = ["Case", "PATHS", "ParityTable", "case_names", "load_case", "run_path", "broker_up", "redis_up",
           "mqtt_up", "normalize", "expressions", "dumps"]
