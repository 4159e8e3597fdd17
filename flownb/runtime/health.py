"""Process health: no zombie workers.

A worker or an embedded runtime runs its steps in threads. When one of them dies with an uncaught
exception of any kind (``BaseException`` included: a pyo3 panic, a ``SystemExit`` raised by user
code), the process must not go on looking alive while nothing moves. :data:`HEALTH` records the
failure with the step it happened in, ``/healthz`` answers 503 from then on, and — once a command
line entry point called :func:`exit_on_failure` — the process exits with :data:`EXIT_CRASHED`
within a few seconds (the main thread is told at once and stops the other workers without
draining; a watchdog ends the process with ``os._exit`` if that takes longer), so a restart
policy brings it back. Unacknowledged messages return to their queue; nothing is lost.

Library use (tests, notebooks) records failures without ending the interpreter.

:func:`stop_deadline` bounds a graceful stop: after SIGTERM a worker drains, and if it has not
finished within ``FLOWNB_STOP_GRACE`` seconds (default 45: a step drains for at most 30 s, and the
exported deployments give 60 s before SIGKILL) the process exits with :data:`EXIT_STOP_TIMEOUT`; a
second signal ends it at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RuntimeFailure

__all__ = ["HEALTH", "Health", "Failure", "guarded", "start_thread", "exit_on_failure", "stop_deadline",
           "EXIT_CRASHED", "EXIT_STOP_TIMEOUT"]

log = logging.getLogger("flownb.health")

#: exit status after a thread of the process died (EX_SOFTWARE)
EXIT_CRASHED = 70
#: exit status when a graceful stop did not finish within its grace period
EXIT_STOP_TIMEOUT = 124


@dataclass
class Failure:
    """One thread that died: where (its step), what, when."""

    where: str
    error: str
    traceback: str
    at: float = field(default_factory=time.time)
    exc: BaseException | None = field(default=None, repr=False, compare=False)


class Health:
    """What ``/healthz`` reports for this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures: list[Failure] = []
        self.failed = threading.Event()          # set at the first failure
        self._listeners: list[Callable[[Failure], None]] = []
        self._exit_code: int | None = None
        self._exit_within = 3.0
        self._unready: dict[str, str] = {}     # where -> why (e.g. a step whose setup() fails)

    @property
    def ok(self) -> bool:
        """No thread died (liveness)."""
        return not self.failed.is_set()

    @property
    def ready(self) -> bool:
        """Alive, and every part can do its work (readiness, and ``/healthz``)."""
        return self.ok and not self._unready

    def set_unready(self, where: str, why: str) -> None:
        with self._lock:
            self._unready[where] = why

    def set_ready(self, where: str) -> None:
        with self._lock:
            self._unready.pop(where, None)

    def report(self) -> dict[str, Any]:
        """The JSON body of ``/healthz``: ``ok``, ``not ready`` (with why) or ``failed``."""
        with self._lock:
            fails = [{"where": f.where, "error": f.error, "at": f.at} for f in self.failures]
            unready = [{"where": w, "why": why} for w, why in self._unready.items()]
        status = "failed" if fails else "not ready" if unready else "ok"
        return {"status": status, "failures": fails, "not_ready": unready}

    def add_listener(self, cb: Callable[[Failure], None]) -> Callable[[], None]:
        """Call ``cb(failure)`` on each failure (from the failing thread); returns an unsubscribe."""
        with self._lock:
            self._listeners.append(cb)

        def remove() -> None:
            with self._lock:
                if cb in self._listeners:
                    self._listeners.remove(cb)
        return remove

    def fail(self, where: str, exc: BaseException) -> Failure:
        """Record that the thread running ``where`` died of ``exc``; log it; end the process if asked."""
        from ..secrets import redact  # the failure is served on /healthz and logged
        tb = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        failure = Failure(where=where, error=redact(f"{type(exc).__name__}: {exc}"), traceback=tb)
        with self._lock:
            if any(f.exc is exc for f in self.failures):  # re-raised through several guards
                return next(f for f in self.failures if f.exc is exc)
            failure.exc = exc
            self.failures.append(failure)
            listeners = list(self._listeners)
            code = self._exit_code
        self.failed.set()
        log.critical("%s died with an uncaught %s\n%s", where, failure.error, tb.rstrip())
        for cb in listeners:
            try:
                cb(failure)
            except Exception:  # a listener must not hide the failure
                log.exception("health listener %r failed", cb)
        if code is not None:
            _watchdog(code, self._exit_within, f"{where} died ({failure.error})")
        return failure

    def reset(self) -> None:
        """Forget failures (tests)."""
        with self._lock:
            self.failures.clear()
            self._unready.clear()
        self.failed.clear()


#: the process-wide health
HEALTH = Health()


def guarded(target: Callable[..., Any], where: str) -> Callable[..., None]:
    """``target`` wrapped so that any exception it lets out is recorded in :data:`HEALTH`."""
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every kind of death counts
            HEALTH.fail(where, exc)
    run.__name__ = getattr(target, "__name__", "run")
    return run


def start_thread(target: Callable[..., Any], where: str, *, name: str | None = None,
                 args: tuple = (), kwargs: dict | None = None, daemon: bool = True) -> threading.Thread:
    """Start a daemon thread whose death is a recorded failure (see the module docstring)."""
    t = threading.Thread(target=guarded(target, where), name=name or f"flownb-{where}", args=args,
                         kwargs=kwargs or {}, daemon=daemon)
    t.start()
    return t


