"""Cursor time-travel: read, set or rewind a polling trigger's saved cursor on either runtime, and
preview what the next poll would emit (``flownb state show|set|rewind``, ``flow.preview_poll``;
docs/debugging.md), and read a sample of the source as the trigger reads it (``flow.sample``;
docs/notebook.md).

A cursor is only changed while the flow is **not** running: on the embedded runtime the flow's lock
file (``<state-dir>/<flow>.lock``, held by ``flownb run``) must be free; on RabbitMQ the trigger's
state queue must have no consumer (a trigger worker holds the cursor while it runs). The change is
one transaction (SQLite; an AMQP transaction that publishes the new cursor and acks the old one), so
the cursor is never lost nor doubled. The poll after a change is due at once.

``rewind`` without ``--to`` empties the cursor (the next poll starts from the beginning, or from a
component's ``start``). ``rewind --to VALUE`` sets the position field — ``cursor`` (sql.poll,
http.poll, files.poll) or the state's only field — and drops the fields that say how far past that
value the trigger had read (``key``/``key_type``, ``seen``): the next poll emits what comes after
VALUE again.

``backfill`` (``flownb backfill SPEC --from A --to B``) reads a past range again into the flow's
first queue, whether the flow runs or not, and never touches its cursor: a bounded poll of its own
runs the trigger from a scratch copy of the cursor rewound to A, page after page until that copy
reaches B (or a poll emits nothing), and each page's messages (and the records too large to be
messages, as the trigger's dead letters) are written for the first step as one commit — one SQLite
transaction under the store's locking on the embedded runtime, publishes with confirms into the
flow's exchange on RabbitMQ. The running flow processes them beside its live records, whose cursor
moves on meanwhile. A failure half-way leaves the pages written so far queued (the error says how
many): backfill again from where they end. The last poll may emit records a little past B (a poll
reads a page).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from .errors import BrokerError, FlownbError, SpecError
from .flow import Flow

__all__ = ["backfill", "parse_value", "preview_poll", "read_cursor", "rewound", "sample", "write_cursor"]

#: fields of a state that locate the position *within* equal cursor values (dropped by a rewind)
_TIE_BREAKERS = ("key", "key_type", "seen")


def _polling(flow: Flow) -> None:
    from .components.base import PollingTrigger
    from .registry import get
    cls = get(flow.trigger.component, step=flow.trigger.name)
    if not (isinstance(cls, type) and issubclass(cls, PollingTrigger)):
        raise SpecError(f"trigger '{flow.trigger.name}' ({flow.trigger.component}) does not poll: it has no "
                        f"cursor to show or set")


def parse_value(text: str) -> Any:
    """A ``--to`` value: JSON when it parses (``0``, ``"a"``, ``{"next": 3}``), else the text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def rewound(state: dict, to: Any = None, key: str | None = None) -> dict:
    """The state after ``rewind`` (see the module docstring)."""
    if to is None:
        return {}
    if key is None:
        if "cursor" in state:
            key = "cursor"
        elif len(state) == 1:
            key = next(iter(state))
        elif not state:
            raise SpecError("the cursor is empty (the trigger has not polled yet): use 'flownb state set "
                            "SPEC --to JSON' to write a whole state")
        else:
            raise SpecError(f"the state has several fields ({', '.join(state)}); say which one with --key "
                            f"or write it whole with 'flownb state set'")
    if key not in state:
        raise SpecError(f"the state has no field '{key}' (fields: {', '.join(state) or 'none'})")
    new = {k: v for k, v in state.items() if k not in _TIE_BREAKERS}
    new[key] = to
    return new


# -- the embedded runtime --------------------------------------------------------------------------

def _local_read(flow: Flow, state_dir: Path) -> dict:
    from .runtime.local.store import open_state
    if not (state_dir / f"{flow.name}.db").exists():
        raise FlownbError(f"no local state for flow '{flow.name}' in '{state_dir}'; run the flow first or "
                          f"pass the --state-dir it used")
    store = open_state(state_dir, flow.name, create=False)
    try:
        return store.get_state(flow.trigger.name)[0]
    finally:
        store.close()


