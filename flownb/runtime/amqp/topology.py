"""The RabbitMQ objects of a flow, declared idempotently, and their depths.

Per flow: a durable direct exchange ``flownb.<flow>``. Per action step:

- ``flownb.<flow>.<step>``: the input queue, bound with routing key ``<step>``, limited to
  :func:`max_length` ready messages with ``x-overflow: reject-publish`` (a full queue nacks a
  confirmed publish: back-pressure; the publisher retries later, nothing is dropped);
- ``flownb.<flow>.<step>.retry.<ms>``: one delay queue per back-off level (``<ms>`` = its delay
  in milliseconds), ``x-message-ttl`` = the delay, dead-lettering into ...
- ``flownb.<flow>.<step>.retry.ready``: where expired retries land; the step's worker consumes it
  besides its input queue. It has no length limit, so dead-lettering (at-most-once in RabbitMQ)
  never meets a full queue and a retried message cannot be dropped;
- ``flownb.<flow>.<step>.suspect``: messages redelivered after their worker died (or lost its
  connection) while holding them; the worker moves them here and processes them one at a time
  (prefetch 1), so only the message in process is blamed for the next death (poison detection);
- ``flownb.<flow>.<step>.dlq``: dead letters, each with its error in the ``x-flownb-error`` header.

These queues are **classic** queues by default (the spec's ``topology:``, else ``FLOWNB_QUEUE_TYPE``,
default ``classic``: one local broker for development and tests, exact length limits, light to create
and delete) and **quorum** queues with ``topology: quorum`` in the spec (what ``flownb export`` writes
into a spec that leaves it unset) or ``FLOWNB_QUEUE_TYPE=quorum`` on every worker of the flow:
replicated. Poison messages are detected on both (step_worker.py): a quorum queue counts the
deliveries of each message
(``x-delivery-count``), which the worker hands to ``StepRunner.run_payloads(deliveries=...)``; the
delay queues dead-letter ``at-least-once`` (the expired retry stays in its delay queue until the
ready queue has confirmed it).

Per polling trigger (:func:`trigger_queues`): in the classic topology ``flownb.<flow>.<trigger>.state``
(classic, ``x-single-active-consumer``) holds one message, the cursor, and its single active consumer
is the one poller. With quorum queues the two jobs are split, because RabbitMQ 3.10 refuses
``basic.get`` on a quorum queue with a single active consumer (reading the cursor needs it):
``flownb.<flow>.<trigger>.cursor`` (quorum, no single active consumer) holds the cursor and
``flownb.<flow>.<trigger>.poller`` (quorum, ``x-single-active-consumer``) one token: the replica that
receives the token is the poller (:mod:`~flownb.runtime.amqp.trigger`). Both are replicated; so is
the trigger's dead-letter queue (unless an older flownb declared it classic: it is kept, with a
warning).
Re-declaring with other arguments (a changed ``FLOWNB_MAX_QUEUE_LENGTH``, classic queues of an older
flownb) is a :class:`TopologyError` that says how to fix it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from ..._duration import parse_duration
from ...errors import BrokerError, TopologyError
from ...flow import Flow, RetryPolicy
from . import names

__all__ = ["TopologyError", "DEFAULT_MAX_LENGTH", "ERROR_HEADER", "STEP_HEADER", "DELIVERIES_HEADER", "max_length",
           "queue_type", "trigger_queues", "max_deliveries", "suspect_queue", "retry_levels", "pick_level",
           "declare_flow", "declare_step", "queue_depths", "connect", "parameters", "broker_timeout",
           "AMQP_ERRORS", "run_sessions"]

DEFAULT_MAX_LENGTH = 100_000
ERROR_HEADER = "x-flownb-error"
STEP_HEADER = "x-flownb-step"
VERSION_HEADER = "x-flownb-version"
#: deliveries of a message counted by its step queue before the worker moved it to the suspect queue
DELIVERIES_HEADER = "x-flownb-deliveries"
QUEUE_TYPES = ("quorum", "classic")
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_BROKER_TIMEOUT = 30.0


def max_length() -> int:
    """Ready-message limit of step queues (env ``FLOWNB_MAX_QUEUE_LENGTH``, default 100,000)."""
    raw = os.environ.get("FLOWNB_MAX_QUEUE_LENGTH", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_LENGTH
    except ValueError:
        raise TopologyError(f"FLOWNB_MAX_QUEUE_LENGTH={raw!r} is not an integer; set it to a number "
                          f"of messages such as 100000") from None


def queue_type(flow: Flow | None = None) -> str:
    """Type of the flow's queues: the spec's ``topology:`` (``classic`` or ``quorum``) when it names
    one, else env ``FLOWNB_QUEUE_TYPE`` (``classic``, the default: one local broker, or ``quorum``,
    replicated across a cluster's nodes). The spec wins so that every process reading it — workers,
    ``flownb dlq``/``state``/``upgrade`` on an operator's machine — declares the same queues whatever
    its environment; an environment that says otherwise is logged once."""
    raw = os.environ.get("FLOWNB_QUEUE_TYPE", "").strip().lower()
    if flow is not None and flow.topology is not None:
        if raw and raw != flow.topology and (flow.name, raw) not in _OVERRULED:
            _OVERRULED.add((flow.name, raw))
            logging.getLogger("flownb.amqp").warning(
                "flow '%s': its spec says 'topology: %s'; FLOWNB_QUEUE_TYPE=%s is ignored for it",
                flow.name, flow.topology, raw)
        return flow.topology
    raw = raw or "classic"
    if raw not in QUEUE_TYPES:
        raise TopologyError(f"FLOWNB_QUEUE_TYPE={raw!r} is not a queue type; set it to 'quorum' (replicated; "
                          f"poison messages are detected) or 'classic' (the default), or set 'topology:' "
                          f"in the flow's spec")
    return raw


#: (flow, FLOWNB_QUEUE_TYPE) pairs whose environment a spec's topology overruled (logged once)
_OVERRULED: set[tuple[str, str]] = set()


def max_deliveries() -> int:
    """Deaths of a worker while processing one message before it is dead-lettered as poison (env
    ``FLOWNB_MAX_DELIVERIES``, default 3)."""
    raw = os.environ.get("FLOWNB_MAX_DELIVERIES", "")
    try:
        value = int(raw) if raw else DEFAULT_MAX_DELIVERIES
    except ValueError:
        value = 0
    if value < 1:
        raise TopologyError(f"FLOWNB_MAX_DELIVERIES={raw!r} is not a positive integer; set it to the number "
                          f"of worker deaths after which a message is dead-lettered, such as 3")
    return value


def broker_timeout() -> float:
    """Seconds a worker waits for the broker before it starts over on a new connection: for the
    confirm of a publish, the answer to its queue probe, or a ready message to be delivered while it
    holds nothing (a step worker); for a poll's confirms, room check, ``tx.commit`` or the answer to its
    cursor-queue probe, or a quorum cursor nobody reads (a trigger) (env ``FLOWNB_BROKER_TIMEOUT``, a
    duration such as ``30s``, the default)."""
    raw = os.environ.get("FLOWNB_BROKER_TIMEOUT", "").strip()
    try:
        value = parse_duration(raw) if raw else DEFAULT_BROKER_TIMEOUT
    except ValueError:
        value = 0.0
    if value <= 0:
        raise TopologyError(f"FLOWNB_BROKER_TIMEOUT={raw!r} is not a positive duration; set it to how long a worker "
                          f"waits for the broker before it reconnects, such as 30s")
    return value


def trigger_queues(flow: Flow) -> tuple[str, str | None]:
    """A polling trigger's (cursor queue, poller-lock queue): ``(.state, None)`` in the classic
    topology (the cursor queue's single active consumer is the poller), ``(.cursor, .poller)`` with
    quorum queues (see the module docstring)."""
    f, t = flow.name, flow.trigger.name
    if queue_type(flow) == "quorum":
        return names.cursor_queue(f, t), names.poller_queue(f, t)
    return names.state_queue(f, t), None


def suspect_queue(flow: str, step: str) -> str:
    """Where a step's worker moves redelivered messages to process them one at a time."""
    return f"{names.step_queue(flow, step)}.suspect"


def retry_levels(policy: RetryPolicy) -> list[int]:
    """The distinct back-off delays (ms) of ``policy``, ascending: one delay queue each."""
    if policy.max_attempts <= 1:
        return []
    ms = {max(1, int(round(policy.delay(n) * 1000))) for n in range(1, policy.max_attempts)}
    return sorted(ms)


def pick_level(levels: list[int], delay: float) -> int:
    """The shortest level at least ``delay`` seconds long (the longest when none is)."""
    want = delay * 1000
    for level in levels:
        if level >= want - 1:
            return level
    return levels[-1]


def parameters(url: str, **kw: Any) -> pika.URLParameters:
    """Connection parameters from an AMQP URL; a malformed URL is a BrokerError."""
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise TopologyError(f"invalid broker URL {url!r} ({exc}); write amqp://user:pass@host:5672/vhost") from exc
    params.connection_attempts = kw.get("connection_attempts", 1)
    params.blocked_connection_timeout = kw.get("blocked_connection_timeout", 300)
    if "heartbeat" in kw:
        params.heartbeat = kw["heartbeat"]
    params.client_properties = {"connection_name": kw.get("name", "flownb")}
    return params


def _safe_url(url: str) -> str:
    out = []
    for one in broker_urls(url):
        p = urllib.parse.urlsplit(one)
        out.append(f"{p.scheme}://{p.hostname or '?'}:{p.port or 5672}{p.path or '/'}")
    return ",".join(out)


_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<userinfo>[^@/?#]*)@)?(?P<host>[^/?#]*)"
                  r"(?P<rest>[/?#].*)?$")


def broker_urls(url: str) -> list[str]:
    """The nodes of ``url``, one full AMQP URL each. ``url`` is one AMQP URL, several separated by
    commas (``amqp://u:p@mq-0:5672/,amqp://u:p@mq-1:5672/``), or the short form with several hosts
    in one URL (``amqp://u:p@mq-0,mq-1:5673,mq-2/vhost?heartbeat=10``): each host inherits the
    scheme, the credentials, the vhost and the query, and a host without a port gets the default
    one. The forms mix: a part with ``://`` starts a URL, a bare ``host[:port]`` after it is one
    more host of that URL (the vhost and query follow the last host, as in the short form). A URL
    that is none of these is a :class:`TopologyError`: a configuration problem that retrying cannot
    fix, so a worker exits with it instead of reconnecting for ever."""
    parts = [u.strip() for u in url.split(",")]
    if not any(parts):
        raise TopologyError("empty broker URL; write amqp://user:pass@host:5672/vhost (several nodes: "
                          "amqp://user:pass@host1,host2:5673,host3/vhost, or full URLs comma-separated)")
    groups: list[list[str]] = []
    for part in parts:
        if not part:
            continue
        if "://" in part:
            groups.append([part])
        elif groups:
            groups[-1].append(part)
        else:
            raise TopologyError(f"broker URL {_redact_userinfo(url)!r} starts with a host without a scheme "
                              f"({part!r}); write amqp://user:pass@{part}/vhost, or list it after a full URL")
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        first = _URL.match(group[0])
        if first is None or first["rest"]:
            raise TopologyError(f"broker URL {_redact_userinfo(','.join(group))!r}: with several hosts in one URL "
                              f"the vhost comes after the last host (amqp://user:pass@host1,host2:5673/vhost)")
        *middle, last = group[1:]
        tail = re.match(r"^(?P<host>[^/?#]*)(?P<rest>[/?#].*)?$", last)
        assert tail is not None  # [^/?#]* matches the empty string
        hosts = [first["host"], *middle, tail["host"]]
        bad = [h for h in hosts if not h or any(c in h for c in "/?#@")]
        if bad:
            raise TopologyError(f"broker URL {_redact_userinfo(','.join(group))!r}: {bad[0]!r} is not a host[:port]; "
                              f"write amqp://user:pass@host1,host2:5673,host3/vhost")
        auth = f"{first['userinfo']}@" if first["userinfo"] is not None else ""
        out.extend(f"{first['scheme']}://{auth}{h}{tail['rest'] or ''}" for h in hosts)
    return out


def _redact_userinfo(url: str) -> str:
    """``url`` with the password of every ``user:password@`` replaced by ``***`` (for errors)."""
    return re.sub(r"(://[^:@/,]*):[^@/]*@", r"\1:***@", url)


#: per broker URL list, the node that connected last: the next connection starts there
_LAST_GOOD: dict[str, int] = {}


def _rotation(url: str, start: int) -> list[tuple[int, str]]:
    urls = broker_urls(url)
    return [((start + i) % len(urls), urls[(start + i) % len(urls)]) for i in range(len(urls))]


#: what a lost or refused broker connection raises in a worker's session (retried, not fatal)
AMQP_ERRORS = (pika.exceptions.AMQPError, BrokerError, OSError)


def run_sessions(session: Callable[[], None], *, stopping: Callable[[], bool], wake: threading.Event,
                 what: str, after: Callable[[], None] = lambda: None) -> None:
    """Run ``session`` (one connection's life) again and again until ``stopping()``: a lost
    connection (:data:`AMQP_ERRORS`) is a WARNING naming ``what`` and a new session after a
    back-off (0.5 s doubling to 15 s, back to 0.5 s after a session that lasted 10 s; ``wake`` cuts
    the wait short); a :class:`TopologyError` (a configuration problem: retrying cannot fix it)
    ends the loop. ``after`` runs after every session (forget what the connection held)."""
    log = logging.getLogger("flownb.amqp")
    backoff = 0.5
    while not stopping():
        started = time.monotonic()
        try:
            session()
        except TopologyError:
            raise
        except AMQP_ERRORS as exc:
            log.warning("%s: broker connection lost (%r); retrying in %.1fs", what, exc, backoff)
        after()
        if stopping():
            break
        backoff = 0.5 if time.monotonic() - started > 10 else min(backoff * 2, 15.0)
        wake.wait(backoff)


def connect(url: str, **kw: Any) -> pika.BlockingConnection:
    """A blocking connection to the first node of ``url`` that answers, starting with the one that
    answered last; none answering is a BrokerError naming the (password-free) URLs."""
    errors = []
    for i, one in _rotation(url, _LAST_GOOD.get(url, 0)):
        try:
            conn = pika.BlockingConnection(parameters(one, **kw))
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:  # incl. a handshake timeout
            errors.append(f"{_safe_url(one)}: {exc!r}")
            continue
        _LAST_GOOD[url] = i
        return conn
    raise BrokerError(f"cannot connect to RabbitMQ at {'; '.join(errors)}; start the broker "
                      f"or pass --broker / FLOWNB_BROKER_URL")


def last_good_parameters(url: str, **kw: Any) -> pika.URLParameters:
    """Parameters of the node of ``url`` that :func:`connect` reached last: a long-lived consumer
    declares the flow with :func:`connect` (which moves past nodes that do not answer) just before
    it opens its own connection, so it follows to the node that is up."""
    urls = broker_urls(url)
    return parameters(urls[_LAST_GOOD.get(url, 0) % len(urls)], **kw)


def _step_queue_args() -> dict:
    return {"x-max-length": max_length(), "x-overflow": "reject-publish"}


def _typed(args: dict | None, kind: str) -> dict | None:
    if kind == "classic":
        return args  # as older flownb versions declared them (no x-queue-type)
    return {**(args or {}), "x-queue-type": "quorum"}


def declare_queue(ch, queue: str, args: dict | None, kind: str = "classic") -> None:
    """Declare a durable ``queue`` of ``kind``; a clash with the queue as it exists is a TopologyError."""
    try:
        ch.queue_declare(queue, durable=True, arguments=_typed(args, kind))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406 and "x-queue-type" in (exc.reply_text or ""):
            other = "classic" if kind == "quorum" else "quorum"
            raise TopologyError(
                f"queue '{queue}' exists as a {other} queue but this worker declares {kind} queues "
                f"(the spec's 'topology:', else FLOWNB_QUEUE_TYPE: {kind}); a queue's type cannot change. "
                f"Either set 'topology: {other}' in the flow's spec (or FLOWNB_QUEUE_TYPE={other} on every "
                f"worker of a spec that leaves it unset; classic queues are not replicated), or "
                f"move to {kind} queues: stop the flow's trigger, let its workers drain every step queue "
                f"to 0, stop them, save the dead letters (flownb dlq list), delete the flow's queues "
                f"(rabbitmqctl delete_queue -p <vhost> <name>, for every queue named "
                f"'flownb.<flow>.<step>*' except the trigger's '.state', '.cursor' and '.poller'), then start the "
                f"workers"
            ) from exc
        if exc.reply_code == 406:
            raise TopologyError(f"queue '{queue}' exists with other arguments ({exc.reply_text}); "
                              f"delete it (rabbitmqctl delete_queue) or use the settings it was created "
                              f"with (FLOWNB_MAX_QUEUE_LENGTH, the step's retry policy)") from exc
        raise BrokerError(f"declaring queue '{queue}' failed: {exc.reply_text}") from exc


def declare_step(ch, flow: Flow, step_name: str) -> None:
    """Declare one action step's input, retry and dead-letter queues (idempotent)."""
    f, step = flow.name, flow.step(step_name)
    ex = names.exchange(f)
    q = names.step_queue(f, step.name)
    ready = names.retry_ready_queue(f, step.name)
    kind = queue_type(flow)
    declare_queue(ch, q, _step_queue_args(), kind)
    ch.queue_bind(q, ex, routing_key=step.name)
    declare_queue(ch, ready, None, kind)
    for level in retry_levels(step.retry_policy):
        delay = {"x-message-ttl": level, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": ready}
        if kind == "quorum":  # the expired message leaves only once the ready queue has confirmed it
            delay.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
        declare_queue(ch, names.retry_queue(f, step.name, level), delay, kind)
    declare_queue(ch, suspect_queue(f, step.name), None, kind)
    declare_queue(ch, names.dead_letter_queue(f, step.name), None, kind)


def declare_flow(ch, flow: Flow) -> None:
    """Declare the exchange, every action step's queues and the trigger's state queue."""
    try:
        ch.exchange_declare(names.exchange(flow.name), exchange_type="direct", durable=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise BrokerError(f"declaring exchange '{names.exchange(flow.name)}' failed: {exc.reply_text}") from exc
    for s in flow.actions:
        declare_step(ch, flow, s.name)
    if flow.on_error is not None:
        declare_errors(ch, flow)
    if flow.record is not None:  # the flight recorder's tap (flownb/runtime/amqp/recorder.py)
        from .recorder import declare_recorder
        declare_recorder(ch, flow.name)
    cursor, poller = trigger_queues(flow)
    dlq = names.dead_letter_queue(flow.name, flow.trigger.name)  # records over max_message_bytes
    if poller is None:  # classic: one queue is the cursor and, by its single active consumer, the lock
        declare_queue(ch, cursor, {"x-single-active-consumer": True})
        declare_queue(ch, dlq, None)
        return
    _create_cursor(ch, flow, cursor)  # no single active consumer: basic.get reads the cursor
    declare_queue(ch, poller, {"x-single-active-consumer": True}, "quorum")
    declare_kept(ch, dlq)


def _exists(conn, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare on a channel of its own: the queue's record, which
    every node has, not its leader's message counts, which a quorum queue reports as 0 while it has no
    leader)."""
    probe = conn.channel()
    try:
        probe.queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise BrokerError(f"cannot inspect queue '{queue}': {exc.reply_text}") from exc
    finally:
        if probe.is_open:
            probe.close()


def _create_cursor(ch, flow: Flow, cursor: str) -> None:
    """Declare the quorum topology's cursor queue; the declaration that creates it also seeds the
    cursor ``{}`` (confirmed), under a lock (an exclusive queue), so there is never a second cursor —
    seeding by message counts is not safe on a quorum queue, which reports 0 while it elects a leader.
    An older flownb's classic ``.state`` queue holds the cursor instead: nothing is seeded, the trigger
    worker moves it (:mod:`~flownb.runtime.amqp.trigger`)."""
    import time

    from .publish import state_props
    conn = ch.connection
    if _exists(conn, cursor):
        declare_queue(ch, cursor, None, "quorum")  # arguments checked; it is there with its cursor
        return
    lock_name = cursor + ".lock"
    while True:
        lock = conn.channel()
        try:
            lock.queue_declare(lock_name, exclusive=True, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:  # 405: another worker holds the lock
                raise BrokerError(f"declaring '{lock_name}' failed: {exc.reply_text}") from exc
            time.sleep(0.3)
            continue
        try:
            created = not _exists(conn, cursor)
            declare_queue(ch, cursor, None, "quorum")
            if created and not _exists(conn, names.state_queue(flow.name, flow.trigger.name)):
                lock.confirm_delivery()
                lock.basic_publish("", cursor, b"{}", state_props(0.0, 0))
            lock.queue_delete(lock_name)
        finally:
            if lock.is_open:
                lock.close()
        return


_WARNED: set[str] = set()


def declare_kept(ch, queue: str, args: dict | None = None) -> None:
    """Declare ``queue`` as a quorum queue, or keep it as the classic queue an older flownb declared
    (a queue's type cannot change; its messages stay readable), warning once that it is not replicated.
    Declared on a channel of its own: a refused declare closes its channel."""
    import logging
    probe = ch.connection.channel()
    try:
        declare_queue(probe, queue, args, "quorum")
    except TopologyError:
        if queue not in _WARNED:
            _WARNED.add(queue)
            logging.getLogger(__name__).warning(
                "queue '%s' is a classic queue (declared by an older flownb): it is not replicated; once it is "
                "empty, delete it and the next worker declares a quorum queue", queue)
    finally:
        if probe.is_open:
            probe.close()


#: failures waiting for the on_error worker beyond this many drop the oldest (FLOWNB_MAX_ERRORS)
def max_errors() -> int:
    return int(os.environ.get("FLOWNB_MAX_ERRORS", "100000"))


def declare_errors(ch, flow: Flow) -> None:
    """The queue of failure events for the flow's on_error worker: bounded (the oldest drop first:
    a flow failing for days while nobody runs the on_error worker must not fill the broker)."""
    declare_queue(ch, names.errors_queue(flow.name), {"x-max-length": max_errors(), "x-overflow": "drop-head"},
                  queue_type(flow))


def message_count(conn, queue: str) -> int:
    """The ready messages of ``queue`` (0 when it does not exist), asked on a channel of its own."""
    ch = conn.channel()
    try:
        return ch.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise BrokerError(f"cannot inspect queue '{queue}': {exc.reply_text}") from exc
    finally:
        if ch.is_open:
            ch.close()


def queue_depths(flow: Flow, broker_url: str) -> dict[str, dict[str, int]]:
    """Ready messages per action step: ``{step: {"ready", "dead", "retry"}}`` (passive declares;
    a queue not declared yet counts 0). ``ready`` includes the suspect queue (redelivered messages
    waiting to be processed one at a time); ``retry`` sums the delay queues and the ready-for-retry queue."""
    conn = connect(broker_url, name="flownb-depths")
    try:
        out = {}
        for s in flow.actions:
            retry = sum(message_count(conn, names.retry_queue(flow.name, s.name, lvl))
                        for lvl in retry_levels(s.retry_policy))
            retry += message_count(conn, names.retry_ready_queue(flow.name, s.name))
            ready = (message_count(conn, names.step_queue(flow.name, s.name))
                     + message_count(conn, suspect_queue(flow.name, s.name)))
            out[s.name] = {"ready": ready,
                           "dead": message_count(conn, names.dead_letter_queue(flow.name, s.name)),
                           "retry": retry}
        return out
    finally:
        if conn.is_open:
            conn.close()