_watchdog_lock = threading.Lock()
_watchdog_started = False
#: bumped when an entry point installs or restores the exit policy: a watchdog armed under an older
#: generation (an in-process CLI call that has returned) never ends the process
_generation = 0


def _watchdog(code: int, within: float, why: str) -> None:
    global _watchdog_started
    with _watchdog_lock:
        if _watchdog_started:
            return
        _watchdog_started = True
        armed = _generation

    def die() -> None:
        time.sleep(within)
        if armed == _generation:
            _hard_exit(code, f"flownb: {why}; exiting with status {code} so that a restart policy brings "
                             f"the process back (unacknowledged messages return to their queue)")
    threading.Thread(target=die, name="flownb-watchdog", daemon=True).start()


def step_timeout() -> float | None:
    """Seconds a runtime's thread may spend on one batch of a step (or on one poll) before the
    process gives up on it (env ``FLOWNB_STEP_TIMEOUT``, a duration such as ``15m``; unset: no
    bound). A thread stuck in a component cannot be stopped, so the process fails (``/healthz``
    503, ``flownb worker``/``flownb run`` exit 70): the broker gives a worker's batch back, the
    embedded runtime's batch stays claimed; a message that hangs its step every time is
    dead-lettered as ``PoisonMessage`` after ``FLOWNB_MAX_DELIVERIES``."""
    from .._duration import parse_duration
    raw = os.environ.get("FLOWNB_STEP_TIMEOUT", "").strip()
    if not raw:
        return None
    try:
        value = parse_duration(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise RuntimeFailure(f"FLOWNB_STEP_TIMEOUT={raw!r} is not a positive duration; set it to the longest a "
                             f"step may take over one batch, such as 15m, or leave it unset for no bound")
    return value


def hang_watchdog(busy: Callable[[], tuple[float, str] | None], timeout: float,
                  every: float = 1.0) -> threading.Thread:
    """A daemon thread that fails the process (:data:`HEALTH`; with :func:`exit_on_failure` it exits
    70) once ``busy()`` — (``time.monotonic()`` when the current batch or poll began, what it is),
    None while idle — says one has run for longer than ``timeout`` seconds."""
    def watch() -> None:
        while not HEALTH.failed.is_set():
            now = busy()
            if now is not None and time.monotonic() - now[0] > timeout:
                since, what = now
                HEALTH.fail(what, RuntimeFailure(
                    f"{what} has run for {time.monotonic() - since:.0f} s, longer than FLOWNB_STEP_TIMEOUT "
                    f"({timeout:g} s): the component hangs (a call without a timeout?); nothing of it was "
                    f"committed, and a message that hangs its step every time is dead-lettered as poison "
                    f"after FLOWNB_MAX_DELIVERIES"))
                return
            time.sleep(every)
    t = threading.Thread(target=watch, name="flownb-hang-watchdog", daemon=True)
    t.start()
    return t


def _hard_exit(code: int, message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
        logging.shutdown()
    finally:
        os._exit(code)


def exit_on_failure(within: float = 3.0, code: int = EXIT_CRASHED) -> Callable[[], None]:
    """From now on a failure ends the process with ``code`` at most ``within`` seconds later. Also
    routes uncaught exceptions of any thread (``threading.excepthook``) to :data:`HEALTH`. For
    command line entry points (``flownb run``, ``flownb worker``); returns a function that restores
    the previous behaviour (an entry point called in-process, e.g. by a test, calls it when done)."""
    global _generation
    previous = (HEALTH._exit_code, HEALTH._exit_within, threading.excepthook)
    _generation += 1
    HEALTH._exit_code = code
    HEALTH._exit_within = within

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit and isinstance(args.exc_value, SystemExit) and not args.exc_value.code:
            return  # a thread that ended itself normally
        name = args.thread.name if args.thread is not None else "a thread"
        HEALTH.fail(name, args.exc_value if args.exc_value is not None else args.exc_type())
    threading.excepthook = hook
    if HEALTH.failed.is_set():  # a failure before this call
        _watchdog(code, within, HEALTH.failures[0].where + " died")

    def restore() -> None:
        global _generation, _watchdog_started
        HEALTH._exit_code, HEALTH._exit_within, threading.excepthook = previous
        HEALTH.reset()  # the entry point has returned its status; an in-process caller goes on afresh
        with _watchdog_lock:
            _generation += 1
            _watchdog_started = False
    return restore


class _Deadline:
    def __init__(self) -> None:
        self.signals = 0


def stop_deadline(grace: float | None = None) -> Callable[[int], None]:
    """A function to call from a signal handler: the first call starts a watchdog that ends the
    process with :data:`EXIT_STOP_TIMEOUT` after ``grace`` seconds (``FLOWNB_STOP_GRACE``, default
    45); a second call ends it at once (status 128 + signal)."""
    if grace is None:
        grace = float(os.environ.get("FLOWNB_STOP_GRACE", "45"))
    state = _Deadline()
    armed = _generation

    def on_signal(signum: int) -> None:
        state.signals += 1
        if state.signals > 1:
            _hard_exit(128 + signum, f"flownb: second signal {signum}: stopping now without draining")

        def late() -> None:
            time.sleep(grace)
            if armed != _generation:  # the entry point returned (called in-process)
                return
            _hard_exit(EXIT_STOP_TIMEOUT, f"flownb: the graceful stop did not finish within {grace:g}s "
                                          f"(FLOWNB_STOP_GRACE); exiting, unacknowledged messages "
                                          f"return to their queue")
        threading.Thread(target=late, name="flownb-stop-deadline", daemon=True).start()
    return on_signal