def _local_write(flow: Flow, state_dir: Path, new: dict | None, change) -> tuple[dict, dict]:
    from .runtime.local.runtime import lock_state_dir
    from .runtime.local.store import open_state
    if not (state_dir / f"{flow.name}.db").exists():
        raise FlownbError(f"no local state for flow '{flow.name}' in '{state_dir}'; run the flow first or "
                          f"pass the --state-dir it used")
    try:
        lock = lock_state_dir(state_dir, flow.name)
    except FlownbError as exc:
        raise FlownbError(f"refusing to change the cursor while the flow runs: {exc}") from None
    try:
        store = open_state(state_dir, flow.name, create=False)
        try:
            with store.transaction("the cursor did not change") as c:
                row = c.execute("SELECT state FROM trigger_state WHERE trigger=?", (flow.trigger.name,)).fetchone()
                old = orjson.loads(row[0]) if row else {}
                new = change(old) if new is None else new
                c.execute("INSERT INTO trigger_state (trigger, state, next_at) VALUES (?, ?, ?) "
                          "ON CONFLICT(trigger) DO UPDATE SET state=excluded.state, next_at=excluded.next_at",
                          (flow.trigger.name, orjson.dumps(new).decode(), time.time()))
            return old, new
        finally:
            store.close()
    finally:
        lock.close()


# -- RabbitMQ --------------------------------------------------------------------------------------

