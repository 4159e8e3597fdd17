"""Names of the RabbitMQ objects of a flow; every part of flownb that talks AMQP uses these.

- exchange ``flownb.<flow>`` (direct, durable); a message for step S is published with routing key S
- queue ``flownb.<flow>.<step>``: the step's input (bound with routing key ``<step>``)
- queue ``flownb.<flow>.<step>.retry.<n>``: delay queues (``<n>`` = delay in ms) that dead-letter
  back to the step, into ``flownb.<flow>.<step>.retry.ready``, which the step's worker also consumes
- queue ``flownb.<flow>.<step>.dlq``: dead letters, each carrying its error
- queue ``flownb.<flow>.<trigger>.state``: the polling trigger's cursor (one message, the latest) in
  a classic topology; with quorum queues (``FLOWNB_QUEUE_TYPE=quorum``) the cursor is in
  ``flownb.<flow>.<trigger>.cursor`` and the poller's lock in ``flownb.<flow>.<trigger>.poller``
- exchange ``flownb.<flow>.recorder`` (fanout) and its queue ``flownb.<flow>.recorder.tap``: the
  flight recorder's events (flows with ``record:``; flownb/runtime/amqp/recorder.py)
A sync webhook request sets the message header :data:`REPLY_TO_HEADER` to a queue name; the worker
of the last step publishes its output there (default exchange), as well as passing it on.
"""

from __future__ import annotations

REPLY_TO_HEADER = "flownb-reply-to"
#: the environment variable every command reads the broker from when no ``--broker`` is given
BROKER_ENV = "FLOWNB_BROKER_URL"
#: the broker of a development machine (the machine's own RabbitMQ), when neither is given
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def broker_url(explicit: str | None = None) -> str:
    """The broker to use: ``explicit`` (``--broker``), else ``$FLOWNB_BROKER_URL``, else the default."""
    import os
    return explicit or os.environ.get(BROKER_ENV) or DEFAULT_BROKER_URL


def exchange(flow: str) -> str:
    return f"flownb.{flow}"


def step_queue(flow: str, step: str) -> str:
    return f"flownb.{flow}.{step}"


def retry_queue(flow: str, step: str, level: int) -> str:
    return f"flownb.{flow}.{step}.retry.{level}"


def retry_ready_queue(flow: str, step: str) -> str:
    return f"flownb.{flow}.{step}.retry.ready"


def dead_letter_queue(flow: str, step: str) -> str:
    return f"flownb.{flow}.{step}.dlq"


def errors_queue(flow: str) -> str:
    """The flow's failures waiting for its ``on_error`` actions (flownb.runtime.on_error)."""
    return f"flownb.{flow}.errors"


#: ``flownb worker SPEC --step on_error``: the worker of the flow's on_error actions (not a slug, so
#: never a step's name)
ON_ERROR_WORKER = "on_error"


def manifest_queue(flow: str) -> str:
    """One message: the step names of the spec that last started a worker (flownb.runtime.upgrade)."""
    return f"flownb.{flow}.manifest"


def state_queue(flow: str, trigger: str) -> str:
    return f"flownb.{flow}.{trigger}.state"


def cursor_queue(flow: str, trigger: str) -> str:
    """The cursor of a polling trigger under quorum topology (a quorum queue, no single active consumer)."""
    return f"flownb.{flow}.{trigger}.cursor"


def poller_queue(flow: str, trigger: str) -> str:
    """The lock of a polling trigger's active poller under quorum topology (a quorum queue with a single
    active consumer holding one token message)."""
    return f"flownb.{flow}.{trigger}.poller"


def recorder_exchange(flow: str) -> str:
    """The flight recorder's tap (fanout): step workers publish their sampled events here."""
    return f"flownb.{flow}.recorder"


def recorder_queue(flow: str) -> str:
    """Where the tap's events wait for ``flownb recorder`` (bounded: flownb/runtime/amqp/recorder.py).
    Not ``flownb.<flow>.recorder``: that is the input queue of a step named ``recorder``."""
    return f"flownb.{flow}.recorder.tap"