def _passive(conn, queue: str):
    """``queue.declare-ok`` of ``queue`` (None when it does not exist), on a channel of its own."""
    import pika.exceptions
    ch = conn.channel()
    try:
        return ch.queue_declare(queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise BrokerError(f"cannot inspect '{queue}': {exc.reply_text}") from exc
    finally:
        if ch.is_open:
            ch.close()


def _amqp_check(ch, flow: Flow, what: str) -> str:
    """The queue that holds the cursor — the quorum topology's ``.cursor``, or the classic ``.state``
    (the classic topology's, or an older flownb's not yet moved by a trigger worker) — refusing while a
    trigger worker runs (a consumer of it, or of the quorum topology's ``.poller``)."""
    from .runtime.amqp import names
    from .runtime.amqp.topology import trigger_queues
    cursor, poller = trigger_queues(flow)
    queue, ok = cursor, _passive(ch.connection, cursor)
    if poller is not None and ok is None:
        old = names.state_queue(flow.name, flow.trigger.name)
        queue, ok = old, _passive(ch.connection, old)
    if ok is None:
        raise FlownbError(f"flow '{flow.name}' has no cursor on this broker (queue '{cursor}' does not "
                          f"exist): has its trigger worker ever run here?")
    lock = _passive(ch.connection, poller) if poller is not None else None
    # a quorum queue drops the consumers of a closed connection a moment later: look again for 3 s
    deadline = time.monotonic() + 3.0
    while (ok.consumer_count or (lock is not None and lock.consumer_count)) and time.monotonic() < deadline:
        time.sleep(0.2)
        ok = _passive(ch.connection, queue) or ok
        lock = _passive(ch.connection, poller) if poller is not None else None
    for q, held in ((queue, ok), (poller, lock)):
        if held is not None and held.consumer_count:
            raise FlownbError(f"refusing to {what} the cursor while the flow runs: the trigger worker of "
                              f"'{flow.name}' holds it ({held.consumer_count} consumer(s) on '{q}'); "
                              f"stop the trigger worker first (the step workers may keep running)")
    return queue


def _amqp_read(flow: Flow, broker: str) -> dict:
    from .runtime.amqp.topology import connect
    conn = connect(broker, name="flownb state")
    try:
        ch = conn.channel()
        queue = _amqp_check(ch, flow, "read")
        method, _props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            return {}
        ch.basic_nack(method.delivery_tag, requeue=True)
        return orjson.loads(body)
    finally:
        if conn.is_open:
            conn.close()


def _amqp_write(flow: Flow, broker: str, new: dict | None, change) -> tuple[dict, dict]:
    from .runtime.amqp.publish import state_props
    from .runtime.amqp.topology import VERSION_HEADER, connect
    conn = connect(broker, name="flownb state")
    try:
        ch = conn.channel()
        queue = _amqp_check(ch, flow, "change")
        ch.tx_select()
        method, props, body = ch.basic_get(queue, auto_ack=False)
        old = orjson.loads(body) if method is not None else {}
        version = int(((props.headers or {}) if method is not None else {}).get(VERSION_HEADER, 0) or 0)
        if ch.basic_get(queue, auto_ack=False)[0] is not None:
            raise FlownbError(f"'{queue}' holds more than one cursor; nothing was changed — "
                              f"inspect it in the management UI")
        new = change(old) if new is None else new
        ch.basic_publish("", queue, orjson.dumps(new), state_props(0.0, version + 1))
        if method is not None:
            ch.basic_ack(method.delivery_tag)
        ch.tx_commit()
        return old, new
    finally:
        if conn.is_open:
            conn.close()  # on any error before tx_commit: nothing changed


# -- the API ---------------------------------------------------------------------------------------

def _where(state_dir, broker) -> tuple[Path | None, str | None]:
    if state_dir is not None and broker is not None:
        raise SpecError("pass state_dir (the embedded runtime) or broker (RabbitMQ), not both")
    return (Path(state_dir if state_dir is not None else ".flownb") if broker is None else None), broker


def read_cursor(flow: Flow, state_dir: str | Path | None = None, broker: str | None = None) -> dict:
    """The trigger's saved cursor (``{}`` before its first poll)."""
    _polling(flow)
    path, url = _where(state_dir, broker)
    if url:
        return _amqp_read(flow, url)
    assert path is not None  # _where gives a state dir when no broker is given
    return _local_read(flow, path)


def write_cursor(flow: Flow, state: dict | None = None, *, state_dir: str | Path | None = None,
                 broker: str | None = None, change=None) -> tuple[dict, dict]:
    """Replace the cursor with ``state`` (or ``change(old)``); the flow must not be running. Returns
    (old, new)."""
    _polling(flow)
    if state is not None and not isinstance(state, dict):
        raise SpecError(f"a cursor is a JSON object such as {{\"cursor\": 0}}, got {type(state).__name__}")
    path, url = _where(state_dir, broker)
    if url:
        return _amqp_write(flow, url, state, change)
    assert path is not None  # _where gives a state dir when no broker is given
    return _local_write(flow, path, state, change)


def preview_poll(flow: Flow, state: dict | None = None, *, state_dir: str | Path | None = None,
                 broker: str | None = None):
    """What the next poll would emit, as a DataFrame (body fields as columns, nested ones dotted), and
    nothing committed: no cursor moves, no message is queued. ``state``: poll from this cursor;
    else from the saved one when ``state_dir`` or ``broker`` is given, else from the beginning.
    ``frame.attrs["state"]``: the cursor the poll started from; ``attrs["next_state"]``: where it
    would move."""
    import copy

    import pandas as pd

    from .runtime.core import TriggerRunner
    from .workbench import flatten
    _polling(flow)
    if state is None and (state_dir is not None or broker is not None):
        state = read_cursor(flow, state_dir=state_dir, broker=broker)
    start = copy.deepcopy(state or {})
    runner = TriggerRunner(flow.resolved())
    try:
        msgs, _payloads, new = runner.poll(start)
    finally:
        runner.close()
    rows = [{c: v for c, (_p, v) in flatten(m.body).items()} for m in msgs]
    frame = pd.DataFrame(rows)
    frame.attrs["state"] = state or {}
    frame.attrs["next_state"] = new
    return frame


#: polls ``sample`` runs at most (each reads a page of ``batch_size`` records)
SAMPLE_MAX_POLLS = 100


def sample(flow: Flow, n: int = 100, state: dict | None = None, *, frame: bool = True):
    """Up to ``n`` records exactly as the flow's polling trigger emits them: its own ``poll`` runs
    (pages of its ``batch_size``) on a scratch copy of ``state`` (default: from the beginning, as a
    first run), and each record is taken from the message's wire form — the body the first step
    receives. No cursor moves, nothing is queued; only triggers whose poll only reads
    (``PollingTrigger.samples``: csv.poll, sql.poll, file.read, http.poll) are run.

    ``frame=True``: a DataFrame (:func:`flownb.records.to_frame`: JSON null as
    :data:`~flownb.records.NULL`, strings as strings, ints as ints) whose ``to_records`` is exactly
    these bodies, so ``Mapping.preview`` and ``flow.test`` of it see what production sees;
    ``frame.attrs["flownb.sample"]`` names the trigger, ``attrs["next_state"]`` is where the cursor
    would be after the polls that read them (a poll reads a whole page: past the ``n``-th record
    when ``n`` ends inside a page). ``frame=False``: the bodies, a list of dicts.

    A record over ``max_message_bytes`` is not a message (the trigger dead-letters it): it is left
    out, with a warning saying how many."""
    import copy
    import warnings

    from .components.base import PollingTrigger
    from .records import to_frame
    from .registry import get
    from .runtime.core import TriggerRunner
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"n is how many records to read, a whole number ≥ 1; got {n!r}")
    if state is not None and not isinstance(state, dict):
        raise SpecError(f"a cursor is a JSON object such as {{\"cursor\": 0}}, got {type(state).__name__}")
    trig = flow.trigger
    cls = get(trig.component, step=trig.name)
    if not (isinstance(cls, type) and issubclass(cls, PollingTrigger)):
        raise SpecError(f"trigger '{trig.name}' ({trig.component}) does not poll, so it has no source to "
                        f"sample: pass your own sample (a DataFrame or a list of dicts shaped like the "
                        f"requests it will receive) to Mapping.preview / flow.test")
    if not cls.samples:
        raise SpecError(f"trigger '{trig.name}' ({trig.component}) does more than read when it polls "
                        f"(it takes or acknowledges messages at its source, or runs code of its own), so "
                        f"flow.sample() does not run it; capture a sample some other way "
                        f"(flow.preview_poll, or records you saved) and pass it to Mapping.preview / "
                        f"flow.test")
    current = copy.deepcopy(state or {})
    bodies: list[dict] = []
    dropped: list[str] = []
    runner = TriggerRunner(flow.resolved())
    try:
        for _ in range(SAMPLE_MAX_POLLS):
            _msgs, payloads, new = runner.poll(current)
            dropped += [info.message for _m, info, _p in runner.last_dead]
            bodies += [orjson.loads(p)["body"] for p in payloads[:n - len(bodies)]]
            moved = new != current
            current = new
            if len(bodies) >= n or not (payloads or moved):
                break
    finally:
        runner.close()
    if dropped:
        warnings.warn(f"{len(dropped)} record(s) of the source are over the flow's max_message_bytes and "
                      f"left out of the sample, as the trigger dead-letters them: {dropped[0]}",
                      UserWarning, stacklevel=3)
    if not frame:
        return bodies
    out = to_frame(bodies)
    out.attrs["flownb.sample"] = trig.component
    out.attrs["next_state"] = current
    return out


def _key(state: dict, key: str | None) -> str:
    if key is not None:
        return key
    if "cursor" in state:
        return "cursor"
    if len(state) == 1:
        return next(iter(state))
    raise SpecError(f"the cursor has {'no' if not state else 'several'} fields ({', '.join(state) or 'none'}); "
                    f"say which one is the position with --key")


def _less(a: Any, b: Any, what: str) -> bool:
    try:
        return a < b
    except TypeError:
        raise SpecError(f"{what}: cannot compare {a!r} with {b!r}; give values of the cursor's type "
                        f"(see 'flownb state show')") from None


def backfill(flow: Flow, start: Any, end: Any, *, state_dir: str | Path | None = None,
             broker: str | None = None, key: str | None = None, max_polls: int = 100_000,
             poll_timeout: float = 120.0) -> dict:
    """Read the range (``start``, ``end``] of a polling trigger again into the flow's first queue,
    with the flow running or stopped, without touching its cursor (see the module docstring).
    ``poll_timeout``: how long the broker may take to confirm a page's messages. Returns ``{"polls",
    "messages", "cursor"}`` (the flow's cursor as it was read, untouched; None on RabbitMQ while a
    running trigger worker holds it)."""
    _polling(flow)
    if not _less(start, end, "--from must be before --to"):
        raise SpecError(f"--from {start!r} is not before --to {end!r}; nothing to read")
    path, url = _where(state_dir, broker)
    if url:
        return _amqp_backfill(flow, url, start, end, key, max_polls, poll_timeout)
    assert path is not None  # _where gives a state dir when no broker is given
    return _local_backfill(flow, path, start, end, key, max_polls)


def _check_range(saved: dict, end: Any, key: str | None) -> str:
    if not saved:
        raise SpecError("the trigger has not polled yet (its cursor is empty): there is no past to read again")
    k = _key(saved, key)
    if k not in saved:
        raise SpecError(f"the cursor has no field '{k}' (fields: {', '.join(saved)})")
    if _less(saved[k], end, "--to and the cursor"):
        raise SpecError(f"--to {end!r} is past the cursor ({k} = {saved[k]!r}): the flow has not read that far "
                        f"yet and will; backfill a range behind the cursor")
    return k


def _bounded_poll(flow: Flow, state: dict, k: str, end: Any, max_polls: int, commit, *,
                  state_dir: Path | None = None) -> tuple[int, int]:
    """Poll the trigger from ``state`` (a scratch copy: the flow's cursor is never read nor written
    here) until the position ``k`` reaches ``end``, a poll emits nothing or does not move, or
    ``max_polls``; ``commit(payloads, dead)`` writes each poll's messages and dead letters. Returns
    (polls, messages)."""
    from .runtime.core import TriggerRunner
    runner = TriggerRunner(flow.resolved(), state_dir=state_dir)
    polls = messages = 0
    try:
        while polls < max_polls:
            try:
                _msgs, payloads, new = runner.poll(state)
            except Exception as exc:
                raise FlownbError(f"a backfill poll failed ({type(exc).__name__}: {exc}); the flow's cursor was "
                                  f"not touched, {messages} message(s) were queued; fix the source and run the "
                                  f"backfill again (from where they end)") from exc
            commit(payloads, runner.last_dead)
            polls += 1
            messages += len(payloads)
            moved, state = new != state, new
            if not payloads or not moved or not _less(state.get(k), end, "the cursor and --to"):
                break
    finally:
        runner.close()
    return polls, messages


def _local_backfill(flow: Flow, state_dir: Path, start, end, key, max_polls) -> dict:
    """The embedded runtime: the flow's store opened beside a running ``flownb run`` (SQLite WAL, its
    busy timeout), each page committed in one transaction into the first step's queue, where the
    running flow's next look at its queues finds it (within its idle wait, 0.2 s)."""
    from .runtime.local.store import open_state
    if not (state_dir / f"{flow.name}.db").exists():
        raise FlownbError(f"no local state for flow '{flow.name}' in '{state_dir}'; run the flow first or "
                          f"pass the --state-dir it used")
    store = open_state(state_dir, flow.name, create=False)
    name = flow.trigger.name
    first = flow.steps[0].name if flow.steps else None
    try:
        saved = store.get_state(name)[0]
        k = _check_range(saved, end, key)

        def commit(payloads: list[bytes], dead: list) -> None:
            store.commit_poll(name, first, payloads, None, 0.0, time.time(),  # state None: the cursor is the flow's
                              dead=[(name, 1, p, orjson.dumps(info.to_dict())) for _m, info, p in dead])

        polls, messages = _bounded_poll(flow, rewound(saved, start, k), k, end, max_polls, commit,
                                        state_dir=state_dir)
        return {"polls": polls, "messages": messages, "cursor": saved}
    finally:
        store.close()


def _amqp_peek(conn, flow: Flow) -> dict | None:
    """The saved cursor, read without taking it (got and put back), whether a trigger worker runs or
    not; None when a running trigger worker holds it (it keeps the cursor unacked between polls)."""
    from .runtime.amqp import names
    from .runtime.amqp.topology import trigger_queues
    cursor, poller = trigger_queues(flow)
    queue, ok = cursor, _passive(conn, cursor)
    if poller is not None and ok is None:
        old = names.state_queue(flow.name, flow.trigger.name)
        queue, ok = old, _passive(conn, old)
    if ok is None:
        raise FlownbError(f"flow '{flow.name}' has no cursor on this broker (queue '{cursor}' does not "
                          f"exist): has its trigger worker ever run here?")
    ch = conn.channel()
    try:
        method, _props, body = ch.basic_get(queue, auto_ack=False)
        if method is not None:
            ch.basic_nack(method.delivery_tag, requeue=True)
            return orjson.loads(body)
    finally:
        if ch.is_open:
            ch.close()
    lock = _passive(conn, poller) if poller is not None else None
    held = ok.consumer_count or (lock is not None and lock.consumer_count)
    return None if held else {}


def _amqp_start(flow: Flow, saved: dict | None, start, end, key: str | None) -> tuple[dict, str]:
    """The scratch cursor a RabbitMQ backfill polls from, and its position field. A cursor held by
    a running trigger worker cannot be read: its shape (sql.poll's ``cursor_type``…) is then learnt
    from one poll from the beginning, committed nowhere — only for triggers whose poll only reads
    (``PollingTrigger.samples``); others need ``--key`` and start from ``{KEY: A}``. The range is
    then not checked against the cursor (a range past it is read twice: duplicates, never a gap)."""
    if saved is not None:
        k = _check_range(saved, end, key)
        return rewound(saved, start, k), k
    from .components.base import PollingTrigger
    from .registry import get
    from .runtime.core import TriggerRunner
    cls = get(flow.trigger.component, step=flow.trigger.name)
    if not (isinstance(cls, type) and issubclass(cls, PollingTrigger) and cls.samples):
        if key is None:
            raise SpecError(f"the trigger worker of '{flow.name}' runs and holds the cursor, so its fields cannot "
                            f"be read: say which field is the position with --key (the backfill starts from "
                            f"{{KEY: --from}}), or stop the trigger worker")
        return {key: start}, key
    runner = TriggerRunner(flow.resolved())
    try:
        shape = runner.poll({})[2]
    finally:
        runner.close()
    if not shape:
        raise SpecError(f"the trigger of '{flow.name}' reads nothing from its source: there is no past to read again")
    k = _key(shape, key)
    if k not in shape:
        raise SpecError(f"the cursor has no field '{k}' (fields: {', '.join(shape)})")
    return rewound(shape, start, k), k


def _amqp_backfill(flow: Flow, broker: str, start, end, key, max_polls, poll_timeout) -> dict:
    """RabbitMQ: each page published with confirms (mandatory: a message no queue takes is an error,
    not a loss) into the flow's exchange for the first step — the routing the trigger worker's
    publishes use — and its dead letters into the trigger's dead-letter queue; the cursor queue is
    only peeked at."""
    import pika.exceptions

    from .runtime.amqp import names
    from .runtime.amqp.publish import PERSISTENT, deadline, error_props
    from .runtime.amqp.topology import connect
    conn = connect(broker, name="flownb backfill")
    try:
        saved = _amqp_peek(conn, flow)
        state, k = _amqp_start(flow, saved, start, end, key)
        first = flow.steps[0].name if flow.steps else None
        if first is not None and _passive(conn, names.step_queue(flow.name, first)) is None:
            raise FlownbError(f"flow '{flow.name}' has no queue for its first step '{first}' on this broker; "
                              f"start its workers once (they declare the topology), then backfill")
        ch = conn.channel()
        ch.confirm_delivery()
        exchange, dlq = names.exchange(flow.name), names.dead_letter_queue(flow.name, flow.trigger.name)
        sent = [0]

        def commit(payloads: list[bytes], dead: list) -> None:
            what = f"backfill publishing a page of {len(payloads)} message(s)"
            try:
                with deadline(conn, poll_timeout, what):
                    for p in payloads if first is not None else ():
                        ch.basic_publish(exchange, first, p, PERSISTENT, mandatory=True)
                        sent[0] += 1
                    for _m, info, p in dead:
                        ch.basic_publish("", dlq, p, error_props(info, flow.trigger.name), mandatory=True)
            except (pika.exceptions.AMQPError, BrokerError) as exc:
                raise BrokerError(f"the broker did not take a backfill page ({type(exc).__name__}: {exc}); the "
                                  f"flow's cursor was not touched, {sent[0]} message(s) were queued (the last "
                                  f"page's may be among them twice); run the backfill again from where they "
                                  f"end") from exc
        polls, messages = _bounded_poll(flow, state, k, end, max_polls, commit)
        return {"polls": polls, "messages": messages, "cursor": saved}
    finally:
        if conn.is_open:
            conn.close()
